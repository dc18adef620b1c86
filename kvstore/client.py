"""KV store client: batch put / get / exists / remove, pipelined across nodes.

``AsyncKVStoreClient`` runs on the caller's event loop (grpc.aio); ``KVStoreClient``
(kvstore/sync_client.py) wraps it for synchronous code. Workers name objects with
kvstore.block_key.store_key(layout, block_key) — the *_blocks helpers do that.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc

from contracts.grpc_options import STORE_GRPC_OPTIONS
from contracts.internal_auth import client_interceptors
from contracts.rpc import kvstore_pb2 as pb
from contracts.rpc import kvstore_pb2_grpc as pb_grpc
from kvstore.block_key import BlockKey, KVLayout, store_key
from kvstore.errors import ChecksumMismatch, InvalidRequest, StoreError, error_from_code
from kvstore.payload import DestinationBuffer, Payload, readable_view
from kvstore.transfer import NodeTransport, ReadJob, WriteJob


class PutStatus(enum.Enum):
    STORED = "stored"
    EXISTS = "exists"  # already committed: content-addressed objects are immutable
    IN_FLIGHT = "in_flight"  # another writer is putting the same key right now
    FAILED = "failed"


@dataclass(slots=True)
class PutResult:
    status: PutStatus
    error: StoreError | None = None

    @property
    def ok(self) -> bool:
        return self.status is not PutStatus.FAILED


def _written(key: str, replicas: list[WriteJob]) -> tuple[StoreError | None, int]:
    """The first error among an object's replica writes, else the checksum they all wrote."""
    error = next((j.error for j in replicas if j.error is not None), None)
    checksums = {j.checksum for j in replicas}
    if error is None and (len(checksums) != 1 or None in checksums):
        error = ChecksumMismatch(
            f"object {key!r}: its replicas were written with different bytes (was the source buffer modified during the put?)"
        )
    return error, replicas[0].checksum or 0


class AsyncKVStoreClient:
    def __init__(
        self,
        master_addr: str,
        *,
        replicas: int = 1,
        chunk_size: int = 4 << 20,
        batch_bytes: int = 4 << 20,
        use_shm: bool = True,
        use_data_plane: bool = True,
        hash_lane: bool | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.master_addr = master_addr
        self.replicas = replicas
        self.timeout_s = timeout_s
        self._channel = grpc.aio.insecure_channel(master_addr, options=STORE_GRPC_OPTIONS, interceptors=client_interceptors())
        self._master = pb_grpc.MasterStub(self._channel)
        self._nodes = NodeTransport(
            chunk_size=chunk_size,
            batch_bytes=batch_bytes,
            use_shm=use_shm,
            use_data_plane=use_data_plane,
            hash_lane=hash_lane,  # None: by core count (kvstore/hashed_io.py)
        )

    async def __aenter__(self) -> AsyncKVStoreClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ put

    async def put(self, items: Mapping[str, Payload], replicas: int | None = None) -> dict[str, PutResult]:
        """Store objects (two-phase: start -> write replicas -> commit); per-key outcome.

        Checksums are declared at commit, not at start: the raw-TCP data plane hashes each object
        while it sends it (the node checks the bytes that arrived against it before acknowledging),
        and the other paths hash just before they write. So no pass over the bytes comes before the
        start, and none is made twice on the data plane.
        """
        if not items:
            return {}
        views = {key: readable_view(value) for key, value in items.items()}
        n = self.replicas if replicas is None else replicas
        request = pb.PutStartRequest(items=[pb.PutStartItem(key=k, size=len(v), replicas=n) for k, v in views.items()])
        reply = await self._call(self._master.BatchPutStart, request)
        results: dict[str, PutResult] = {}
        jobs: dict[str, list[WriteJob]] = {}
        put_ids: dict[str, str] = {}
        for r in reply.results:
            if r.state == pb.PUT_STATE_STARTED:
                put_ids[r.key] = r.put_id
                jobs[r.key] = [WriteJob(replica, views[r.key]) for replica in r.replicas]
            elif r.state == pb.PUT_STATE_ALREADY_EXISTS:
                results[r.key] = PutResult(PutStatus.EXISTS)
            elif r.state == pb.PUT_STATE_IN_FLIGHT:
                results[r.key] = PutResult(PutStatus.IN_FLIGHT)
            else:
                results[r.key] = PutResult(PutStatus.FAILED, error_from_code(r.code, r.message))
        await self._nodes.write([job for group in jobs.values() for job in group])
        commit: dict[str, int] = {}  # key -> checksum
        abort = []
        for key, group in jobs.items():
            error, checksum = _written(key, group)
            if error is None:
                commit[key] = checksum
            else:
                abort.append(put_ids[key])
                results[key] = PutResult(PutStatus.FAILED, error)
        if abort:
            await self._call(self._master.BatchPutAbort, pb.PutAbortRequest(put_ids=abort))
        if commit:
            commit_request = pb.PutCommitRequest(put_ids=[put_ids[k] for k in commit], checksums=list(commit.values()))
            reply = await self._call(self._master.BatchPutCommit, commit_request)
            for key, r in zip(commit, reply.results):
                results[key] = (
                    PutResult(PutStatus.STORED) if r.ok else PutResult(PutStatus.FAILED, error_from_code(r.code, r.message))
                )
        return results

    # ------------------------------------------------------------ get

    async def get(self, keys: Sequence[str]) -> dict[str, bytes | None]:
        """Bytes of each key, None for a miss (absent, node lost, or failed checksum)."""
        if not keys:
            return {}
        asked = time.monotonic()
        locations = await self._locate(keys)
        data = await self._read(locations, [None] * len(keys), asked)
        return {key: d for key, d in zip(keys, data)}

    async def get_into(self, keys: Sequence[str], buffers: Sequence[Payload]) -> list[bool]:
        """Read each object into the caller's buffer (bytearray, numpy array, tensor); True where found.

        A buffer must hold at least the object's bytes; extra room is left untouched.
        """
        if len(keys) != len(buffers):
            raise InvalidRequest(f"get_into: {len(keys)} keys but {len(buffers)} buffers")
        if not keys:
            return []
        dests = [DestinationBuffer(b) for b in buffers]
        asked = time.monotonic()
        locations = await self._locate(keys)
        for loc, dest in zip(locations, dests):
            if loc.found and loc.size > len(dest.view):
                raise InvalidRequest(f"get_into: object {loc.key!r} has {loc.size} bytes but its buffer only {len(dest.view)}")
        data = await self._read(locations, [d.view for d in dests], asked)
        for dest, d in zip(dests, data):
            if d is not None:
                dest.finish()
        return [d is not None for d in data]

    async def _locate(self, keys: Sequence[str]) -> list[pb.ObjectLocation]:
        return list((await self._call(self._master.BatchGet, pb.KeysRequest(keys=list(keys)))).objects)

    async def _read(self, locations: list[pb.ObjectLocation], dests: list[memoryview | None], asked: float) -> list[bytes | None]:
        """Read found objects, local replica first, trying the next replica on failure.

        ``asked``: monotonic time before the locate call. The master's lease starts later, so
        each object's bytes stay valid (sealed, not reused) until at least asked + lease_ttl_s.
        """
        out: list[bytes | None] = [None] * len(locations)
        order = {
            i: sorted(loc.replicas, key=lambda r: not self._nodes.is_local(r)) for i, loc in enumerate(locations) if loc.found
        }
        attempt = 0
        pending = list(order)
        while pending:
            jobs = {
                i: ReadJob(
                    order[i][attempt], locations[i].size, locations[i].checksum, dests[i], asked + locations[i].lease_ttl_s
                )
                for i in pending
            }
            await self._nodes.read(list(jobs.values()))
            for i, job in jobs.items():
                if job.ok:
                    out[i] = job.data if job.data is not None else b""
            attempt += 1
            pending = [i for i, job in jobs.items() if not job.ok and attempt < len(order[i])]
        return out

    # ------------------------------------------------------------ metadata

    async def exists(self, keys: Sequence[str]) -> list[bool]:
        """Whether each key is committed; does not take or extend a lease."""
        if not keys:
            return []
        return list((await self._call(self._master.BatchExists, pb.KeysRequest(keys=list(keys)))).exists)

    async def wait_committed(self, keys: Sequence[str], timeout_s: float) -> list[bool]:
        """Whether each key is committed, waiting up to ``timeout_s`` for all of them (the master
        answers at the commit: no polling). Takes no lease."""
        if not keys:
            return []
        request = pb.WaitCommittedRequest(keys=list(keys), timeout_s=timeout_s)
        try:
            reply = await self._master.WaitCommitted(request, timeout=timeout_s + self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise error_from_code(exc.code().value[0], f"master {self.master_addr}: {exc.code().name}: {exc.details()}") from exc
        return list(reply.exists)

    async def remove(self, keys: Sequence[str]) -> list[bool]:
        """Remove objects; True where removed, False where the key did not exist."""
        return await self._key_call(self._master.BatchRemove, keys)

    async def pin(self, keys: Sequence[str]) -> list[bool]:
        """Exempt objects from eviction (until unpin or remove); False for unknown keys."""
        return await self._key_call(self._master.BatchPin, keys)

    async def unpin(self, keys: Sequence[str]) -> list[bool]:
        return await self._key_call(self._master.BatchUnpin, keys)

    async def stats(self) -> pb.StatsReply:
        return await self._call(self._master.Stats, pb.StatsRequest())

    # ------------------------------------------------------------ KV blocks (worker import / export path)

    async def put_blocks(self, layout: KVLayout, blocks: Mapping[BlockKey, Payload]) -> dict[BlockKey, PutResult]:
        names = {store_key(layout, k): k for k in blocks}
        results = await self.put({name: blocks[k] for name, k in names.items()})
        return {names[name]: r for name, r in results.items()}

    async def get_blocks(self, layout: KVLayout, keys: Sequence[BlockKey]) -> list[bytes | None]:
        names = [store_key(layout, k) for k in keys]
        found = await self.get(names)
        return [found[n] for n in names]

    async def get_blocks_into(self, layout: KVLayout, keys: Sequence[BlockKey], buffers: Sequence[Payload]) -> list[bool]:
        return await self.get_into([store_key(layout, k) for k in keys], buffers)

    async def blocks_exist(self, layout: KVLayout, keys: Sequence[BlockKey]) -> list[bool]:
        return await self.exists([store_key(layout, k) for k in keys])

    async def wait_for_blocks(self, layout: KVLayout, keys: Sequence[BlockKey], timeout_s: float) -> list[bool]:
        return await self.wait_committed([store_key(layout, k) for k in keys], timeout_s)

    # ------------------------------------------------------------ plumbing

    async def _key_call(self, method, keys: Sequence[str]) -> list[bool]:
        if not keys:
            return []
        reply = await self._call(method, pb.KeysRequest(keys=list(keys)))
        return [r.ok for r in reply.results]

    async def _call(self, method, request):
        try:
            return await method(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise error_from_code(exc.code().value[0], f"master {self.master_addr}: {exc.code().name}: {exc.details()}") from exc

    async def close(self) -> None:
        await self._nodes.close()
        await self._channel.close()
