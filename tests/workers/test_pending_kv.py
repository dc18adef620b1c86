"""The prefill worker answers at its first token, before its last KV blocks are committed
(KVHandle.blocks_pending). The decode worker must wait for such blocks, bounded by its
--kv-wait-timeout, and fail with NOT_FOUND when they never arrive."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from worker_processes import KV_WAIT_S, colocated

from contracts.rpc import worker_pb2 as pb
from contracts.sampling import SamplingParams
from kv_transfer.store import tail_key
from kvstore.backend import StoreBackend, open_store
from kvstore.block_key import KVLayout, block_keys

GREEDY = pb.SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


def _layout(handle: pb.KVHandle) -> KVLayout:
    return KVLayout(handle.model_fingerprint, handle.dtype, handle.block_size, 0, 1)


def _all_keys(handle: pb.KVHandle) -> list[bytes]:
    return list(handle.block_keys) + ([handle.tail_key] if handle.tail_key else [])


def _wait_committed(client: StoreBackend, layout: KVLayout, keys: list[bytes], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(client.blocks_exist(layout, keys)):
        assert time.monotonic() < deadline, "the prefill worker's blocks never reached the store"
        time.sleep(0.02)


def _generate(stack, rid: str, prompt: list[int], handle: pb.KVHandle, first: int) -> list[int]:
    decode = stack["decode"]
    with decode.channel() as ch:
        request = pb.GenerateRequest(
            request_id=rid, prompt_token_ids=prompt, sampling=GREEDY, kv_handle=handle, first_token_id=first
        )
        return [t for chunk in decode.stub(ch).Generate(request, timeout=60) for t in chunk.token_ids]


@pytest.mark.parametrize("backend_stack", ["ours", "mooncake"], indirect=True)
def test_decode_waits_for_blocks_written_after_the_answer(backend_stack, reference) -> None:
    stack = backend_stack.workers  # ours: the master answers the wait at the commit; Mooncake: the reader polls
    prompt = [(i * 37 + 11) % 380 + 3 for i in range(70)]  # 4 full blocks + a tail, not seen by decode before
    prefill = stack["prefill_b"]  # store transport: the decode worker reads the store
    with prefill.channel() as ch:
        first = prefill.stub(ch).Prefill(
            pb.PrefillRequest(request_id="pending-kv", prompt_token_ids=prompt, sampling=GREEDY), timeout=60
        )
    handle, keys = first.kv_handle, _all_keys(first.kv_handle)
    with open_store(backend_stack.kvstore) as client:
        layout = _layout(handle)
        _wait_committed(client, layout, keys)
        rows = np.empty((len(keys), reference.runner.transfer_spec.bytes_per_block), np.uint8)
        assert all(client.get_blocks_into(layout, keys, list(rows)))
        # take the last blocks out of the store, as if their puts had not committed yet
        late = keys[2:]
        assert all(client.remove_blocks(layout, late))
        assert client.blocks_exist(layout, keys) == [True, True] + [False] * len(late)
        handle.blocks_pending = True

        def put_later() -> None:
            time.sleep(0.8)
            client.put_blocks(layout, {k: rows[i] for i, k in enumerate(keys) if k in late})

        writer = threading.Thread(target=put_later)
        writer.start()
        start = time.monotonic()
        tokens = [first.first_token_id] + _generate(stack, "pending-kv", prompt, handle, first.first_token_id)
        writer.join()
    assert time.monotonic() - start >= 0.7  # it did wait for the late blocks
    expected = colocated(reference, [("pending-kv-ref", prompt, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))])
    assert tokens == expected["pending-kv-ref"]


def test_pending_blocks_that_never_arrive_fail_within_the_wait_timeout(stack, store) -> None:
    prompt = list(range(250, 290))  # 2 full blocks + a tail nobody prefilled
    decode = stack["decode"]
    with decode.channel() as ch:
        fingerprint = decode.stub(ch).GetLoad(pb.LoadRequest(), timeout=10).model_fingerprint
    keys = block_keys(prompt, fingerprint, 16)
    handle = pb.KVHandle(
        model_fingerprint=fingerprint,
        dtype="float32",
        block_size=16,
        tp_size=1,
        block_keys=keys,
        tail_key=tail_key(keys[-1], fingerprint, "", prompt[32:]),
        num_tokens=len(prompt),
        blocks_pending=True,
        store_addresses=[store.address],
    )
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        _generate(stack, "never-arrives", prompt, handle, 7)
    elapsed = time.monotonic() - start
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert f"did not reach the store within {KV_WAIT_S:g} s" in info.value.details()
    assert KV_WAIT_S - 0.5 <= elapsed <= KV_WAIT_S + 10
