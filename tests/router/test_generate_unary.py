"""Short non-streamed requests decode in one unary call (DecodeService.GenerateUnary).

The answer is the stream's, merged; a worker without the RPC (an older version) still
serves them, by stream; a stalled worker loses them to another within the stall bound;
a client that leaves frees the worker's slots at once.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from contracts.generate_unary import whole
from contracts.rpc import worker_pb2 as pb
from contracts.rpc import worker_pb2_grpc as pb_grpc
from router.scheduler import Decision, Mode
from router.worker_backend import GenerationRequest, WorkerBackend
from router.worker_pool import WorkerPool
from router.workers import Role, Worker


class StreamOnly(pb_grpc.DecodeServiceServicer):
    """One token per chunk, each with a logprob; ``delay_s`` before each; records what ran."""

    def __init__(self, tokens: list[int], delay_s: float = 0.0) -> None:
        self.tokens, self.delay_s = tokens, delay_s
        self.calls: list[str] = []
        self.aborted: list[str] = []
        self.closed = asyncio.Event()

    async def Generate(self, request, context):
        self.calls.append("Generate")
        try:
            for i, token in enumerate(self.tokens):
                await asyncio.sleep(self.delay_s)
                chunk = pb.GenerateChunk(token_ids=[token], logprobs=[pb.TokenLogprob(token_id=token, logprob=-0.5 * i)],
                                         num_cached_tokens=2)  # fmt: skip
                if i == len(self.tokens) - 1:
                    chunk.finish_reason, chunk.prompt_tokens, chunk.completion_tokens = "length", 3, len(self.tokens)
                yield chunk
        finally:
            self.closed.set()

    async def Abort(self, request, context):
        self.aborted.append(request.request_id)
        return pb.AbortResponse(found=True)


class Unary(StreamOnly):
    async def GenerateUnary(self, request, context):
        self.calls.append("GenerateUnary")
        return await whole(self.Generate(request, context))


async def _serve(servicer) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    pb_grpc.add_DecodeServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _run(backend: WorkerBackend, address: str, unary: bool, redecide=None, request_id: str = "r1"):
    request = GenerationRequest(request_id, [1, 2, 3], pb.SamplingParams(temperature=0.0, max_tokens=4), unary=unary)
    chunks = []
    async for chunk in backend.generate(request, Decision(Mode.COLOCATED, None, address), redecide or _no_other):
        chunks.append(chunk)
    return chunks


def _no_other(excluded: frozenset[str]) -> Decision:
    raise RuntimeError("no other worker")


def _summary(chunks) -> tuple:
    last = chunks[-1]
    tokens = [t for c in chunks for t in c.token_ids]
    logprobs = [(lp.token_id, lp.logprob) for c in chunks for lp in c.logprobs]
    return tokens, logprobs, last.finish_reason, last.prompt_tokens, last.completion_tokens, last.num_cached_tokens


async def test_a_unary_answer_is_the_stream_merged() -> None:
    servicer = Unary([11, 12, 13, 14])
    server, address = await _serve(servicer)
    pool = WorkerPool(workers={address: Worker(address, Role.DECODE)})
    backend = WorkerBackend(pool)
    try:
        streamed = await _run(backend, address, unary=False)
        single = await _run(backend, address, unary=True)
    finally:
        await pool.close()
        await server.stop(None)
    assert servicer.calls == ["Generate", "GenerateUnary", "Generate"]  # the unary one merges its own stream
    assert len(streamed) == 4 and len(single) == 1
    assert _summary(single) == _summary(streamed) == ([11, 12, 13, 14], [(11, 0.0), (12, -0.5), (13, -1.0), (14, -1.5)],
                                                      "length", 3, 4, 2)  # fmt: skip


async def test_a_worker_without_generate_unary_serves_by_stream_from_then_on() -> None:
    servicer = StreamOnly([5, 6])
    server, address = await _serve(servicer)
    pool = WorkerPool(workers={address: Worker(address, Role.DECODE)})
    backend = WorkerBackend(pool)
    try:
        first = await _run(backend, address, unary=True, request_id="a")
        second = await _run(backend, address, unary=True, request_id="b")
    finally:
        await pool.close()
        await server.stop(None)
    assert _summary(first)[:3] == _summary(second)[:3] == ([5, 6], [(5, 0.0), (6, -0.5)], "length")
    assert backend.stream_only == {address} and servicer.calls == ["Generate", "Generate"]
    assert servicer.aborted == []  # UNIMPLEMENTED ran nothing there: nothing to abort


async def test_a_stalled_worker_loses_a_unary_request_to_another_within_the_stall_bound() -> None:
    stalled_servicer = Unary([1], delay_s=30)
    stalled_server, stalled = await _serve(stalled_servicer)
    good_server, good = await _serve(Unary([9]))
    pool = WorkerPool(workers={stalled: Worker(stalled, Role.DECODE, healthy=False), good: Worker(good, Role.DECODE)})
    backend = WorkerBackend(pool, chunk_timeout_s=60, stall_timeout_s=0.5)
    start = time.monotonic()
    try:
        chunks = await _run(backend, stalled, unary=True, redecide=lambda excluded: Decision(Mode.COLOCATED, None, good))
    finally:
        await pool.close()
        await stalled_server.stop(None)
        await good_server.stop(None)
    assert [t for c in chunks for t in c.token_ids] == [9]
    assert time.monotonic() - start < 3.0
    assert stalled_servicer.aborted == ["r1"]


async def test_a_client_that_leaves_frees_the_worker_at_once() -> None:
    servicer = Unary([1, 2, 3], delay_s=10)
    server, address = await _serve(servicer)
    pool = WorkerPool(workers={address: Worker(address, Role.DECODE)})
    backend = WorkerBackend(pool)
    try:
        task = asyncio.create_task(_run(backend, address, unary=True))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(servicer.closed.wait(), 3.0)  # the worker's generation was closed
    finally:
        await pool.close()
        await server.stop(None)
    assert servicer.aborted == ["r1"]
