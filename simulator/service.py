"""The real worker gRPC API (contracts/rpc worker.proto) in front of a simulated worker."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from contracts.generate_unary import whole
from contracts.rpc import worker_pb2, worker_pb2_grpc
from contracts.sampling import from_proto as sampling_from_proto
from simulator.decode import SimDecodeWorker
from simulator.node import SimNode
from simulator.prefill import PromptTooLarge, SimPrefillWorker

SimWorker = SimPrefillWorker | SimDecodeWorker


def load_of(node: SimNode, worker: SimWorker) -> worker_pb2.WorkerLoad:
    cache = node.cache
    return worker_pb2.WorkerLoad(
        worker_id=node.worker_id,
        role=node.role,
        running_requests=worker.running,
        waiting_requests=worker.waiting,
        kv_usage=cache.active_blocks / cache.capacity,
        queued_prefill_tokens=worker.queued_prefill_tokens,
        active_kv_blocks=cache.active_blocks,
        total_kv_blocks=cache.capacity,
        block_size=node.block_size,
        kv_events_endpoint=getattr(node.publisher, "pub_endpoint", ""),
        kv_snapshot_endpoint=getattr(node.publisher, "snapshot_endpoint", ""),
        model_fingerprint=node.fingerprint,
    )


def _max_tokens(request: worker_pb2.PrefillRequest | worker_pb2.GenerateRequest) -> int:
    """As the real worker reads it: an unset sampling message or field means the engine default."""
    return sampling_from_proto(request.sampling if request.HasField("sampling") else None).max_tokens


async def _check_prompt(context: grpc.aio.ServicerContext, prompt: list[int], max_tokens: int) -> None:
    if not prompt:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "prompt_token_ids is empty")
    if max_tokens < 1:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"sampling.max_tokens must be >= 1, got {max_tokens}")


class PrefillServicer(worker_pb2_grpc.PrefillServiceServicer):
    def __init__(self, node: SimNode, worker: SimPrefillWorker) -> None:
        self.node, self.worker = node, worker

    async def Prefill(self, request: worker_pb2.PrefillRequest, context: grpc.aio.ServicerContext) -> worker_pb2.PrefillResponse:
        prompt = list(request.prompt_token_ids)
        await _check_prompt(context, prompt, _max_tokens(request))
        try:
            result = await self.worker.prefill(request.request_id, len(prompt), self.node.chain(prompt, request.cache_salt))
        except PromptTooLarge as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        handle = worker_pb2.KVHandle(
            model_fingerprint=self.node.fingerprint, dtype="bfloat16", block_size=self.node.block_size, tp_size=1,
            num_tokens=len(prompt), source_worker=self.node.worker_id,
        )  # fmt: skip
        return worker_pb2.PrefillResponse(
            request_id=request.request_id,
            first_token_id=result.first_token_id,
            kv_handle=handle,
            num_cached_tokens=result.cached_tokens,
            num_computed_tokens=result.computed_tokens,
            finish_reason="length" if _max_tokens(request) == 1 else "",
        )

    async def Abort(self, request: worker_pb2.AbortRequest, context: grpc.aio.ServicerContext) -> worker_pb2.AbortResponse:
        return worker_pb2.AbortResponse(found=self.worker.abort(request.request_id))

    async def GetLoad(self, request: worker_pb2.LoadRequest, context: grpc.aio.ServicerContext) -> worker_pb2.WorkerLoad:
        return load_of(self.node, self.worker)


class DecodeServicer(worker_pb2_grpc.DecodeServiceServicer):
    def __init__(self, node: SimNode, worker: SimDecodeWorker) -> None:
        self.node, self.worker = node, worker

    async def Generate(
        self, request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[worker_pb2.GenerateChunk, None]:
        prompt = list(request.prompt_token_ids)
        await _check_prompt(context, prompt, _max_tokens(request))
        disaggregated = request.HasField("kv_handle")
        if disaggregated and request.kv_handle.model_fingerprint != self.node.fingerprint:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"KV handle is for model {request.kv_handle.model_fingerprint!r}, this worker serves {self.node.fingerprint!r}",
            )
        try:
            chain = self.node.chain(prompt, request.cache_salt)
            async for chunk in self.worker.generate(request.request_id, len(prompt), chain, _max_tokens(request), disaggregated):
                yield worker_pb2.GenerateChunk(
                    token_ids=chunk.token_ids,
                    finish_reason=chunk.finish_reason,
                    prompt_tokens=len(prompt) if chunk.finish_reason else 0,
                    completion_tokens=chunk.completion_tokens if chunk.finish_reason else 0,
                    num_cached_tokens=chunk.cached_tokens,
                )
        except PromptTooLarge as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))

    async def GenerateUnary(
        self, request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.GenerateChunk:
        return await whole(self.Generate(request, context))

    async def Abort(self, request: worker_pb2.AbortRequest, context: grpc.aio.ServicerContext) -> worker_pb2.AbortResponse:
        return worker_pb2.AbortResponse(found=self.worker.abort(request.request_id))

    async def GetLoad(self, request: worker_pb2.LoadRequest, context: grpc.aio.ServicerContext) -> worker_pb2.WorkerLoad:
        return load_of(self.node, self.worker)


def add_services(server: grpc.aio.Server, node: SimNode, worker: SimWorker) -> None:
    if isinstance(worker, SimPrefillWorker):
        worker_pb2_grpc.add_PrefillServiceServicer_to_server(PrefillServicer(node, worker), server)
    else:
        worker_pb2_grpc.add_DecodeServiceServicer_to_server(DecodeServicer(node, worker), server)
    status = health.HealthServicer()
    status.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(status, server)
