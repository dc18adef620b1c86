"""The device-direct KV path's failure contract: blocks held for a reader are freed when it says
it is done or at the lease's end, a vanished prefill worker never hangs or corrupts a decode,
and no KV block leaks on either side.

A dedicated prefill worker has no store at all (and by default writes none), so the direct
pull is the only way its KV can reach the decode worker, and it has a short lease."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from worker_processes import WorkerProcess, active_blocks, colocated, start_worker, wait_for, wait_serving

from contracts.kv_handle import KVHandle, PoolDescriptor
from contracts.rpc import worker_pb2 as pb
from contracts.sampling import SamplingParams
from kv_transfer.peer_pool import process_alive, remove_orphaned_pools

LEASE_S = 4.0
GREEDY = pb.SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def direct_only(model_dir: str) -> Iterator[WorkerProcess]:
    w = start_worker("prefill", model_dir, "", "prefill-direct-only", "--kv-lease-timeout", str(LEASE_S))
    try:
        wait_serving([w])
        yield w
    finally:
        w.stop()


def prefill(worker: WorkerProcess, rid: str, prompt: list[int]) -> pb.PrefillResponse:
    with worker.channel() as ch:
        return worker.stub(ch).Prefill(pb.PrefillRequest(request_id=rid, prompt_token_ids=prompt, sampling=GREEDY), timeout=60)


def generate(decode: WorkerProcess, rid: str, prompt: list[int], first: pb.PrefillResponse) -> list[int]:
    with decode.channel() as ch:
        request = pb.GenerateRequest(
            request_id=rid,
            prompt_token_ids=prompt,
            sampling=GREEDY,
            kv_handle=first.kv_handle,
            first_token_id=first.first_token_id,
        )
        return [first.first_token_id] + [t for c in decode.stub(ch).Generate(request, timeout=60) for t in c.token_ids]


def expected(reference, rid: str, prompt: list[int]) -> list[int]:
    return colocated(reference, [(rid, prompt, SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))])[rid]


def test_direct_handle_names_the_blocks_and_no_store(direct_only) -> None:
    prompt = [(i * 13 + 5) % 380 + 3 for i in range(40)]
    first = prefill(direct_only, "offer", prompt)
    h = KVHandle.from_proto(first.kv_handle)
    assert h.direct is not None and not h.store_addresses  # the store got nothing: the pull is the only path
    assert len(h.direct.block_ids) == 3 and h.transfer_id and h.epoch
    assert h.direct.lease_deadline > time.monotonic()
    pool = PoolDescriptor.decode(h.direct.pool)
    if pool.device == "cpu":
        assert os.path.exists(pool.shm_file)  # a shared-memory pool the reader maps
    else:
        assert pool.cuda_ipc and not pool.shm_file  # on a GPU: a CUDA IPC handle of the pool


def test_blocks_are_freed_when_the_reader_is_done_long_before_the_lease(stack, direct_only, reference) -> None:
    prompt = [(i * 7 + 3) % 380 + 3 for i in range(70)]
    wait_for(lambda: active_blocks(direct_only) == 0, LEASE_S + 5)
    first = prefill(direct_only, "released", prompt)
    assert active_blocks(direct_only) == 5  # held for the reader
    assert generate(stack["decode"], "released", prompt, first) == expected(reference, "released-ref", prompt)
    assert wait_for(lambda: active_blocks(direct_only) == 0, LEASE_S) < LEASE_S / 2
    assert wait_for(lambda: active_blocks(stack["decode"]) == 0, 10) < 10  # nothing leaked on the decode side


def handoffs(decode: WorkerProcess) -> tuple[float, float]:
    """(count, sum) of the decode worker's kv_handoff_seconds for the direct transport."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{decode.metrics_port}/metrics", timeout=10).read().decode()
    values = {
        line.split("{")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("splitserve_worker_kv_handoff_seconds_") and 'transport="direct"' in line and "_bucket" not in line
    }
    return values.get("splitserve_worker_kv_handoff_seconds_count", 0.0), values.get(
        "splitserve_worker_kv_handoff_seconds_sum", 0.0
    )


def test_the_decode_worker_reports_when_a_direct_import_has_its_kv(stack, direct_only, reference) -> None:
    prompt = [(i * 5 + 9) % 380 + 3 for i in range(60)]
    count, total = handoffs(stack["decode"])
    started = time.monotonic()
    first = prefill(direct_only, "handoff", prompt)
    assert generate(stack["decode"], "handoff", prompt, first) == expected(reference, "handoff-ref", prompt)
    elapsed = time.monotonic() - started
    wait_for(lambda: handoffs(stack["decode"])[0] == count + 1, 5)  # one import, one observation
    seconds = handoffs(stack["decode"])[1] - total
    assert 0 < seconds < elapsed  # the KV was in place before the answer was complete


def test_blocks_of_a_reader_that_never_comes_are_freed_at_the_lease_end(direct_only) -> None:
    wait_for(lambda: active_blocks(direct_only) == 0, LEASE_S + 5)
    start = time.monotonic()
    prefill(direct_only, "abandoned", [(i * 11 + 1) % 380 + 3 for i in range(50)])
    time.sleep(1.0)
    assert active_blocks(direct_only) == 4  # still held: the reader may come
    wait_for(lambda: active_blocks(direct_only) == 0, LEASE_S + 5)
    assert time.monotonic() - start >= LEASE_S - 0.5


def test_a_killed_prefill_worker_leaves_a_decode_that_answers_or_fails_fast(stack, model_dir, reference) -> None:
    victim = start_worker("prefill", model_dir, "", "prefill-victim")
    try:
        wait_serving([victim])
        prompt = [(i * 17 + 9) % 380 + 3 for i in range(60)]
        first = prefill(victim, "orphan", prompt)
        pool_file = PoolDescriptor.decode(first.kv_handle.direct.pool).shm_file
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(10)
        # the answered blocks are complete: while the dead worker's pool can still be mapped the answer is
        # correct; once its engine core has noticed and removed the pool, NOT_FOUND (the router recomputes)
        try:
            assert generate(stack["decode"], "orphan", prompt, first) == expected(reference, "orphan-ref", prompt)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
        # the engine core dies with its server; a pool file it could not remove is an orphan a later start removes
        owner = PoolDescriptor.decode(first.kv_handle.direct.pool).owner_pid
        wait_for(lambda: not process_alive(owner), 15)
        remove_orphaned_pools()
        assert not os.path.exists(pool_file)
        # now the pool is gone: a reader fails at once with NOT_FOUND (the router recomputes), never hangs
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            generate(stack["decode"], "orphan-2", prompt, first)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert ("exited" in info.value.details() or "is gone" in info.value.details()) and time.monotonic() - start < 5
        assert wait_for(lambda: active_blocks(stack["decode"]) == 0, 10) < 10
    finally:
        victim.stop()
