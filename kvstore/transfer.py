"""Client data plane: moving object bytes to and from storage nodes.

Four paths, chosen per replica:
- same host: copy straight into / out of the node's shared-memory segment — only
  metadata on gRPC, with the master. A write is sealed by the writer itself: it checks the
  bytes now in the segment against the checksum of its source, then commits (two round trips
  per put: start and commit). Asking the node to check them would prove nothing more — a
  client that maps the segment can write any byte of it — and cost a third round trip.
  A read that finishes within the master's lease skips the checksum pass: sealed bytes
  cannot change while leased, and no transfer happened that could corrupt them;
- another host, node with a data plane (kvstore/data_plane.py): one raw-TCP request
  per node and batch, bytes sent from and received into the caller's buffers and hashed
  as they pass (a write's checksum is learnt while sending, a read's while receiving);
- objects up to ``chunk_size`` over gRPC: packed into unary BatchWrite / BatchRead
  calls of up to ``batch_bytes``;
- larger objects over gRPC: client-streaming Write / server-streaming Read in chunks.

Object bytes on gRPC go through kvstore.wire (one copy into the message, memoryviews
out of it) rather than the generated messages, which copy them four times or more.
Sizes: messages past ~4 MiB got slower on the dev VM (each one is a fresh
allocation, and first-touch page faults cost more than the copy).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import grpc
import numpy as np
import xxhash

from contracts.grpc_options import STORE_GRPC_OPTIONS
from contracts.internal_auth import client_interceptors
from contracts.rpc import kvstore_pb2 as pb
from kvstore import wire
from kvstore.data_plane import BAD_CHECKSUM, OK, READ, WRITE, DataPlaneClient, Item
from kvstore.errors import ChecksumMismatch, InvalidRequest, StoreError, error_from_code
from kvstore.segment import SharedSegment, host_identity


@dataclass(slots=True)
class WriteJob:
    replica: pb.Replica
    data: memoryview
    checksum: int | None = None  # xxh3_64 of data: given, or set by the write (the data plane hashes as it sends)
    error: StoreError | None = None


@dataclass(slots=True)
class ReadJob:
    replica: pb.Replica
    size: int
    checksum: int
    dest: memoryview | None  # None: keep the bytes in ``data``
    lease_until: float = 0.0  # monotonic time until which the master keeps these bytes sealed and in place
    data: bytes | None = None
    ok: bool = False


_Job = TypeVar("_Job", WriteJob, ReadJob)


@dataclass(slots=True)
class NodeStub:
    """StorageNode calls on one channel; the bulk ones use kvstore.wire codecs."""

    write: grpc.aio.StreamUnaryMultiCallable
    read: grpc.aio.UnaryStreamMultiCallable
    batch_write: grpc.aio.UnaryUnaryMultiCallable
    batch_read: grpc.aio.UnaryUnaryMultiCallable

    @classmethod
    def on(cls, channel: grpc.aio.Channel) -> NodeStub:
        path = "/splitserve.kvstore.StorageNode/"
        return cls(
            write=channel.stream_unary(
                path + "Write", request_serializer=wire.encode_write_chunk, response_deserializer=pb.WriteReply.FromString
            ),
            read=channel.unary_stream(
                path + "Read", request_serializer=pb.ReadRequest.SerializeToString, response_deserializer=wire.decode_read_chunk
            ),
            batch_write=channel.unary_unary(
                path + "BatchWrite", request_serializer=wire.encode_batch_write, response_deserializer=pb.ItemResults.FromString
            ),
            batch_read=channel.unary_unary(
                path + "BatchRead",
                request_serializer=pb.BatchReadRequest.SerializeToString,
                response_deserializer=wire.decode_batch_read,
            ),
        )


def _rpc_error(exc: grpc.aio.AioRpcError) -> StoreError:
    return error_from_code(exc.code().value[0], f"{exc.code().name}: {exc.details()}")


def _source_checksum(job: WriteJob) -> int:
    """xxh3_64 of a write's source, for the paths that declare it before the bytes (all but the data plane)."""
    if job.checksum is None:
        job.checksum = xxhash.xxh3_64_intdigest(job.data)
    return job.checksum


LOCAL_PARALLEL_BYTES = 1 << 20  # below this a local read copies on the calling thread


def _copy_out(pairs: list[tuple[ReadJob, np.ndarray]]) -> None:
    for job, src in pairs:
        if job.dest is None:
            job.data = src.tobytes()
        else:
            np.copyto(np.frombuffer(job.dest, np.uint8)[: job.size], src)


class NodeTransport:
    def __init__(
        self,
        chunk_size: int = 4 << 20,
        batch_bytes: int = 4 << 20,
        max_inflight: int = 16,
        use_shm: bool = True,
        use_data_plane: bool = True,
        hash_lane: bool | None = None,
    ) -> None:
        self.chunk_size = chunk_size
        self.batch_bytes = batch_bytes
        self.use_shm = use_shm
        self.use_data_plane = use_data_plane
        self._data_plane = DataPlaneClient(hash_lane)
        self._host = host_identity()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, NodeStub] = {}
        self._segments: dict[str, SharedSegment | None] = {}
        self._limit = asyncio.Semaphore(max_inflight)
        # local shared-memory reads of a big batch copy on a few threads at once (numpy copies
        # without the GIL): one core's memcpy is the limit otherwise
        self._copy_threads = min(4, os.cpu_count() or 1)
        self._copiers = ThreadPoolExecutor(self._copy_threads, thread_name_prefix="kv-shm-copy")

    # ------------------------------------------------------------ routing

    def stub(self, address: str) -> NodeStub:
        if address not in self._stubs:
            self._channels[address] = grpc.aio.insecure_channel(
                address, options=STORE_GRPC_OPTIONS, interceptors=client_interceptors()
            )
            self._stubs[address] = NodeStub.on(self._channels[address])
        return self._stubs[address]

    def local_segment(self, replica: pb.Replica) -> SharedSegment | None:
        """The node's segment when it is mapped into this host's memory, else None."""
        if not self.use_shm or not replica.shm_name or (replica.hostname, replica.boot_id) != self._host:
            return None
        if replica.shm_name not in self._segments:
            try:
                self._segments[replica.shm_name] = SharedSegment.attach(replica.shm_name)
            except OSError:
                self._segments[replica.shm_name] = None  # e.g. another container with the same boot id
        return self._segments[replica.shm_name]

    def is_local(self, replica: pb.Replica) -> bool:
        return self.local_segment(replica) is not None

    # ------------------------------------------------------------ writes

    async def write(self, jobs: list[WriteJob]) -> None:
        """Write every job; failures land in ``job.error``."""
        by_node: dict[str, list[WriteJob]] = {}
        tasks = []
        for job in jobs:
            segment = self.local_segment(job.replica)
            if segment is not None:
                self._shm_write(segment, job)
            elif self.use_data_plane and job.replica.data_address:
                by_node.setdefault("tcp:" + job.replica.data_address, []).append(job)
            elif len(job.data) > self.chunk_size:
                tasks.append(self._stream_write(job))
            else:
                by_node.setdefault(job.replica.address, []).append(job)
        for key, group in by_node.items():
            if key.startswith("tcp:"):
                tasks.append(self._raw_write(key.removeprefix("tcp:"), group))
                continue
            for batch in self._batches(group, lambda j: len(j.data)):
                tasks.append(self._batch_write(batch))
        await asyncio.gather(*tasks)

    @staticmethod
    def _shm_write(segment: SharedSegment, job: WriteJob) -> None:
        """Copy into the node's segment and seal: the bytes that landed must match the source's checksum."""
        target = segment.array[job.replica.offset : job.replica.offset + len(job.data)]
        checksum = _source_checksum(job)
        np.copyto(target, np.frombuffer(job.data, np.uint8))
        if xxhash.xxh3_64_intdigest(target.data) != checksum:  # the caller changed its buffer while we copied
            job.error = ChecksumMismatch(
                f"object at offset {job.replica.offset}: the bytes written to shared memory do "
                "not match their checksum (was the source buffer modified during the put?)"
            )

    async def _raw_write(self, address: str, jobs: list[WriteJob]) -> None:
        items = [Item(j.replica.offset, len(j.data), j.data) for j in jobs]
        async with self._limit:
            try:
                status = await self._data_plane.request(address, WRITE, items)
            except OSError as exc:
                for j in jobs:
                    j.error = StoreError(f"data plane {address}: {exc}")
                return
        for job, item, s in zip(jobs, items, status):
            if s == BAD_CHECKSUM:
                job.error = ChecksumMismatch(
                    f"data plane {address}: bytes at offset {job.replica.offset} arrived corrupted (checksum mismatch)"
                )
            elif s != OK:
                job.error = InvalidRequest(
                    f"data plane {address}: range at offset {job.replica.offset} is outside the node's segment"
                )
            elif job.checksum is not None and job.checksum != item.checksum:
                job.error = ChecksumMismatch(
                    f"object at offset {job.replica.offset}: the bytes sent to {address} do not match the checksum "
                    "declared for them (was the source buffer modified during the put?)"
                )
            else:
                job.checksum = item.checksum

    def _batches(self, jobs: list[_Job], size_of: Callable[[_Job], int]) -> list[list[_Job]]:
        batches: list[list[_Job]] = []
        current: list[_Job] = []
        total = 0
        for job in jobs:
            if current and total + size_of(job) > self.batch_bytes:
                batches.append(current)
                current, total = [], 0
            current.append(job)
            total += size_of(job)
        if current:
            batches.append(current)
        return batches

    async def _batch_write(self, jobs: list[WriteJob]) -> None:
        items = [wire.WriteItemView(j.replica.offset, _source_checksum(j), j.data) for j in jobs]
        await self._apply(jobs, self.stub(jobs[0].replica.address).batch_write, items)

    async def _apply(self, jobs: list[WriteJob], call, request) -> None:
        async with self._limit:
            try:
                reply = await call(request)
            except grpc.aio.AioRpcError as exc:
                for j in jobs:
                    j.error = _rpc_error(exc)
                return
        for job, result in zip(jobs, reply.results):
            if not result.ok:
                job.error = error_from_code(result.code, result.message)

    async def _stream_write(self, job: WriteJob) -> None:
        # no per-chunk checksums: the node verifies the whole object against the checksum at the end
        checksum = _source_checksum(job)

        async def chunks() -> AsyncIterator[wire.WriteChunkView]:
            data, step = job.data, self.chunk_size
            yield wire.WriteChunkView(data[:step], offset=job.replica.offset, size=len(data), checksum=checksum)
            for start in range(step, len(data), step):
                yield wire.WriteChunkView(data[start : start + step])

        async with self._limit:
            try:
                await self.stub(job.replica.address).write(chunks())
            except grpc.aio.AioRpcError as exc:
                job.error = _rpc_error(exc)

    # ------------------------------------------------------------ reads

    async def read(self, jobs: list[ReadJob]) -> None:
        """Read every job and verify its checksum; ``job.ok`` says which arrived intact."""
        by_node: dict[str, list[ReadJob]] = {}
        tasks = []
        local: list[tuple[ReadJob, np.ndarray]] = []
        for job in jobs:
            segment = self.local_segment(job.replica)
            if segment is not None:
                local.append((job, segment.array[job.replica.offset : job.replica.offset + job.size]))
            elif self.use_data_plane and job.replica.data_address:
                by_node.setdefault("tcp:" + job.replica.data_address, []).append(job)
            elif job.size > self.chunk_size:
                tasks.append(self._stream_read(job))
            else:
                by_node.setdefault(job.replica.address, []).append(job)
        for key, group in by_node.items():
            if key.startswith("tcp:"):
                tasks.append(self._raw_read(key.removeprefix("tcp:"), group))
                continue
            for batch in self._batches(group, lambda j: j.size):
                tasks.append(self._batch_read(batch))
        if local:
            tasks.append(self._read_local(local))
        await asyncio.gather(*tasks)

    async def _read_local(self, local: list[tuple[ReadJob, np.ndarray]]) -> None:
        """Copy out of a shared-memory segment of this host; a batch of 1 MiB or more on several threads."""
        total = sum(job.size for job, _ in local)
        workers = min(self._copy_threads, len(local)) if total >= LOCAL_PARALLEL_BYTES else 1
        if workers > 1:
            groups: list[list[tuple[ReadJob, np.ndarray]]] = [[] for _ in range(workers)]
            sizes = [0] * workers
            for pair in sorted(local, key=lambda p: -p[0].size):  # biggest first, to the least loaded group
                i = sizes.index(min(sizes))
                groups[i].append(pair)
                sizes[i] += pair[0].size
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(self._copiers, _copy_out, g) for g in groups))
        else:
            _copy_out(local)
        for job, _ in local:
            if time.monotonic() < job.lease_until:
                # No transfer to check: the writer verified these bytes when it sealed them, and
                # the lease kept them from being evicted or reused while we copied.
                job.ok = True
            else:
                self._verify(job)  # the copy outlived the lease: the bytes may have been reused

    async def _raw_read(self, address: str, jobs: list[ReadJob]) -> None:
        items = [Item(j.replica.offset, j.size, j.dest) for j in jobs]
        async with self._limit:
            try:
                status = await self._data_plane.request(address, READ, items)
            except OSError:
                return  # node gone: these stay not ok, the caller tries another replica or misses
        for job, item, s in zip(jobs, items, status):
            if s == OK and item.view is not None:
                if job.dest is None:
                    job.data = bytes(item.view)
                job.ok = item.checksum == job.checksum  # hashed while it arrived

    def _verify(self, job: ReadJob) -> None:
        view = job.data if job.dest is None else job.dest[: job.size]
        job.ok = view is not None and len(view) == job.size and xxhash.xxh3_64_intdigest(view) == job.checksum

    def _land(self, job: ReadJob, data: memoryview) -> None:
        if job.dest is None:
            job.data = bytes(data)
        elif len(data) == job.size:
            job.dest[: job.size] = data
        self._verify(job)

    async def _batch_read(self, jobs: list[ReadJob]) -> None:
        request = pb.BatchReadRequest(items=[pb.ReadRequest(offset=j.replica.offset, size=j.size) for j in jobs])
        async with self._limit:
            try:
                reply = await self.stub(jobs[0].replica.address).batch_read(request)
            except grpc.aio.AioRpcError:
                return  # node gone: these stay not ok, the caller tries another replica or misses
        for job, data in zip(jobs, reply):
            self._land(job, data)

    async def _stream_read(self, job: ReadJob) -> None:
        request = pb.ReadRequest(offset=job.replica.offset, size=job.size, chunk_size=self.chunk_size)
        pieces: list[memoryview] = []  # get(): joined once at the end; get_into(): copied into dest as they come
        pos = 0
        async with self._limit:
            try:
                async for chunk in self.stub(job.replica.address).read(request):
                    n = len(chunk)
                    if pos + n > job.size:
                        return
                    if job.dest is None:
                        pieces.append(chunk)
                    else:
                        job.dest[pos : pos + n] = chunk
                    pos += n
            except grpc.aio.AioRpcError:
                return
        if pos == job.size:
            if job.dest is None:
                job.data = pieces[0].tobytes() if len(pieces) == 1 else b"".join(pieces)
            self._verify(job)

    async def close(self) -> None:
        self._copiers.shutdown(wait=False)
        self._data_plane.close()
        for channel in self._channels.values():
            await channel.close()
        for segment in self._segments.values():
            if segment is not None:
                segment.close()


__all__ = ["ChecksumMismatch", "NodeTransport", "ReadJob", "WriteJob"]
