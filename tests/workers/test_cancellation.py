"""Abort and client cancellation free every KV block of the decode worker."""

from __future__ import annotations

import asyncio
import random
import time

import grpc
from worker_processes import WorkerProcess, active_blocks

from contracts.rpc import worker_pb2 as pb
from contracts.rpc import worker_pb2_grpc as pb_grpc


def wait_for_active_blocks(worker: WorkerProcess, expected: int, timeout_s: float = 15.0) -> int:
    deadline = time.monotonic() + timeout_s
    while (n := active_blocks(worker)) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return n


LONG = pb.SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)


def test_500_cancelled_streams_leak_no_kv_block(stack) -> None:
    decode = stack["decode"]
    rng = random.Random(11)
    prompts = [[rng.randrange(3, 384) for _ in range(n)] for n in (20, 33, 48, 70, 5)]
    handles = []
    with stack["prefill_a"].channel() as ch:
        stub = stack["prefill_a"].stub(ch)
        for i, p in enumerate(prompts):
            r = stub.Prefill(pb.PrefillRequest(request_id=f"cancel-prefill-{i}", prompt_token_ids=p, sampling=LONG), timeout=60)
            handles.append((p, r))
    baseline = wait_for_active_blocks(decode, 0)
    assert baseline == 0

    async def one(stub: pb_grpc.DecodeServiceStub, i: int, gate: asyncio.Semaphore) -> str:
        prompt, prefilled = handles[i % len(handles)]
        if i % 4 == 0:  # some colocated streams too
            request = pb.GenerateRequest(request_id=f"cancel-{i}", prompt_token_ids=prompt, sampling=LONG)
        else:
            request = pb.GenerateRequest(
                request_id=f"cancel-{i}",
                prompt_token_ids=prompt,
                sampling=LONG,
                kv_handle=prefilled.kv_handle,
                first_token_id=prefilled.first_token_id,
            )
        async with gate:
            call = stub.Generate(request, timeout=60)
            async for _ in call:
                call.cancel()  # client cancellation right after the first chunk
                break
            return "cancelled"

    async def main() -> list[str]:
        gate = asyncio.Semaphore(32)
        async with grpc.aio.insecure_channel(decode.address) as ch:
            stub = pb_grpc.DecodeServiceStub(ch)
            return await asyncio.gather(*(one(stub, i, gate) for i in range(500)))

    assert asyncio.run(main()) == ["cancelled"] * 500
    assert wait_for_active_blocks(decode, baseline) == baseline


def test_abort_rpc_ends_the_stream_and_frees_its_blocks(stack) -> None:
    decode = stack["decode"]
    with decode.channel() as ch:
        stub = decode.stub(ch)
        stream = stub.Generate(
            pb.GenerateRequest(request_id="to-abort", prompt_token_ids=list(range(3, 60)), sampling=LONG), timeout=60
        )
        first = next(stream)
        assert first.token_ids
        assert active_blocks(decode) > 0
        assert stub.Abort(pb.AbortRequest(request_id="to-abort"), timeout=10).found
        rest = list(stream)
        assert rest and rest[-1].finish_reason == "abort"
        assert not stub.Abort(pb.AbortRequest(request_id="to-abort"), timeout=10).found
    assert wait_for_active_blocks(decode, 0) == 0
