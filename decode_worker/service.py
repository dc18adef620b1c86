"""DecodeService: import a prefilled request's KV (or prefill locally) and stream tokens.

With a KV handle the engine core (decode_worker/kv_import.py) checks the handle against
its own layout and the prompt, reuses its local prefix cache, and loads the remaining
blocks: straight out of the prefill engine's pool when both run on this host, else from
the store (waiting up to --kv-wait-timeout for blocks still being written). Blocks no
transport can deliver -> NOT_FOUND, so the router can recompute elsewhere.
Abort and client cancellation free the request's blocks at once.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator

import grpc

from contracts.core_messages import AddRequest, ErrorKind, ImportRequest, RequestDelta
from contracts.generate_unary import whole
from contracts.kv_handle import KVHandle
from contracts.rpc import worker_pb2 as pb
from contracts.rpc import worker_pb2_grpc as pb_grpc
from contracts.sampling import from_proto as sampling_from_proto
from engine.server.engine_client import Aborted, RequestFailed
from engine.server.worker_options import WorkerOptions
from engine.server.worker_runtime import CommonWorkerRPCs, WorkerRuntime, run_worker


class DecodeService(CommonWorkerRPCs, pb_grpc.DecodeServiceServicer):
    def __init__(self, runtime: WorkerRuntime) -> None:
        self.rt = runtime

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[pb.GenerateChunk, None]:
        rt = self.rt
        async with rt.rpc(context):
            rid = request.request_id or f"generate-{uuid.uuid4().hex}"
            params = sampling_from_proto(request.sampling if request.HasField("sampling") else None)
            prompt = list(request.prompt_token_ids)
            q = rt.client.open(rid)
            finished = False
            try:
                if request.HasField("kv_handle"):
                    if not request.HasField("first_token_id"):
                        raise RequestFailed(ErrorKind.INVALID_ARGUMENT, "a request with kv_handle needs first_token_id")
                    handle = KVHandle.from_proto(request.kv_handle)
                    await rt.client.send(
                        ImportRequest(
                            rid, prompt, params, request.cache_salt, handle, request.first_token_id, rt.options.kv_wait_timeout
                        )
                    )
                else:
                    await rt.client.send(AddRequest(rid, prompt, params, request.cache_salt, prefill_only=False))
                start = last = rt.now()
                while not finished:
                    out = await rt.next_message(q)
                    if isinstance(out, Aborted):
                        finished = True
                        yield pb.GenerateChunk(finish_reason="abort", prompt_tokens=len(prompt))
                        return
                    if not isinstance(out, RequestDelta):
                        raise RequestFailed(ErrorKind.INTERNAL, f"unexpected engine message {out!r} for a decode")
                    finished = out.finished
                    now = rt.now()
                    if last == start:
                        rt.metrics.first_token(now - start)
                    else:
                        rt.metrics.inter_token(now - last)
                    last = now
                    chunk = pb.GenerateChunk(token_ids=out.new_token_ids, logprobs=[lp.to_proto() for lp in out.logprobs or []])
                    if finished:
                        chunk.finish_reason = out.finish_reason or "stop"
                        chunk.prompt_tokens, chunk.completion_tokens = out.num_prompt_tokens, out.num_output_tokens
                        chunk.num_cached_tokens = out.num_cached_tokens
                        rt.metrics.finished(out.num_prompt_tokens, out.num_output_tokens)
                    yield chunk
            finally:
                if not finished:
                    rt.client.abort_nowait(rid)  # error, Abort RPC or client cancellation: free the blocks now
                rt.client.close(rid)

    async def GenerateUnary(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> pb.GenerateChunk:
        return await whole(self.Generate(request, context))


def serve(options: WorkerOptions) -> int:
    runtime = WorkerRuntime(options, "splitserve.worker.DecodeService")
    return run_worker(runtime, lambda server: pb_grpc.add_DecodeServiceServicer_to_server(DecodeService(runtime), server))
