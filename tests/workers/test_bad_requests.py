"""Bad requests get INVALID_ARGUMENT / NOT_FOUND with details a caller can act on."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from contracts.rpc import worker_pb2 as pb
from kvstore.block_key import block_keys

OK = pb.SamplingParams(temperature=0.0, max_tokens=4)


def status_of(fn) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


@pytest.mark.parametrize(
    ("prompt", "sampling", "words"),
    [
        ([], OK, "empty"),
        (list(range(3, 380)) * 2, OK, "context"),  # 754 tokens > max_position_embeddings 512
        ([5, 6, 7], pb.SamplingParams(temperature=-1.0, max_tokens=4), "temperature"),
        ([5, 6, 7], pb.SamplingParams(top_k=-7, max_tokens=4), "top_k"),
        ([5, 6, 100000], OK, "token ids"),
    ],
    ids=["empty-prompt", "too-long", "negative-temperature", "bad-top-k", "token-out-of-vocab"],
)
def test_bad_request_is_invalid_argument_on_both_workers(stack, prompt, sampling, words) -> None:
    prefill, decode = stack["prefill_a"], stack["decode"]
    with prefill.channel() as pc, decode.channel() as dc:
        err = status_of(
            lambda: prefill.stub(pc).Prefill(pb.PrefillRequest(prompt_token_ids=prompt, sampling=sampling), timeout=30)
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and words in err.details()
        err = status_of(
            lambda: list(decode.stub(dc).Generate(pb.GenerateRequest(prompt_token_ids=prompt, sampling=sampling), timeout=30))
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and words in err.details()


def _handle(stack, prompt: list[int]) -> pb.KVHandle:
    with stack["decode"].channel() as ch:
        fingerprint = stack["decode"].stub(ch).GetLoad(pb.LoadRequest(), timeout=10).model_fingerprint
    return pb.KVHandle(
        model_fingerprint=fingerprint,
        dtype="float32",
        block_size=16,
        tp_size=1,
        block_keys=block_keys(prompt, fingerprint, 16),
        num_tokens=len(prompt),
    )


def _generate(stack, prompt: list[int], handle: pb.KVHandle, first: int | None = 7) -> None:
    decode = stack["decode"]
    extra: dict[str, Any] = {"first_token_id": first} if first is not None else {}
    with decode.channel() as ch:
        list(
            decode.stub(ch).Generate(
                pb.GenerateRequest(prompt_token_ids=prompt, sampling=OK, kv_handle=handle, **extra), timeout=30
            )
        )


def test_handle_of_blocks_never_stored_is_not_found(stack) -> None:
    prompt = list(range(200, 232))  # two full blocks nobody prefilled
    err = status_of(lambda: _generate(stack, prompt, _handle(stack, prompt)))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "unknown KV handle / blocks evicted" in err.details()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (dict(model_fingerprint="another-model"), "layout"),
        (dict(dtype="bfloat16"), "layout"),
        (dict(block_size=32), "layout"),
        (dict(tp_size=2), "layout"),
        (dict(num_tokens=31), "covers"),
        (dict(block_keys=[b"\x00" * 16, b"\x01" * 16]), "do not match"),
    ],
    ids=["fingerprint", "dtype", "block-size", "tp-size", "token-count", "keys"],
)
def test_mismatched_handle_is_invalid_argument(stack, change, words) -> None:
    prompt = list(range(200, 232))
    handle = _handle(stack, prompt)
    for field, value in change.items():
        if field == "block_keys":
            del handle.block_keys[:]
            handle.block_keys.extend(value)
        else:
            setattr(handle, field, value)
    err = status_of(lambda: _generate(stack, prompt, handle))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and words in err.details()


def test_handle_without_first_token_is_invalid_argument(stack) -> None:
    prompt = list(range(200, 232))
    err = status_of(lambda: _generate(stack, prompt, _handle(stack, prompt), first=None))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "first_token_id" in err.details()
