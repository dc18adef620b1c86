"""Master gRPC service: the wire edge of MasterState, plus its server lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sized

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from contracts.grpc_options import STORE_GRPC_OPTIONS
from contracts.internal_auth import server_interceptors
from contracts.rpc import kvstore_pb2 as pb
from contracts.rpc import kvstore_pb2_grpc as pb_grpc
from kvstore import metrics
from kvstore.errors import InvalidRequest, StoreError, code_number
from kvstore.event_publisher import KVEventPublisher
from kvstore.master_config import MasterConfig
from kvstore.master_state import MasterState, StoredObject

log = logging.getLogger(__name__)
MAX_BATCH = 100_000
MAX_WAIT_S = 30.0  # WaitCommitted holds a call at most this long (the caller asks again)
_STATE_NAMES = {"started": pb.PUT_STATE_STARTED, "exists": pb.PUT_STATE_ALREADY_EXISTS, "in_flight": pb.PUT_STATE_IN_FLIGHT}


@contextlib.contextmanager
def _timed(op: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    metrics.OPERATION_SECONDS.labels("master", op).observe(time.perf_counter() - start)


def _check_batch(items: Sized, what: str) -> None:
    n = len(items)
    if n == 0 or n > MAX_BATCH:
        raise InvalidRequest(f"{what}: a batch needs 1..{MAX_BATCH} items, got {n}")


def _failed(key: str, exc: StoreError) -> pb.KeyResult:
    return pb.KeyResult(key=key, ok=False, code=code_number(exc.code), message=str(exc))


class MasterServicer(pb_grpc.MasterServicer):
    def __init__(self, state: MasterState) -> None:
        self.state = state
        self._evictions_reported = 0
        self._committed = asyncio.Condition()  # notified after every commit: wakes WaitCommitted calls

    # -------------------------------------------------------- nodes

    async def RegisterNode(self, request: pb.RegisterNodeRequest, context: grpc.aio.ServicerContext) -> pb.RegisterNodeReply:
        try:
            node_id = self.state.register_node(
                request.address, request.capacity, request.hostname, request.boot_id, request.shm_name, request.data_address
            )
        except StoreError as exc:
            await context.abort(exc.code, str(exc))
        log.info("storage node %s registered at %s (%d bytes)", node_id, request.address, request.capacity)
        self.update_gauges()
        return pb.RegisterNodeReply(node_id=node_id, heartbeat_interval_s=self.state.config.heartbeat_timeout_s / 4)

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext) -> pb.HeartbeatReply:
        return pb.HeartbeatReply(known=self.state.heartbeat(request.node_id))

    # -------------------------------------------------------- batch forms

    async def BatchPutStart(self, request: pb.PutStartRequest, context: grpc.aio.ServicerContext) -> pb.PutStartReply:
        with _timed("put_start"):
            try:
                _check_batch(request.items, "BatchPutStart")
                keys = [i.key for i in request.items]
                if len(set(keys)) != len(keys):
                    raise InvalidRequest("BatchPutStart: a key appears twice in one batch")
            except StoreError as exc:
                await context.abort(exc.code, str(exc))
            reply = pb.PutStartReply(results=[self._put_start(item) for item in request.items])
            self.update_gauges()
            return reply

    async def BatchPutCommit(self, request: pb.PutCommitRequest, context: grpc.aio.ServicerContext) -> pb.KeyResults:
        with _timed("put_commit"):
            if request.checksums and len(request.checksums) != len(request.put_ids):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"BatchPutCommit: {len(request.checksums)} checksums for {len(request.put_ids)} put ids "
                    "(give none, or one per put id)",
                )
            checksums: list[int | None] = list(request.checksums) or [None] * len(request.put_ids)
            results = []
            for put_id, checksum in zip(request.put_ids, checksums):
                try:
                    obj = self.state.put_commit(put_id, checksum)
                    metrics.RECEIVED.labels("master").inc(obj.size)
                    results.append(pb.KeyResult(key=put_id, ok=True))
                except StoreError as exc:
                    results.append(_failed(put_id, exc))
            self.update_gauges()
            if any(r.ok for r in results):
                async with self._committed:
                    self._committed.notify_all()
            return pb.KeyResults(results=results)

    async def BatchPutAbort(self, request: pb.PutAbortRequest, context: grpc.aio.ServicerContext) -> pb.KeyResults:
        results = []
        for put_id in request.put_ids:
            try:
                self.state.put_abort(put_id)
                results.append(pb.KeyResult(key=put_id, ok=True))
            except StoreError as exc:
                results.append(_failed(put_id, exc))
        self.update_gauges()
        return pb.KeyResults(results=results)

    async def BatchGet(self, request: pb.KeysRequest, context: grpc.aio.ServicerContext) -> pb.GetReply:
        with _timed("get"):
            try:
                _check_batch(request.keys, "BatchGet")
                found = [self.state.get(k) for k in request.keys]
            except StoreError as exc:
                await context.abort(exc.code, str(exc))
            hits = sum(o is not None for o in found)
            metrics.HITS.labels("master").inc(hits)
            metrics.MISSES.labels("master").inc(len(found) - hits)
            # every read (gRPC or shared memory) takes a lease here, so the master sees all bytes served
            metrics.SENT.labels("master").inc(sum(o.size for o in found if o is not None))
            return pb.GetReply(objects=[self._location(k, o) for k, o in zip(request.keys, found)])

    async def BatchExists(self, request: pb.KeysRequest, context: grpc.aio.ServicerContext) -> pb.ExistsReply:
        with _timed("exists"):
            try:
                _check_batch(request.keys, "BatchExists")
                exists = [self.state.exists(k) for k in request.keys]
            except StoreError as exc:
                await context.abort(exc.code, str(exc))
            return pb.ExistsReply(exists=exists)

    async def WaitCommitted(self, request: pb.WaitCommittedRequest, context: grpc.aio.ServicerContext) -> pb.ExistsReply:
        """Answer once every key is committed (woken by BatchPutCommit) or at the timeout."""
        try:
            _check_batch(request.keys, "WaitCommitted")
            exists = [self.state.exists(k) for k in request.keys]
        except StoreError as exc:
            await context.abort(exc.code, str(exc))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(request.timeout_s, 0.0), MAX_WAIT_S)
        async with self._committed:
            while not all(exists) and loop.time() < deadline:
                try:
                    await asyncio.wait_for(self._committed.wait(), deadline - loop.time())
                except TimeoutError:
                    pass
                exists = [self.state.exists(k) for k in request.keys]
        return pb.ExistsReply(exists=exists)

    async def BatchRemove(self, request: pb.KeysRequest, context: grpc.aio.ServicerContext) -> pb.KeyResults:
        with _timed("remove"):
            reply = pb.KeyResults(results=[self._per_key(k, self.state.remove, k) for k in request.keys])
            self.update_gauges()
            return reply

    async def BatchPin(self, request: pb.KeysRequest, context: grpc.aio.ServicerContext) -> pb.KeyResults:
        return pb.KeyResults(results=[self._per_key(k, self.state.set_pinned, k, True) for k in request.keys])

    async def BatchUnpin(self, request: pb.KeysRequest, context: grpc.aio.ServicerContext) -> pb.KeyResults:
        return pb.KeyResults(results=[self._per_key(k, self.state.set_pinned, k, False) for k in request.keys])

    # -------------------------------------------------------- singular forms

    async def PutStart(self, request: pb.PutStartItem, context: grpc.aio.ServicerContext) -> pb.PutStartResult:
        result = self._put_start(request)
        self.update_gauges()
        if result.state == pb.PUT_STATE_FAILED:
            await context.abort(grpc.StatusCode(_status(result.code)), result.message)
        return result

    async def PutCommit(self, request: pb.PutCommitRequest, context: grpc.aio.ServicerContext) -> pb.KeyResult:
        await _require_one(request.put_ids, "PutCommit", "put id", context)
        result = (await self.BatchPutCommit(request, context)).results[0]
        if not result.ok:
            await context.abort(grpc.StatusCode(_status(result.code)), result.message)
        return result

    async def Get(self, request: pb.KeysRequest, context: grpc.aio.ServicerContext) -> pb.ObjectLocation:
        await _require_one(request.keys, "Get", "key", context)
        location = (await self.BatchGet(request, context)).objects[0]
        if not location.found:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"object {request.keys[0]!r} does not exist")
        return location

    async def Exists(self, request: pb.KeysRequest, context: grpc.aio.ServicerContext) -> pb.ExistsReply:
        await _require_one(request.keys, "Exists", "key", context)
        return await self.BatchExists(request, context)

    async def Remove(self, request: pb.KeysRequest, context: grpc.aio.ServicerContext) -> pb.KeyResult:
        await _require_one(request.keys, "Remove", "key", context)
        result = (await self.BatchRemove(request, context)).results[0]
        if not result.ok:
            await context.abort(grpc.StatusCode(_status(result.code)), result.message)
        return result

    async def Stats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext) -> pb.StatsReply:
        s = self.state
        nodes = [
            pb.NodeStats(node_id=n.node_id, address=n.address, capacity=n.allocator.capacity, used=n.allocator.used)
            for n in s.nodes.values()
        ]
        return pb.StatsReply(nodes=nodes, objects=len(s.objects), pending_puts=len(s.pending), evictions=s.evictions)

    # -------------------------------------------------------- helpers

    def _put_start(self, item: pb.PutStartItem) -> pb.PutStartResult:
        try:
            out = self.state.put_start(item.key, item.size, item.checksum, item.replicas if item.HasField("replicas") else 1)
        except StoreError as exc:
            return pb.PutStartResult(key=item.key, state=pb.PUT_STATE_FAILED, code=code_number(exc.code), message=str(exc))
        if out.put is None:
            return pb.PutStartResult(key=item.key, state=_STATE_NAMES[out.state])
        return pb.PutStartResult(
            key=item.key,
            state=pb.PUT_STATE_STARTED,
            put_id=out.put.put_id,
            replicas=[self._replica(p.node_id, p.offset) for p in out.put.placements],
        )

    def _per_key(self, key: str, fn, *args) -> pb.KeyResult:
        try:
            fn(*args)
            return pb.KeyResult(key=key, ok=True)
        except StoreError as exc:
            return _failed(key, exc)

    def _replica(self, node_id: str, offset: int) -> pb.Replica:
        n = self.state.nodes[node_id]
        return pb.Replica(
            node_id=node_id,
            address=n.address,
            offset=offset,
            hostname=n.hostname,
            boot_id=n.boot_id,
            shm_name=n.shm_name,
            data_address=n.data_address,
        )

    def _location(self, key: str, obj: StoredObject | None) -> pb.ObjectLocation:
        if obj is None:
            return pb.ObjectLocation(key=key, found=False)
        return pb.ObjectLocation(
            key=key,
            found=True,
            size=obj.size,
            checksum=obj.checksum,
            replicas=[self._replica(p.node_id, p.offset) for p in obj.placements],
            lease_ttl_s=self.state.config.lease_ttl_s,
        )

    def update_gauges(self) -> None:
        nodes = self.state.nodes.values()
        metrics.CAPACITY.labels("master").set(sum(n.allocator.capacity for n in nodes))
        metrics.USED.labels("master").set(sum(n.allocator.used for n in nodes))
        metrics.OBJECTS.labels("master").set(len(self.state.objects))
        metrics.EVICTIONS.labels("master").inc(self.state.evictions - self._evictions_reported)
        self._evictions_reported = self.state.evictions


def _status(code: int) -> tuple[int, str]:
    return next(c for c in grpc.StatusCode if c.value[0] == code).value


class MasterServer:
    """A running master: gRPC + health, the event publisher, and the tick loop."""

    def __init__(self, config: MasterConfig) -> None:
        self.config = config
        self.publisher: KVEventPublisher | None = None
        self.state = MasterState(config)
        self.servicer = MasterServicer(self.state)
        self.server: grpc.aio.Server | None = None  # made in start(): it binds to the running loop
        self.address = ""
        self._tick_task: asyncio.Task[None] | None = None

    async def start(self) -> str:
        cfg = self.config
        if cfg.events_port is not None:
            host = "*" if cfg.host in ("0.0.0.0", "") else cfg.host
            pub = f"tcp://{host}:{cfg.events_port}" if cfg.events_port else f"tcp://{host}:*"
            snap = f"tcp://{host}:{cfg.events_port + 1}" if cfg.events_port else f"tcp://{host}:*"
            self.publisher = KVEventPublisher(pub, snap, "kvstore", self.state.snapshot)
            self.state.emit = self.publisher.publish
        self.server = grpc.aio.server(options=STORE_GRPC_OPTIONS, interceptors=server_interceptors())
        pb_grpc.add_MasterServicer_to_server(self.servicer, self.server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        port = self.server.add_insecure_port(f"{cfg.host}:{cfg.port}")
        await self.server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        await health_servicer.set("splitserve.kvstore.Master", health_pb2.HealthCheckResponse.SERVING)
        self._tick_task = asyncio.create_task(self._tick_loop())
        advertised = "127.0.0.1" if cfg.host in ("0.0.0.0", "") else cfg.host
        self.address = f"{advertised}:{port}"
        return self.address

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_interval_s)
            self.state.tick()
            self.servicer.update_gauges()

    async def stop(self, grace_s: float = 1.0) -> None:
        if self._tick_task is not None:
            self._tick_task.cancel()
        if self.server is not None:
            await self.server.stop(grace_s)
        if self.publisher is not None:
            self.publisher.close()


async def _require_one(values, rpc: str, what: str, context: grpc.aio.ServicerContext) -> None:
    """The singular RPCs take exactly one item; the Batch* forms take many."""
    if len(values) != 1:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{rpc} takes exactly one {what}, got {len(values)}")
