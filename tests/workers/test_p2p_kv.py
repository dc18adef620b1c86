"""The point-to-point KV path (--kv-transport p2p: a process group of the two workers, gloo on CPU):
the decode worker gets exactly the colocated tokens, the prefill worker frees the blocks once it has
sent them or when the lease ends, and a prefill worker killed before the pull never hangs a decode.

The prefill worker here has no store at all, so the send is the only way its KV can reach the
decode worker."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import grpc
import pytest
from worker_processes import WorkerProcess, active_blocks, colocated, start_worker, wait_for, wait_serving

from contracts.kv_handle import KVHandle
from contracts.rpc import worker_pb2 as pb
from contracts.sampling import SamplingParams

LEASE_S = 4.0
GREEDY = pb.SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def p2p_only(model_dir: str) -> Iterator[WorkerProcess]:
    w = start_worker("prefill", model_dir, "", "prefill-p2p-only", "--kv-transport", "p2p", "--kv-lease-timeout", str(LEASE_S))
    try:
        wait_serving([w])
        yield w
    finally:
        w.stop()


def prefill(worker: WorkerProcess, rid: str, prompt: list[int], sp: pb.SamplingParams = GREEDY) -> pb.PrefillResponse:
    with worker.channel() as ch:
        return worker.stub(ch).Prefill(pb.PrefillRequest(request_id=rid, prompt_token_ids=prompt, sampling=sp), timeout=60)


def generate(
    decode: WorkerProcess, rid: str, prompt: list[int], first: pb.PrefillResponse, sp: pb.SamplingParams = GREEDY
) -> list[int]:
    with decode.channel() as ch:
        request = pb.GenerateRequest(
            request_id=rid, prompt_token_ids=prompt, sampling=sp, kv_handle=first.kv_handle, first_token_id=first.first_token_id
        )
        return [first.first_token_id] + [t for c in decode.stub(ch).Generate(request, timeout=60) for t in c.token_ids]


def test_p2p_handle_offers_the_send_and_nothing_else(p2p_only) -> None:
    first = prefill(p2p_only, "p2p-offer", [(i * 13 + 5) % 380 + 3 for i in range(40)])
    h = KVHandle.from_proto(first.kv_handle)
    assert h.peer is not None and h.direct is None and not h.store_addresses
    assert h.peer.control_endpoint.startswith("tcp://127.0.0.1:") and h.peer.rendezvous.startswith("127.0.0.1:")
    assert h.transfer_id and h.epoch


@pytest.mark.parametrize("temperature", [0.0, 0.9], ids=["greedy", "seeded"])
def test_tokens_through_the_send_equal_colocated_and_the_blocks_are_freed(stack, p2p_only, reference, temperature) -> None:
    prompts = {f"p2p-{temperature}-{n}": [(i * 7 + n) % 380 + 3 for i in range(n)] for n in (1, 16, 17, 70, 130)}
    wait_for(lambda: active_blocks(p2p_only) == 0, LEASE_S + 5)  # an earlier test's unread offer ends with its lease
    for rid, prompt in prompts.items():
        seed = 7 if temperature else None
        wire = pb.SamplingParams(temperature=temperature, top_p=1.0, max_tokens=6, ignore_eos=True, seed=seed)
        params = SamplingParams(temperature=temperature, max_tokens=6, ignore_eos=True, seed=seed)
        first = prefill(p2p_only, rid, prompt, wire)
        assert (
            generate(stack["decode"], rid, prompt, first, wire)
            == colocated(reference, [(f"{rid}-ref", prompt, params)])[f"{rid}-ref"]
        ), f"{rid} (prompt of {len(prompt)} tokens) diverged"
    assert wait_for(lambda: active_blocks(p2p_only) == 0, LEASE_S) < LEASE_S / 2  # freed once sent, not at the lease
    assert wait_for(lambda: active_blocks(stack["decode"]) == 0, 10) < 10  # nothing leaked on the decode side


def test_blocks_of_a_reader_that_never_comes_are_freed_at_the_lease_end(p2p_only) -> None:
    wait_for(lambda: active_blocks(p2p_only) == 0, LEASE_S + 5)
    start = time.monotonic()
    prefill(p2p_only, "p2p-abandoned", [(i * 11 + 1) % 380 + 3 for i in range(50)])
    time.sleep(1.0)
    assert active_blocks(p2p_only) == 4  # still held: the reader may come
    wait_for(lambda: active_blocks(p2p_only) == 0, LEASE_S + 5)
    assert time.monotonic() - start >= LEASE_S - 0.5


def test_a_pull_after_the_lease_is_refused_with_not_found(stack, p2p_only) -> None:
    prompt = [(i * 3 + 2) % 380 + 3 for i in range(40)]
    first = prefill(p2p_only, "p2p-late", prompt)
    wait_for(lambda: active_blocks(p2p_only) == 0, LEASE_S + 5)
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        generate(stack["decode"], "p2p-late", prompt, first)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "lease over" in info.value.details()
    assert time.monotonic() - start < 5
    assert wait_for(lambda: active_blocks(stack["decode"]) == 0, 10) < 10


def test_a_killed_prefill_worker_fails_the_decode_fast_and_leaks_nothing(stack, model_dir) -> None:
    victim = start_worker("prefill", model_dir, "", "prefill-p2p-victim", "--kv-transport", "p2p")
    try:
        wait_serving([victim])
        prompt = [(i * 17 + 9) % 380 + 3 for i in range(60)]
        first = prefill(victim, "p2p-orphan", prompt)
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(10)
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            generate(stack["decode"], "p2p-orphan", prompt, first)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND  # the router recomputes it colocated
        assert time.monotonic() - start < 40  # bounded by the pairing / reply timeouts, never a hang
        assert wait_for(lambda: active_blocks(stack["decode"]) == 0, 10) < 10
    finally:
        victim.stop()
