"""The workers the router may use: discovery changes, health checks, load polling.

Every ``interval_s`` each known worker gets a gRPC health check (grpc.health.v1 Check,
short deadline) and, when healthy, a GetLoad. A NOT_SERVING answer takes a worker out of
the pool at once (it is draining or broken); ``fail_threshold`` unanswered checks in a
row do too; one passing check brings it back. The first load
that names KV-event endpoints subscribes the prefix index to that worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contracts.internal_auth import client_interceptors
from contracts.rpc import worker_pb2, worker_pb2_grpc
from router.discovery import Change, DiscoveryEvent
from router.kv_event_subscriber import KVEventSubscriber
from router.workers import Role, Worker

log = logging.getLogger(__name__)
StubT = TypeVar("StubT")


@dataclass(slots=True)
class WorkerPool:
    subscriber: KVEventSubscriber | None = None
    interval_s: float = 1.0
    check_timeout_s: float = 0.5
    fail_threshold: int = 2
    on_change: Callable[[], None] | None = None
    workers: dict[str, Worker] = field(default_factory=dict)
    _channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    _stubs: dict[tuple[str, Callable], object] = field(default_factory=dict)  # (address, stub class) -> stub
    _failures: dict[str, int] = field(default_factory=dict)
    _by_role: dict[Role, list[Worker]] | None = None  # role_workers' lists; reset when `workers` changes (apply)

    def role_workers(self, role: Role) -> list[Worker]:
        """The workers of ``role`` (every request asks: kept between membership changes; do not modify)."""
        if self._by_role is None:
            self._by_role = {r: [w for w in self.workers.values() if w.role is r] for r in Role}
        return self._by_role[role]

    def ready_count(self, role: Role) -> int:
        return sum(1 for w in self.role_workers(role) if w.available)

    def channel(self, address: str) -> grpc.aio.Channel:
        ch = self._channels.get(address)
        if ch is None:
            # A short reconnect back-off: a restarted worker rejoins within seconds.
            options = [
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ]
            ch = grpc.aio.insecure_channel(address, options=options, interceptors=client_interceptors())
            self._channels[address] = ch
        return ch

    def stub(self, address: str, kind: Callable[[grpc.aio.Channel], StubT]) -> StubT:
        """A stub of ``kind`` on the worker's channel, made once: a stub builds a callable per
        RPC method, a measurable share of a short request when made per request."""
        stub = self._stubs.get((address, kind))
        if stub is None:
            stub = self._stubs[(address, kind)] = kind(self.channel(address))
        return stub  # type: ignore[return-value]

    def model_fingerprint(self) -> str:
        """The fingerprint the workers report (they all serve the same model)."""
        for w in self.workers.values():
            if w.load.model_fingerprint:
                return w.load.model_fingerprint
        return ""

    def apply(self, event: DiscoveryEvent) -> None:
        self._by_role = None
        worker = self.workers.get(event.address)
        if event.change is Change.ADDED and worker is None:
            # Not schedulable until discovery says ready and a health check passed.
            self.workers[event.address] = Worker(event.address, event.role, ready=False, healthy=False)
        elif event.change is Change.REMOVED and worker is not None:
            del self.workers[event.address]
            self._failures.pop(event.address, None)
            if self.subscriber is not None:
                self.subscriber.remove_publisher(worker.worker_id)
            self._stubs = {k: v for k, v in self._stubs.items() if k[0] != event.address}
            channel = self._channels.pop(event.address, None)
            if channel is not None:
                asyncio.get_running_loop().create_task(channel.close())
        elif worker is not None and event.change in (Change.READY, Change.UNREADY):
            worker.ready = event.change is Change.READY
        self._changed()

    async def run(self) -> None:
        """Check every worker each interval until cancelled."""
        while True:
            await self.check_all()
            await asyncio.sleep(self.interval_s)

    async def check_all(self) -> None:
        await asyncio.gather(*(self._check(w) for w in list(self.workers.values())))
        self._changed()

    async def _check(self, worker: Worker) -> None:
        channel = self.channel(worker.address)
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=self.check_timeout_s
            )
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError:
            serving = None  # no answer: may be a blip
        if serving is False and worker.healthy:
            # An explicit NOT_SERVING (draining after SIGTERM, or its engine died) is no blip:
            # leave the pool at once so that a scale-down never sends new work to a stopping worker.
            log.info("worker %s (%s) reports NOT_SERVING; out of the pool", worker.address, worker.role.value)
            worker.healthy = False
        if not serving:
            self._failures[worker.address] = self._failures.get(worker.address, 0) + 1
            if worker.healthy and self._failures[worker.address] >= self.fail_threshold:
                log.warning(
                    "worker %s (%s) failed %d health checks; out of the pool",
                    worker.address,
                    worker.role.value,
                    self.fail_threshold,
                )
                worker.healthy = False
            return
        self._failures[worker.address] = 0
        if not worker.healthy:
            log.info("worker %s (%s) is healthy", worker.address, worker.role.value)
        worker.healthy = True
        await self._poll_load(worker, channel)

    async def _poll_load(self, worker: Worker, channel: grpc.aio.Channel) -> None:
        stub_cls = worker_pb2_grpc.PrefillServiceStub if worker.role is Role.PREFILL else worker_pb2_grpc.DecodeServiceStub
        try:
            load = await stub_cls(channel).GetLoad(worker_pb2.LoadRequest(), timeout=self.check_timeout_s)
        except grpc.aio.AioRpcError as exc:
            log.debug("GetLoad on %s failed: %s", worker.address, exc.code())
            return
        old_id = worker.worker_id
        worker.update_load(load)
        if self.subscriber is not None and load.kv_events_endpoint:
            if old_id != worker.worker_id:
                self.subscriber.remove_publisher(old_id)
            self.subscriber.add_publisher(worker.worker_id, load.kv_events_endpoint, load.kv_snapshot_endpoint)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._stubs.clear()
