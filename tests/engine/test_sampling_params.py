"""SamplingParams: validation names the bad field; dict round trip; greedy detection."""

from __future__ import annotations

import pytest

from engine.sampling_params import InvalidSamplingParams, SamplingParams

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
def test_invalid_field_is_rejected_with_its_name(field: str, value: object) -> None:
    params = SamplingParams(**{field: value})
    with pytest.raises(InvalidSamplingParams, match=field) as info:
        params.validate(VOCAB)
    assert isinstance(info.value, ValueError)  # API edges map ValueError to a 400


def test_error_message_gives_value_and_allowed_range() -> None:
    with pytest.raises(InvalidSamplingParams, match=r"top_p=1\.5.*\(0, 1\]"):
        SamplingParams(top_p=1.5).validate(VOCAB)


def test_boundary_values_are_accepted() -> None:
    SamplingParams().validate(VOCAB)
    SamplingParams(temperature=0.0, top_p=1.0, top_k=0, min_p=1.0, presence_penalty=-2.0,
                   frequency_penalty=2.0, max_tokens=1, min_tokens=1, stop_token_ids=[0, VOCAB - 1],
                   logprobs=20, seed=-(2**63), stop=["x"] * 16).validate(VOCAB)
    SamplingParams(top_k=1, logprobs=0, seed=2**63 - 1).validate(VOCAB)


def test_near_zero_temperature_is_greedy() -> None:
    assert SamplingParams(temperature=0.0).is_greedy
    assert SamplingParams(temperature=1e-6).is_greedy
    assert not SamplingParams(temperature=0.1).is_greedy


def test_dict_round_trip_and_none_means_default() -> None:
    params = SamplingParams(temperature=0.5, seed=7, stop=["\n"], stop_token_ids=[2], logprobs=3)
    assert SamplingParams.from_dict(params.to_dict()) == params
    assert SamplingParams.from_dict({"top_k": None, "max_tokens": 5}) == SamplingParams(max_tokens=5)


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(InvalidSamplingParams, match="best_of"):
        SamplingParams.from_dict({"best_of": 2})
