"""Router: a stalled worker (silent and failing its health checks) loses its requests
within the stall bound, before the first token to another worker, after it with a clear
error; a slow but healthy worker keeps them; every RPC carries the request's deadline."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from contracts.rpc import worker_pb2 as pb
from contracts.rpc import worker_pb2_grpc as pb_grpc
from router.scheduler import Decision, Mode
from router.worker_backend import GenerationRequest, WorkerBackend, WorkerStreamError
from router.worker_pool import WorkerPool
from router.workers import Role, Worker


class Decode(pb_grpc.DecodeServiceServicer):
    """Sends ``before_stall`` tokens, then nothing for ``stall_s``, then finishes."""

    def __init__(self, before_stall: int, stall_s: float) -> None:
        self.before_stall, self.stall_s = before_stall, stall_s
        self.deadlines: list[float | None] = []

    async def Generate(self, request, context):
        self.deadlines.append(context.time_remaining())
        if self.before_stall:
            yield pb.GenerateChunk(token_ids=list(range(self.before_stall)))
        await asyncio.sleep(self.stall_s)
        yield pb.GenerateChunk(token_ids=[7], finish_reason="length", prompt_tokens=3, completion_tokens=1)

    async def Abort(self, request, context):
        return pb.AbortResponse(found=True)


async def _serve(servicer: Decode) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    pb_grpc.add_DecodeServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _collect(backend: WorkerBackend, address: str, redecide) -> list[int]:
    out: list[int] = []
    request = GenerationRequest("r1", [1, 2, 3], pb.SamplingParams(temperature=0.0, max_tokens=4))
    async for chunk in backend.generate(request, Decision(Mode.COLOCATED, None, address), redecide):
        out += chunk.token_ids
    return out


def _no_other(excluded: frozenset[str]) -> Decision:
    raise RuntimeError("no other worker")


async def test_a_stream_from_an_unhealthy_silent_worker_ends_with_an_error_within_the_stall_bound() -> None:
    server, address = await _serve(Decode(before_stall=2, stall_s=30))
    pool = WorkerPool(workers={address: Worker(address, Role.DECODE, healthy=False)})
    backend = WorkerBackend(pool, chunk_timeout_s=60, stall_timeout_s=0.5)
    start = time.monotonic()
    try:
        with pytest.raises(WorkerStreamError, match="stalled"):
            await _collect(backend, address, _no_other)
    finally:
        await pool.close()
        await server.stop(None)
    assert time.monotonic() - start < 3.0


async def test_before_the_first_token_a_stalled_worker_fails_over_to_another() -> None:
    stalled_server, stalled = await _serve(Decode(before_stall=0, stall_s=30))
    good_server, good = await _serve(Decode(before_stall=0, stall_s=0))
    pool = WorkerPool(workers={stalled: Worker(stalled, Role.DECODE, healthy=False), good: Worker(good, Role.DECODE)})
    backend = WorkerBackend(pool, chunk_timeout_s=60, stall_timeout_s=0.5)
    try:
        tokens = await _collect(backend, stalled, lambda excluded: Decision(Mode.COLOCATED, None, good))
    finally:
        await pool.close()
        await stalled_server.stop(None)
        await good_server.stop(None)
    assert tokens == [7]


async def test_a_slow_worker_that_passes_its_health_checks_keeps_its_request_and_sees_the_deadline() -> None:
    decode = Decode(before_stall=1, stall_s=1.0)
    server, address = await _serve(decode)
    pool = WorkerPool(workers={address: Worker(address, Role.DECODE, healthy=True)})
    backend = WorkerBackend(pool, chunk_timeout_s=60, stall_timeout_s=0.3, request_timeout_s=42.0)
    try:
        assert await _collect(backend, address, _no_other) == [0, 7]
    finally:
        await pool.close()
        await server.stop(None)
    assert decode.deadlines[0] is not None and 30.0 < decode.deadlines[0] <= 42.0
