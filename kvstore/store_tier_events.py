"""KV events for a store that publishes none (Mooncake): the writer announces its writes.

Our store's master publishes BlockStored / BlockRemoved for the "store" medium itself.
Mooncake's master does not speak our event format, so ``AnnouncingStore`` wraps a
backend on the writer's side (the prefill worker's connector): each block it stored
(or found already stored) is announced as BlockStored(medium "store") on its own
KVEventPublisher, and the set it announced answers snapshot requests.

What a router learns this way is a hint, not the truth: Mooncake evicts without
telling anyone, and another writer's blocks are announced by that writer. So a prefill
worker checks ``blocks_exist`` before it relies on store blocks (kv_transfer's
leading_hits does), and a miss only means recompute. The hint heals itself where it
can: a block this writer announced and then sees missing (exists or a read) is
announced as BlockRemoved, and the announced set is bounded (oldest dropped and
announced removed), so the router's index does not grow without limit.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from contracts.kv_events import BlockRemoved, BlockStored, KVEvent
from kvstore.backend import StoreBackend
from kvstore.block_key import BlockKey, KVLayout
from kvstore.client import PutResult, PutStatus
from kvstore.event_publisher import KVEventPublisher
from kvstore.payload import Payload

MEDIUM = "store"  # the medium our store's master announces too (kvstore/master_state.py)


class AnnouncingStore:
    """A StoreBackend whose successful writes are published as KV events; thread-safe."""

    def __init__(
        self,
        backend: StoreBackend,
        pub_endpoint: str = "",
        snapshot_endpoint: str = "",
        topic: str = "kvstore",
        max_announced: int = 200_000,
        publisher: KVEventPublisher | None = None,
    ) -> None:
        """Announce on a publisher of its own (``pub_endpoint`` / ``snapshot_endpoint``), or on
        the caller's ``publisher`` (a worker's own event stream; its snapshot function should
        add ``snapshot()``'s "store" entry to the worker's own)."""
        self.backend = backend
        self.max_announced = max_announced
        self._announced: OrderedDict[BlockKey, None] = OrderedDict()  # oldest first
        self._lock = threading.Lock()
        self._own_publisher = publisher is None
        self.publisher = publisher or KVEventPublisher(pub_endpoint, snapshot_endpoint, topic, self.snapshot)

    @property
    def events_endpoint(self) -> str:
        return self.publisher.pub_endpoint

    @property
    def snapshot_endpoint(self) -> str:
        return self.publisher.snapshot_endpoint

    def blocks_exist(self, layout: KVLayout, keys: Sequence[BlockKey]) -> list[bool]:
        found = self.backend.blocks_exist(layout, keys)
        self._forget([k for k, ok in zip(keys, found) if not ok])
        return found

    def wait_for_blocks(self, layout: KVLayout, keys: Sequence[BlockKey], timeout_s: float) -> list[bool]:
        return self.backend.wait_for_blocks(layout, keys, timeout_s)  # the writer of these blocks announces them

    def get_blocks_into(self, layout: KVLayout, keys: Sequence[BlockKey], buffers: Sequence[Payload]) -> list[bool]:
        found = self.backend.get_blocks_into(layout, keys, buffers)
        self._forget([k for k, ok in zip(keys, found) if not ok])
        return found

    def remove_blocks(self, layout: KVLayout, keys: Sequence[BlockKey]) -> list[bool]:
        removed = self.backend.remove_blocks(layout, keys)
        self._forget(list(keys))
        return removed

    def put_blocks(self, layout: KVLayout, blocks: Mapping[BlockKey, Payload]) -> dict[BlockKey, PutResult]:
        results = self.backend.put_blocks(layout, blocks)
        stored = [k for k, r in results.items() if r.status in (PutStatus.STORED, PutStatus.EXISTS)]
        events: list[KVEvent] = []
        with self._lock:
            new = [k for k in stored if k not in self._announced]
            for k in stored:
                self._announced[k] = None
                self._announced.move_to_end(k)
            dropped = []
            while len(self._announced) > self.max_announced:
                dropped.append(self._announced.popitem(last=False)[0])
            if new:
                events.append(BlockStored(keys=new, block_size=layout.block_size, medium=MEDIUM))
            if dropped:
                events.append(BlockRemoved(keys=dropped, medium=MEDIUM))
        # Outside our lock: the publisher's snapshot thread takes its lock, then ours (_snapshot).
        # Events and the set may then disagree for a moment; both are idempotent hints.
        self.publisher.publish(events)
        return results

    def close(self) -> None:
        if self._own_publisher:
            self.publisher.close()
        self.backend.close()

    def __enter__(self) -> AnnouncingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _forget(self, missing: list[BlockKey]) -> None:
        if not missing:
            return
        with self._lock:
            gone = [k for k in missing if k in self._announced]
            for k in gone:
                del self._announced[k]
        if gone:
            self.publisher.publish([BlockRemoved(keys=gone, medium=MEDIUM)])

    def snapshot(self) -> dict[str, list[BlockKey]]:
        # Called by the publisher under its own lock; our lock keeps the set stable while copied.
        with self._lock:
            return {MEDIUM: list(self._announced)}
