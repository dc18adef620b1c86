"""Storage node: bytes at master-allocated offsets of one shared-memory segment.

The node does not own allocation (the master does); it checks bounds and
checksums, streams large objects in chunks, and keeps itself registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import xxhash
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from contracts.grpc_options import STORE_GRPC_OPTIONS
from contracts.internal_auth import client_interceptors, server_interceptors
from contracts.rpc import kvstore_pb2 as pb
from contracts.rpc import kvstore_pb2_grpc as pb_grpc
from kvstore import metrics, wire
from kvstore.data_plane import DataPlaneServer
from kvstore.errors import ChecksumMismatch, InvalidRequest, StoreError, code_number
from kvstore.node_config import NodeConfig
from kvstore.segment import SharedSegment, host_identity, remove_orphaned_segments
from kvstore.wire import WriteChunkView, WriteItemView

log = logging.getLogger(__name__)
STORAGE_NODE_SERVICE = "splitserve.kvstore.StorageNode"


@contextlib.contextmanager
def _timed(op: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    metrics.OPERATION_SECONDS.labels("node", op).observe(time.perf_counter() - start)


class StorageNodeServicer(pb_grpc.StorageNodeServicer):
    def __init__(self, segment: SharedSegment, read_chunk_size: int) -> None:
        self.segment = segment
        self.read_chunk_size = read_chunk_size

    def _check_range(self, offset: int, size: int) -> None:
        if size <= 0 or offset + size > self.segment.capacity:
            raise InvalidRequest(
                f"range offset={offset} size={size} is empty or outside the {self.segment.capacity}-byte segment"
            )

    def _verify(self, offset: int, size: int, checksum: int) -> None:
        actual = xxhash.xxh3_64_intdigest(self.segment.view(offset, size))
        if actual != checksum:
            raise ChecksumMismatch(
                f"object at offset {offset} ({size} bytes): xxh3_64 is {actual:#x}, expected {checksum:#x}; write rejected"
            )

    async def Write(self, request_iterator: AsyncIterator[WriteChunkView], context: grpc.aio.ServicerContext) -> pb.WriteReply:
        with _timed("write"):
            try:
                offset = size = checksum = written = 0
                index = 0
                async for chunk in request_iterator:
                    if index == 0:
                        offset, size, checksum = chunk.offset, chunk.size, chunk.checksum
                        self._check_range(offset, size)
                    data, n = chunk.data, len(chunk.data)
                    if written + n > size:
                        raise InvalidRequest(f"chunk {index} overruns the declared object size of {size} bytes")
                    if chunk.chunk_checksum and xxhash.xxh3_64_intdigest(data) != chunk.chunk_checksum:
                        raise ChecksumMismatch(
                            f"chunk {index} (bytes {written}..{written + n}) is corrupted: checksum mismatch; write rejected"
                        )
                    self.segment.array[offset + written : offset + written + n] = data
                    written += n
                    index += 1
                if index == 0:
                    raise InvalidRequest("Write stream carried no chunk")
                if written != size:
                    raise InvalidRequest(f"Write stream ended after {written} of {size} bytes")
                self._verify(offset, size, checksum)  # covers every chunk, whether or not it carried its own checksum
            except StoreError as exc:
                await context.abort(exc.code, str(exc))
            metrics.RECEIVED.labels("node").inc(size)
            return pb.WriteReply(bytes_written=written)

    async def Read(self, request: pb.ReadRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[memoryview]:
        try:
            self._check_range(request.offset, request.size)
        except StoreError as exc:
            await context.abort(exc.code, str(exc))
        step = request.chunk_size or self.read_chunk_size
        end = request.offset + request.size
        for start in range(request.offset, end, step):
            yield self.segment.view(start, min(step, end - start))
        metrics.SENT.labels("node").inc(request.size)

    async def BatchWrite(self, items: list[WriteItemView], context: grpc.aio.ServicerContext) -> pb.ItemResults:
        with _timed("batch_write"):
            results = []
            for i, item in enumerate(items):
                try:
                    n = len(item.data)
                    self._check_range(item.offset, n)
                    if xxhash.xxh3_64_intdigest(item.data) != item.checksum:
                        raise ChecksumMismatch(f"item {i} at offset {item.offset}: checksum mismatch; write rejected")
                    self.segment.array[item.offset : item.offset + n] = item.data
                    metrics.RECEIVED.labels("node").inc(n)
                    results.append(pb.KeyResult(key=str(i), ok=True))
                except StoreError as exc:
                    results.append(pb.KeyResult(key=str(i), ok=False, code=code_number(exc.code), message=str(exc)))
            return pb.ItemResults(results=results)

    async def BatchRead(self, request: pb.BatchReadRequest, context: grpc.aio.ServicerContext) -> list[memoryview]:
        with _timed("batch_read"):
            try:
                for item in request.items:
                    self._check_range(item.offset, item.size)
            except StoreError as exc:
                await context.abort(exc.code, str(exc))
            data = [self.segment.view(i.offset, i.size) for i in request.items]
            metrics.SENT.labels("node").inc(sum(len(d) for d in data))
            return data

    async def Seal(self, request: pb.SealRequest, context: grpc.aio.ServicerContext) -> pb.ItemResults:
        with _timed("seal"):
            results = []
            for i, item in enumerate(request.items):
                try:
                    self._check_range(item.offset, item.size)
                    self._verify(item.offset, item.size, item.checksum)
                    results.append(pb.KeyResult(key=str(i), ok=True))
                except StoreError as exc:
                    results.append(pb.KeyResult(key=str(i), ok=False, code=code_number(exc.code), message=str(exc)))
            return pb.ItemResults(results=results)


def storage_node_handler(servicer: StorageNodeServicer) -> grpc.GenericRpcHandler:
    """The StorageNode service, with object bytes through kvstore.wire instead of generated messages."""
    handlers = {
        "Write": grpc.stream_unary_rpc_method_handler(
            servicer.Write, request_deserializer=wire.decode_write_chunk, response_serializer=pb.WriteReply.SerializeToString
        ),
        "Read": grpc.unary_stream_rpc_method_handler(
            servicer.Read, request_deserializer=pb.ReadRequest.FromString, response_serializer=wire.encode_read_chunk
        ),
        "BatchWrite": grpc.unary_unary_rpc_method_handler(
            servicer.BatchWrite,
            request_deserializer=wire.decode_batch_write,
            response_serializer=pb.ItemResults.SerializeToString,
        ),
        "BatchRead": grpc.unary_unary_rpc_method_handler(
            servicer.BatchRead, request_deserializer=pb.BatchReadRequest.FromString, response_serializer=wire.encode_batch_read
        ),
        "Seal": grpc.unary_unary_rpc_method_handler(
            servicer.Seal, request_deserializer=pb.SealRequest.FromString, response_serializer=pb.ItemResults.SerializeToString
        ),
    }
    return grpc.method_handlers_generic_handler(STORAGE_NODE_SERVICE, handlers)


class NodeServer:
    """A running storage node: segment, gRPC + health, registration and heartbeats."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        for path in remove_orphaned_segments():  # before allocating: a killed node's memory is what may be missing
            log.warning("removed %s: its storage node is gone (killed before it could clean up)", path)
        self.segment = SharedSegment.create(config.capacity)
        self.server: grpc.aio.Server | None = None  # made in start(): it binds to the running loop
        self.node_id = ""
        self.address = ""
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None
        self.data_plane: DataPlaneServer | None = None
        self.data_address = ""

    async def start(self) -> str:
        cfg = self.config
        self.server = grpc.aio.server(options=STORE_GRPC_OPTIONS, interceptors=server_interceptors())
        self.server.add_generic_rpc_handlers((storage_node_handler(StorageNodeServicer(self.segment, cfg.read_chunk_size)),))
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        port = self.server.add_insecure_port(f"{cfg.host}:{cfg.port}")
        await self.server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        await health_servicer.set("splitserve.kvstore.StorageNode", health_pb2.HealthCheckResponse.SERVING)
        host = cfg.advertise_host or ("127.0.0.1" if cfg.host in ("0.0.0.0", "") else cfg.host)
        self.address = f"{host}:{port}"
        if cfg.data_port is not None:
            self.data_plane = DataPlaneServer(self.segment, cfg.hash_lane)
            self.data_address = f"{host}:{await self.data_plane.start(cfg.host, cfg.data_port)}"
        metrics.CAPACITY.labels("node").set(cfg.capacity)
        self._channel = grpc.aio.insecure_channel(cfg.master, interceptors=client_interceptors())
        self._master = pb_grpc.MasterStub(self._channel)
        interval = await self._register()
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(interval))
        return self.address

    async def _register(self) -> float:
        hostname, boot_id = host_identity()
        request = pb.RegisterNodeRequest(
            address=self.address,
            capacity=self.config.capacity,
            hostname=hostname,
            boot_id=boot_id,
            shm_name=self.segment.path,
            data_address=self.data_address,
        )
        reply = await self._master.RegisterNode(request, timeout=10, wait_for_ready=True)
        self.node_id = reply.node_id
        log.info("registered with master %s as node %s", self.config.master, self.node_id)
        return reply.heartbeat_interval_s

    async def _heartbeat_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                reply = await self._master.Heartbeat(pb.HeartbeatRequest(node_id=self.node_id), timeout=max(interval, 1.0))
                if not reply.known:
                    log.warning("master forgot node %s (missed heartbeats); registering again", self.node_id)
                    interval = await self._register()
            except grpc.aio.AioRpcError as exc:
                log.warning("heartbeat to master %s failed: %s", self.config.master, exc.code())

    async def stop(self, grace_s: float = 1.0) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        if self.data_plane is not None:
            await self.data_plane.stop()
        if self.server is not None:
            await self.server.stop(grace_s)
        if self._channel is not None:
            await self._channel.close()
        self.segment.close()
