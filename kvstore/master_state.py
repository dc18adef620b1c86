"""The master's state: nodes, objects, in-flight puts, leases, eviction.

Pure bookkeeping with no I/O, driven by one event loop (so no locks). Time comes
from ``clock`` so the rules read plainly: a lease, a put and a heartbeat each have
a deadline, and ``tick()`` enforces all of them.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from contracts.kv_events import BlockRemoved, BlockStored, KVEvent
from kvstore.allocator import OutOfSpace, SegmentAllocator
from kvstore.errors import InvalidRequest, NoStorageNodes, ObjectNotFound, ObjectTooLarge, PutExpired, StoreFull
from kvstore.master_config import MasterConfig

MEDIUM = "store"


@dataclass(slots=True)
class NodeInfo:
    node_id: str
    address: str
    hostname: str
    boot_id: str
    shm_name: str
    allocator: SegmentAllocator
    last_heartbeat: float
    data_address: str = ""  # raw-TCP data plane (kvstore/data_plane.py), "" if none


@dataclass(slots=True)
class Placement:
    node_id: str
    offset: int


@dataclass(slots=True)
class StoredObject:
    key: str
    size: int
    checksum: int
    placements: list[Placement]
    lease_until: float = 0.0
    pinned: bool = False


@dataclass(slots=True)
class PendingPut:
    put_id: str
    key: str
    size: int
    checksum: int
    placements: list[Placement]
    deadline: float


@dataclass(slots=True)
class PutStartOutcome:
    key: str
    state: str  # "started" | "exists" | "in_flight"
    put: PendingPut | None = None


def block_key_of(name: str) -> bytes | None:
    """The 16-byte block key at the end of a store object name, if it has one."""
    suffix = name.rsplit("/", 1)[-1]
    if len(suffix) != 32:
        return None
    try:
        return bytes.fromhex(suffix)
    except ValueError:
        return None


@dataclass(slots=True)
class MasterState:
    config: MasterConfig
    emit: Callable[[list[KVEvent]], None] = lambda events: None
    clock: Callable[[], float] = time.monotonic
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    objects: OrderedDict[str, StoredObject] = field(default_factory=OrderedDict)  # LRU order: oldest first
    pending: dict[str, PendingPut] = field(default_factory=dict)  # put_id -> put
    pending_keys: dict[str, str] = field(default_factory=dict)  # key -> put_id
    deferred_frees: list[tuple[float, str, int]] = field(default_factory=list)  # (free_at, node_id, offset)
    evictions: int = 0

    # ------------------------------------------------------------ nodes

    def register_node(
        self, address: str, capacity: int, hostname: str, boot_id: str, shm_name: str, data_address: str = ""
    ) -> str:
        if not address or capacity <= 0:
            raise InvalidRequest(f"node registration needs an address and a positive capacity, got {address!r}, {capacity}")
        for old in [n.node_id for n in self.nodes.values() if n.address == address]:
            self.drop_node(old)  # a restarted node lost its memory
        node_id = uuid.uuid4().hex[:12]
        self.nodes[node_id] = NodeInfo(
            node_id, address, hostname, boot_id, shm_name, SegmentAllocator(capacity), self.clock(), data_address
        )
        return node_id

    def heartbeat(self, node_id: str) -> bool:
        node = self.nodes.get(node_id)
        if node is None:
            return False
        node.last_heartbeat = self.clock()
        return True

    def drop_node(self, node_id: str) -> None:
        """Forget a node and every replica on it; objects left without one are gone."""
        if self.nodes.pop(node_id, None) is None:
            return
        removed: list[str] = []
        for key, obj in list(self.objects.items()):
            obj.placements = [p for p in obj.placements if p.node_id != node_id]
            if not obj.placements:
                del self.objects[key]
                removed.append(key)
        for put in [p for p in self.pending.values() if any(pl.node_id == node_id for pl in p.placements)]:
            self._drop_pending(put)
        self.deferred_frees = [d for d in self.deferred_frees if d[1] != node_id]
        self._emit_removed(removed)

    # ------------------------------------------------------------ puts

    def put_start(self, key: str, size: int, checksum: int, replicas: int) -> PutStartOutcome:
        self._check_key(key)
        if size <= 0:
            raise InvalidRequest(f"object {key!r}: size must be positive, got {size}")
        if key in self.objects:
            return PutStartOutcome(key, "exists")
        if key in self.pending_keys:
            return PutStartOutcome(key, "in_flight")
        if replicas < 1:
            raise InvalidRequest(f"object {key!r}: replicas must be at least 1, got {replicas}")
        if not self.nodes:
            raise NoStorageNodes("no storage node is registered with the master")
        if replicas > len(self.nodes):
            raise InvalidRequest(f"object {key!r}: {replicas} replicas requested but only {len(self.nodes)} nodes are live")
        largest = max(n.allocator.capacity for n in self.nodes.values())
        if size > largest:
            raise ObjectTooLarge(f"object {key!r} of {size} bytes exceeds the largest node capacity of {largest} bytes")
        placements: list[Placement] = []
        try:
            for node in sorted(self.nodes.values(), key=lambda n: n.allocator.used):
                if len(placements) == replicas:
                    break
                offset = self._allocate(node, size)
                if offset is not None:
                    placements.append(Placement(node.node_id, offset))
            if len(placements) < replicas:
                raise StoreFull(
                    f"object {key!r} of {size} bytes: no room on {replicas} node(s) even after eviction "
                    "(the rest is leased, pinned or being written)"
                )
        except StoreFull:
            for p in placements:
                self.nodes[p.node_id].allocator.free(p.offset)
            raise
        put = PendingPut(uuid.uuid4().hex, key, size, checksum, placements, self.clock() + self.config.put_timeout_s)
        self.pending[put.put_id] = put
        self.pending_keys[key] = put.put_id
        return PutStartOutcome(key, "started", put)

    def put_commit(self, put_id: str, checksum: int | None = None) -> StoredObject:
        """Make a put's object visible; ``checksum``, when given, is its xxh3_64 declared now rather than at start."""
        put = self.pending.get(put_id)
        if put is None:
            raise PutExpired(f"put {put_id!r} is unknown: aborted, timed out, or a replica's node was lost")
        del self.pending[put_id]
        del self.pending_keys[put.key]
        obj = StoredObject(put.key, put.size, put.checksum if checksum is None else checksum, put.placements)
        self.objects[put.key] = obj
        bk = block_key_of(put.key)
        if bk is not None:
            self.emit([BlockStored(keys=[bk], medium=MEDIUM)])
        return obj

    def put_abort(self, put_id: str) -> None:
        put = self.pending.get(put_id)
        if put is None:
            raise PutExpired(f"put {put_id!r} is unknown: already committed, aborted or timed out")
        self._drop_pending(put)

    # ------------------------------------------------------------ reads

    def get(self, key: str) -> StoredObject | None:
        """Locate a committed object and lease it: its bytes stay put for lease_ttl_s."""
        self._check_key(key)
        obj = self.objects.get(key)
        if obj is None:
            return None
        obj.lease_until = max(obj.lease_until, self.clock() + self.config.lease_ttl_s)
        self.objects.move_to_end(key)
        return obj

    def exists(self, key: str) -> bool:
        self._check_key(key)
        return key in self.objects  # no lease, no LRU touch

    def remove(self, key: str) -> None:
        self._check_key(key)
        obj = self.objects.pop(key, None)
        if obj is None:
            raise ObjectNotFound(f"object {key!r} does not exist")
        self._release(obj)
        self._emit_removed([key])

    def set_pinned(self, key: str, pinned: bool) -> None:
        self._check_key(key)
        obj = self.objects.get(key)
        if obj is None:
            raise ObjectNotFound(f"object {key!r} does not exist")
        obj.pinned = pinned

    # ------------------------------------------------------------ time-driven rules

    def tick(self) -> None:
        now = self.clock()
        for node in [n for n in self.nodes.values() if now - n.last_heartbeat > self.config.heartbeat_timeout_s]:
            self.drop_node(node.node_id)
        for put in [p for p in self.pending.values() if p.deadline < now]:
            self._drop_pending(put)
        due = [d for d in self.deferred_frees if d[0] <= now]
        if due:
            self.deferred_frees = [d for d in self.deferred_frees if d[0] > now]
            for _, node_id, offset in due:
                self.nodes[node_id].allocator.free(offset)
        for node in self.nodes.values():
            cap = node.allocator.capacity
            if node.allocator.used > self.config.high_watermark * cap:
                self._evict(node, partial(self._at_low_watermark, node))

    def snapshot(self) -> dict[str, list[bytes]]:
        keys = (block_key_of(k) for k in list(self.objects))
        return {MEDIUM: [k for k in keys if k is not None]}

    # ------------------------------------------------------------ internals

    def _check_key(self, key: str) -> None:
        if not key or len(key) > self.config.max_key_length:
            raise InvalidRequest(f"key must be 1..{self.config.max_key_length} characters, got {len(key)}")

    def _allocate(self, node: NodeInfo, size: int) -> int | None:
        try:
            return node.allocator.allocate(size)
        except OutOfSpace:
            pass
        self._evict(node, lambda: node.allocator.largest_free >= size)
        try:
            return node.allocator.allocate(size)
        except OutOfSpace:
            return None

    def _at_low_watermark(self, node: NodeInfo) -> bool:
        return node.allocator.used <= self.config.low_watermark * node.allocator.capacity

    def _evict(self, node: NodeInfo, done: Callable[[], bool]) -> None:
        """Evict least recently used objects with a replica on ``node`` until ``done``."""
        now = self.clock()
        victims: list[str] = []
        for key, obj in list(self.objects.items()):
            if done():
                break
            if obj.pinned or obj.lease_until > now or not any(p.node_id == node.node_id for p in obj.placements):
                continue
            del self.objects[key]
            self._release(obj)
            victims.append(key)
        self.evictions += len(victims)
        self._emit_removed(victims)

    def _release(self, obj: StoredObject) -> None:
        """Free an object's space; a leased one keeps its bytes until the lease ends."""
        for p in obj.placements:
            if p.node_id not in self.nodes:
                continue
            if obj.lease_until > self.clock():
                self.deferred_frees.append((obj.lease_until, p.node_id, p.offset))
            else:
                self.nodes[p.node_id].allocator.free(p.offset)

    def _drop_pending(self, put: PendingPut) -> None:
        self.pending.pop(put.put_id, None)
        self.pending_keys.pop(put.key, None)
        for p in put.placements:
            node = self.nodes.get(p.node_id)
            if node is not None:
                node.allocator.free(p.offset)

    def _emit_removed(self, keys: list[str]) -> None:
        block_keys = [bk for bk in (block_key_of(k) for k in keys) if bk is not None]
        if block_keys:
            self.emit([BlockRemoved(keys=block_keys, medium=MEDIUM)])
