"""Router: the store is a cache, not a single point of failure.

A prefill whose KV cannot reach the store (or a dead prefill worker) falls back to
colocated on the chosen decode worker; a decode that fails before its first token with
a KV handle recomputes colocated on another decode worker; every KV-path failure opens
a breaker that sends the next requests colocated until a probe succeeds.
"""

from __future__ import annotations

import grpc
import pytest

from contracts.rpc import worker_pb2 as pb
from contracts.rpc import worker_pb2_grpc as pb_grpc
from router.kv_path_breaker import KVPathBreaker
from router.scheduler import Decision, Mode
from router.worker_backend import GenerationRequest, WorkerBackend
from router.worker_pool import WorkerPool

TOKENS = [41, 42, 43, 44]  # what a colocated run of the prompt produces


class Worker(pb_grpc.PrefillServiceServicer, pb_grpc.DecodeServiceServicer):
    """A worker stand-in: prefill fails while ``store_down``; decode with a handle fails with ``handle_error``."""

    def __init__(self) -> None:
        self.store_down = False
        self.handle_error: grpc.StatusCode | None = None
        self.prefills = 0
        self.generates: list[bool] = []  # had a kv_handle?

    async def Prefill(self, request, context):
        self.prefills += 1
        if self.store_down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "writing the KV blocks to the store failed: no storage node")
        return pb.PrefillResponse(request_id=request.request_id, first_token_id=TOKENS[0],
                                  kv_handle=pb.KVHandle(num_tokens=len(request.prompt_token_ids)))  # fmt: skip

    async def Generate(self, request, context):
        self.generates.append(request.HasField("kv_handle"))
        if request.HasField("kv_handle"):
            if self.handle_error is not None:
                await context.abort(self.handle_error, "the KV store is unreachable")
            yield pb.GenerateChunk(token_ids=TOKENS[1:], finish_reason="length", prompt_tokens=3, completion_tokens=4)
            return
        yield pb.GenerateChunk(token_ids=TOKENS, finish_reason="length", prompt_tokens=3, completion_tokens=4)


@pytest.fixture
async def workers():
    servers, found = [], []
    for _ in range(3):  # prefill P, decode D1, decode D2
        server, worker = grpc.aio.server(), Worker()
        pb_grpc.add_PrefillServiceServicer_to_server(worker, server)
        pb_grpc.add_DecodeServiceServicer_to_server(worker, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        found.append((f"127.0.0.1:{port}", worker))
    yield found
    for server in servers:
        await server.stop(None)


async def _run(backend: WorkerBackend, decision: Decision, redecide=None) -> list[int]:
    def no_other(excluded: frozenset[str]) -> Decision:
        raise RuntimeError("no other worker")

    out: list[int] = []
    request = GenerationRequest("r1", [1, 2, 3], pb.SamplingParams(temperature=0.0, max_tokens=4))
    async for chunk in backend.generate(request, decision, redecide or no_other):
        out += chunk.token_ids
    return out


async def test_a_prefill_that_cannot_write_the_store_completes_colocated(workers) -> None:
    (p_addr, prefill), (d_addr, decode), _ = workers
    prefill.store_down = True
    backend = WorkerBackend(WorkerPool(), chunk_timeout_s=5.0)
    try:
        assert await _run(backend, Decision(Mode.DISAGGREGATED, p_addr, d_addr)) == TOKENS
    finally:
        await backend.pool.close()
    assert prefill.prefills == 1 and decode.generates == [False]  # one failed prefill, then colocated


async def test_a_decode_that_cannot_read_the_kv_recomputes_on_another_decode_worker(workers) -> None:
    (p_addr, _), (d1_addr, d1), (d2_addr, d2) = workers
    d1.handle_error = grpc.StatusCode.UNAVAILABLE
    backend = WorkerBackend(WorkerPool(), chunk_timeout_s=5.0)

    def redecide(excluded: frozenset[str]) -> Decision:
        assert d1_addr in excluded
        return Decision(Mode.DISAGGREGATED, p_addr, d2_addr)

    try:
        tokens = await _run(backend, Decision(Mode.DISAGGREGATED, p_addr, d1_addr), redecide)
    finally:
        await backend.pool.close()
    assert tokens == TOKENS  # the first token once (from prefill), the rest from the colocated recompute
    assert d1.generates == [True] and d2.generates == [False]


async def test_after_a_kv_path_failure_requests_go_colocated_until_a_probe_succeeds(workers) -> None:
    (p_addr, prefill), (d_addr, decode), _ = workers
    now = [0.0]
    backend = WorkerBackend(WorkerPool(), chunk_timeout_s=5.0, kv_path=KVPathBreaker(cooldown_s=2.0, clock=lambda: now[0]))
    disagg = Decision(Mode.DISAGGREGATED, p_addr, d_addr)
    try:
        prefill.store_down = True
        await _run(backend, disagg)
        assert prefill.prefills == 1
        prefill.store_down = False  # the store is back, but the breaker holds until its cool-down ends
        assert await _run(backend, disagg) == TOKENS
        assert prefill.prefills == 1 and decode.generates == [False, False]
        now[0] = 2.5  # a probe goes disaggregated and succeeds: the breaker closes
        assert await _run(backend, disagg) == TOKENS
        assert await _run(backend, disagg) == TOKENS
        assert prefill.prefills == 3 and decode.generates[-2:] == [True, True]
    finally:
        await backend.pool.close()
    assert backend.kv_path.opened == 1 and not backend.kv_path.open


async def test_with_no_other_decode_worker_the_recompute_runs_on_the_same_one(workers) -> None:
    (p_addr, _), (d_addr, decode), _ = workers
    decode.handle_error = grpc.StatusCode.INTERNAL  # e.g. the store's master is unreachable from the decode worker
    backend = WorkerBackend(WorkerPool(), chunk_timeout_s=5.0)
    try:
        assert await _run(backend, Decision(Mode.DISAGGREGATED, p_addr, d_addr)) == TOKENS
    finally:
        await backend.pool.close()
    assert decode.generates == [True, False]


async def test_a_request_the_worker_rejects_does_not_open_the_breaker(workers) -> None:
    (p_addr, _), (d_addr, decode), _ = workers
    decode.handle_error = grpc.StatusCode.INVALID_ARGUMENT  # the request's fault, not the KV path's
    backend = WorkerBackend(WorkerPool(), chunk_timeout_s=5.0)
    try:
        assert await _run(backend, Decision(Mode.DISAGGREGATED, p_addr, d_addr)) == TOKENS
    finally:
        await backend.pool.close()
    assert backend.kv_path.opened == 0
