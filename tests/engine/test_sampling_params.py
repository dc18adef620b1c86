"""SamplingParams: validation names the bad field; proto round trip (unset = default); greedy detection."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from contracts.rpc import worker_pb2 as pb
from contracts.sampling import InvalidSamplingParams, SamplingParams, from_proto, to_proto

VOCAB = 100


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -2),
        ("top_k", 2.5),
        ("min_p", -0.1),
        ("min_p", 1.1),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -2.1),
        ("repetition_penalty", 0.0),
        ("max_tokens", 0),
        ("min_tokens", -1),
        ("min_tokens", 17),  # above max_tokens=16
        ("stop_token_ids", [5, VOCAB]),
        ("stop_token_ids", [-1]),
        ("logprobs", 21),
        ("logprobs", -1),
        ("seed", 2**63),
        ("seed", "42"),
        ("stop", [""]),
        ("stop", [f"s{i}" for i in range(17)]),
    ],
)
def test_invalid_field_is_rejected_with_its_name(field: str, value: Any) -> None:
    params = SamplingParams(**{field: value})
    with pytest.raises(InvalidSamplingParams, match=field) as info:
        params.validate(VOCAB)
    assert isinstance(info.value, ValueError)  # API edges map ValueError to a 400


def test_error_message_gives_value_and_allowed_range() -> None:
    with pytest.raises(InvalidSamplingParams, match=r"top_p=1\.5.*\(0, 1\]"):
        SamplingParams(top_p=1.5).validate(VOCAB)


def test_boundary_values_are_accepted() -> None:
    SamplingParams().validate(VOCAB)
    SamplingParams(
        temperature=0.0,
        top_p=1.0,
        top_k=0,
        min_p=1.0,
        presence_penalty=-2.0,
        frequency_penalty=2.0,
        max_tokens=1,
        min_tokens=1,
        stop_token_ids=[0, VOCAB - 1],
        logprobs=20,
        seed=-(2**63),
        stop=["x"] * 16,
    ).validate(VOCAB)
    SamplingParams(top_k=1, logprobs=0, seed=2**63 - 1).validate(VOCAB)


def test_near_zero_temperature_is_greedy() -> None:
    assert SamplingParams(temperature=0.0).is_greedy
    assert SamplingParams(temperature=1e-6).is_greedy
    assert not SamplingParams(temperature=0.1).is_greedy


def test_proto_round_trip_and_unset_means_default() -> None:
    params = SamplingParams(temperature=0.5, seed=7, stop=["\n"], stop_token_ids=[2], logprobs=3, logit_bias=[(4, 1.5)])
    assert from_proto(to_proto(params)) == params
    assert from_proto(None) == SamplingParams()
    unset = from_proto(pb.SamplingParams(temperature=0.0))
    assert (unset.top_p, unset.repetition_penalty, unset.max_tokens, unset.seed, unset.logprobs) == (1.0, 1.0, 16, None, None)


def test_an_explicit_zero_is_not_taken_for_unset() -> None:
    with pytest.raises(InvalidSamplingParams, match="top_p"):
        from_proto(pb.SamplingParams(top_p=0.0)).validate(VOCAB)
    with pytest.raises(InvalidSamplingParams, match="max_tokens"):
        from_proto(pb.SamplingParams(max_tokens=0)).validate(VOCAB)


def test_unknown_fields_are_refused_on_the_engine_pipe() -> None:
    encoded = msgspec.msgpack.encode({"temperature": 1.0, "best_of": 2})
    with pytest.raises(msgspec.ValidationError, match="best_of"):
        msgspec.msgpack.decode(encoded, type=SamplingParams)
