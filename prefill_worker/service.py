"""PrefillService: prompt in, first token + KV handle out.

The engine-core side (prefill_worker/kv_export.py) reuses the local prefix cache,
imports further prefix blocks from the store, hands each chunk's final blocks to the KV
connectors, and answers as soon as the first token is sampled with a KVHandle: a direct
pull out of this engine's pool for a decode worker on the same host, and the store
(whose last writes may still be in flight: KVHandle.blocks_pending). The engine keeps the
request's blocks until the reader released them (or the lease ended) and every write finished.
"""

from __future__ import annotations

import uuid

import grpc

from contracts.core_messages import AddRequest, ErrorKind, Prefilled
from contracts.rpc import worker_pb2 as pb
from contracts.rpc import worker_pb2_grpc as pb_grpc
from contracts.sampling import from_proto as sampling_from_proto
from engine.server.engine_client import Aborted, RequestFailed
from engine.server.worker_options import WorkerOptions
from engine.server.worker_runtime import CommonWorkerRPCs, WorkerRuntime, run_worker


class PrefillService(CommonWorkerRPCs, pb_grpc.PrefillServiceServicer):
    def __init__(self, runtime: WorkerRuntime) -> None:
        self.rt = runtime

    async def Prefill(self, request: pb.PrefillRequest, context: grpc.aio.ServicerContext) -> pb.PrefillResponse:
        rt = self.rt
        async with rt.rpc(context):
            start = rt.now()
            rid = request.request_id or f"prefill-{uuid.uuid4().hex}"
            params = sampling_from_proto(request.sampling if request.HasField("sampling") else None)
            q = rt.client.open(rid)
            answered = False
            try:
                await rt.client.send(
                    AddRequest(rid, list(request.prompt_token_ids), params, request.cache_salt, prefill_only=True)
                )
                answer = await rt.next_message(q)
                if isinstance(answer, Aborted):
                    raise RequestFailed(ErrorKind.CANCELLED, f"request {rid!r} was aborted")
                if not isinstance(answer, Prefilled):
                    raise RequestFailed(ErrorKind.INTERNAL, f"unexpected engine message {answer!r} for a prefill")
                answered = True
            finally:
                if not answered:
                    rt.client.abort_nowait(rid)  # error or client cancellation: free the blocks now
                rt.client.close(rid)
            res = answer.result
            elapsed = rt.now() - start
            rt.metrics.first_token(elapsed)
            rt.metrics.prefill(elapsed)
            rt.metrics.finished(len(request.prompt_token_ids), 1)
            return pb.PrefillResponse(
                request_id=rid,
                first_token_id=res.first_token_id,
                first_logprob=res.first_logprob.to_proto() if res.first_logprob else None,
                kv_handle=res.handle.to_proto(),
                num_cached_tokens=res.num_cached_tokens,
                num_computed_tokens=res.num_computed_tokens,
                finish_reason=res.finish_reason or "",
            )


def serve(options: WorkerOptions) -> int:
    runtime = WorkerRuntime(options, "splitserve.worker.PrefillService")
    return run_worker(runtime, lambda server: pb_grpc.add_PrefillServiceServicer_to_server(PrefillService(runtime), server))
