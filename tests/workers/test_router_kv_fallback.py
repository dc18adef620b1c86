"""Router: a decode that cannot find the prompt KV (NOT_FOUND: the prefill worker's write
failed after it answered, or the blocks were evicted) recomputes the prompt colocated
when sampling is replayable, without repeating the first token already streamed."""

from __future__ import annotations

import grpc
import pytest

from contracts.rpc import worker_pb2 as pb
from contracts.rpc import worker_pb2_grpc as pb_grpc
from router.scheduler import Decision, Mode
from router.worker_backend import GenerationRequest, WorkerBackend, WorkerStreamError
from router.worker_pool import WorkerPool

TOKENS = [41, 42, 43, 44]  # what a colocated run of the prompt produces


class Prefill(pb_grpc.PrefillServiceServicer):
    def __init__(self, first: int) -> None:
        self.first = first

    async def Prefill(self, request, context):
        return pb.PrefillResponse(
            request_id=request.request_id,
            first_token_id=self.first,
            kv_handle=pb.KVHandle(num_tokens=len(request.prompt_token_ids), blocks_pending=True),
        )


class Decode(pb_grpc.DecodeServiceServicer):
    def __init__(self) -> None:
        self.calls: list[bool] = []  # had a kv_handle?

    async def Generate(self, request, context):
        self.calls.append(request.HasField("kv_handle"))
        if request.HasField("kv_handle"):
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                "unknown KV handle / blocks evicted: 2 of 3 KV blocks did not reach the store within 10 s",
            )
        yield pb.GenerateChunk(token_ids=TOKENS[:2])
        yield pb.GenerateChunk(token_ids=TOKENS[2:], finish_reason="length", prompt_tokens=3, completion_tokens=4)


async def _serve(prefill_first: int):
    server, decode = grpc.aio.server(), Decode()
    pb_grpc.add_PrefillServiceServicer_to_server(Prefill(prefill_first), server)
    pb_grpc.add_DecodeServiceServicer_to_server(decode, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, decode, f"127.0.0.1:{port}"


async def _run(sampling: pb.SamplingParams, prefill_first: int = TOKENS[0]) -> tuple[list[int], list[bool]]:
    server, decode, address = await _serve(prefill_first)
    pool = WorkerPool()
    try:
        backend = WorkerBackend(pool, chunk_timeout_s=5.0)
        decision = Decision(Mode.DISAGGREGATED, address, address)

        def redecide(excluded: frozenset[str]) -> Decision:
            raise RuntimeError("no other worker")

        out: list[int] = []
        async for chunk in backend.generate(GenerationRequest("r1", [1, 2, 3], sampling), decision, redecide):
            out += chunk.token_ids
        return out, decode.calls
    finally:
        await pool.close()
        await server.stop(None)


@pytest.mark.parametrize(
    "sampling",
    [pb.SamplingParams(temperature=0.0, max_tokens=4), pb.SamplingParams(temperature=0.8, seed=5, max_tokens=4)],
    ids=["greedy", "seeded"],
)
async def test_kv_not_found_after_prefill_recomputes_colocated(sampling) -> None:
    tokens, calls = await _run(sampling)
    assert tokens == TOKENS  # the first token once, from prefill; the rest from the colocated run
    assert calls == [True, False]


async def test_unseeded_sampling_is_not_replayed() -> None:
    with pytest.raises(WorkerStreamError):
        await _run(pb.SamplingParams(temperature=0.8, max_tokens=4))


async def test_a_colocated_first_token_that_differs_ends_the_stream() -> None:
    with pytest.raises(WorkerStreamError, match="another first token"):
        await _run(pb.SamplingParams(temperature=0.0, max_tokens=4), prefill_first=99)
