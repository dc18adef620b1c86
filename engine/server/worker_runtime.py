"""What both worker kinds' gRPC servers share: engine core lifecycle, health, drain, load, metrics.

Health (grpc.health.v1, service "" and the worker's own service name) is NOT_SERVING
until the core has loaded the model and run a warm-up step, and again once the core
dies or SIGTERM starts a drain. Draining: new RPCs get UNAVAILABLE, in-flight ones
finish (bounded by --drain-timeout), then the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from contracts.core_messages import ErrorKind, Prefilled, RequestDelta, RequestError
from contracts.internal_auth import server_interceptors
from contracts.rpc import worker_pb2 as pb
from engine.config import EngineConfig
from engine.server.core_config import CoreConfig
from engine.server.engine_client import Aborted, AsyncEngineClient, ClientHooks, EngineDead, RequestEvent, RequestFailed
from engine.server.metrics import WorkerMetrics
from engine.server.worker_options import WorkerOptions

LOAD_REFRESH_S = 1.0
AddServicer = Callable[[grpc.aio.Server], None]  # adds the worker's own service to the server
STATUS = {
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorKind.CANCELLED: grpc.StatusCode.CANCELLED,
}


class WorkerRuntime:
    def __init__(self, options: WorkerOptions, service_name: str) -> None:
        self.options = options
        self.service_name = service_name
        self.metrics = WorkerMetrics(options.role)
        o = options
        engine = EngineConfig(
            model=o.model,
            block_size=o.block_size,
            kv_cache_bytes=o.kv_cache_bytes,
            max_num_seqs=o.max_num_seqs,
            max_num_batched_tokens=o.max_num_batched_tokens,
            tensor_parallel_size=o.tensor_parallel_size,
            expert_parallel=o.expert_parallel,
            distributed_executor=o.distributed_executor,
            gpu_memory_utilization=o.gpu_memory_utilization,
            load_format=o.load_format,
            nnodes=o.nnodes,
            dist_host=o.dist_host,
            dist_port=o.dist_port,
            land_imports=o.kv_copy_at == "arrival",
        )
        events = f"tcp://{o.host}:{o.kv_events_port}"
        snapshot = f"tcp://{o.host}:{o.kv_events_port + 1}" if o.kv_events_port else f"tcp://{o.host}:0"
        self.client = AsyncEngineClient(
            CoreConfig(
                engine,
                o.role,
                o.worker_id,
                o.kvstore,
                "",
                "",
                events,
                snapshot,
                o.advertise_host,
                o.tensor_parallel_size,
                o.kv_transport,
                o.kv_lease_timeout,
                o.store_write_budget,
            ),
            ClientHooks(
                on_step=lambda s: self.metrics.step(s.seconds, s.batch_size),
                on_transfer=self.metrics.transfer,
                on_handoff=self.metrics.handoff,
                on_queued=self.metrics.queued,
            ),
        )
        self.health = health.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._stopped = asyncio.Event()

    # ---- lifecycle ----------------------------------------------------------------------------------
    async def start(self, add_servicer: AddServicer) -> int:
        """Serve gRPC at once (health NOT_SERVING), then start the engine core; returns the port."""
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)], interceptors=server_interceptors())
        add_servicer(self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        port = self.server.add_insecure_port(f"{self.options.host}:{self.options.port}")
        await self.server.start()
        self.metrics.serve(self.options.metrics_port)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(self.drain()))
        loop.add_signal_handler(signal.SIGINT, lambda: asyncio.ensure_future(self.drain()))
        await self.client.start()
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        asyncio.create_task(self._refresh_load())
        asyncio.create_task(self._watch_core())
        print(f"[{self.options.worker_id}] {self.options.role} worker serving on {self.options.host}:{port}", flush=True)
        return port

    async def wait(self) -> None:
        await self._stopped.wait()

    def _set_health(self, status: int) -> None:
        for name in ("", self.service_name):
            self.health.set(name, status)

    async def _watch_core(self) -> None:
        while not self.client.dead:
            await asyncio.sleep(0.1)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def drain(self) -> None:
        if self.draining:
            return
        self.draining = True
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.in_flight:
            self._idle.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.options.drain_timeout)
        if self.server is not None:
            await self.server.stop(1.0)
        await self.client.shutdown()
        self._stopped.set()

    async def _refresh_load(self) -> None:
        while not self.client.dead and not self._stopped.is_set():
            with contextlib.suppress(EngineDead, asyncio.TimeoutError):
                self.metrics.load(await self.client.load())
            await asyncio.sleep(LOAD_REFRESH_S)

    # ---- per RPC --------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def rpc(self, context: grpc.aio.ServicerContext, admit_while_draining: bool = False) -> AsyncIterator[None]:
        """Admit an RPC (UNAVAILABLE while draining or dead) and map worker errors to statuses."""
        if self.draining and not admit_while_draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"worker {self.options.worker_id} is draining; retry elsewhere")
        if self.client.dead:
            await context.abort(grpc.StatusCode.UNAVAILABLE, self.client.dead)
        if self.client.info is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the worker is still loading its model")
        self.in_flight += 1
        try:
            yield
        except RequestFailed as exc:
            await context.abort(STATUS[exc.kind], str(exc))
        except EngineDead as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def next_message(self, q: asyncio.Queue[RequestEvent]) -> RequestDelta | Prefilled | Aborted:
        """The request's next event; its failures raise (RequestFailed, EngineDead)."""
        event = await q.get()
        if isinstance(event, RequestError):
            raise RequestFailed(event.kind, event.message)
        if isinstance(event, EngineDead):
            raise event
        return event

    async def worker_load(self) -> pb.WorkerLoad:
        info = self.client.info
        if info is None:
            raise RequestFailed(ErrorKind.UNAVAILABLE, "the worker is still loading its model")
        load = await self.client.load()
        return pb.WorkerLoad(
            worker_id=self.options.worker_id,
            role=self.options.role,
            running_requests=load.running,
            waiting_requests=load.waiting,
            kv_usage=load.kv_usage,
            queued_prefill_tokens=load.queued_prefill_tokens,
            active_kv_blocks=load.active_blocks,
            total_kv_blocks=load.total_blocks,
            block_size=info.block_size,
            kv_events_endpoint=info.kv_events_endpoint,
            kv_snapshot_endpoint=info.kv_snapshot_endpoint,
            model_fingerprint=info.model_fingerprint,
        )

    @staticmethod
    def now() -> float:
        return time.perf_counter()


class CommonWorkerRPCs:
    """Abort and GetLoad, the same on both worker services (mixed into their servicers)."""

    rt: WorkerRuntime

    async def Abort(self, request: pb.AbortRequest, context: grpc.aio.ServicerContext) -> pb.AbortResponse:
        found = request.request_id in self.rt.client.open_requests()
        self.rt.client.abort_nowait(request.request_id)
        return pb.AbortResponse(found=found)

    async def GetLoad(self, request: pb.LoadRequest, context: grpc.aio.ServicerContext) -> pb.WorkerLoad:
        async with self.rt.rpc(context, admit_while_draining=True):
            return await self.rt.worker_load()


def run_worker(runtime: WorkerRuntime, add_servicer: AddServicer) -> int:
    async def main() -> None:
        try:
            await runtime.start(add_servicer)
        except EngineDead as exc:
            print(f"[{runtime.options.worker_id}] {exc}", flush=True)
            raise SystemExit(1) from exc
        await runtime.wait()

    asyncio.run(main())
    return 0
