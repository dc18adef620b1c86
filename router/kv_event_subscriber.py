"""Subscriber that keeps the prefix index exact from every publisher's KV events.

One ZMQ SUB socket per publisher endpoint, all served by one thread. Per publisher:
1. connect the SUB socket, then fetch a snapshot (seq S) and install it;
2. events with seq <= S are already in the snapshot and are skipped;
3. seq == last + 1 applies; a jump (messages dropped while disconnected, or the HWM
   overflowed) or a restart (seq going back) triggers a new snapshot.
A snapshot that fails (publisher down) is retried with a back-off; until then the
publisher's old state stays in the index so that a brief hiccup does not empty it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from contracts.internal_auth import secure_zmq_client
from contracts.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, EventBatch, decode_batch
from kvstore.event_publisher import request_snapshot
from kvstore.store_tier_events import MEDIUM as STORE_MEDIUM
from router.prefix_index import STORE_PUBLISHER, PrefixIndex

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Publisher:
    publisher_id: str
    events_endpoint: str
    snapshot_endpoint: str
    socket: zmq.Socket
    last_seq: int | None = None  # None: not synchronised
    snapshot_seq: int = 0
    draining: bool = False  # just synced: stale queued messages may still arrive
    retry_at: float = 0.0
    resyncs: int = 0
    stats: dict[str, int] = field(default_factory=lambda: {"batches": 0, "gaps": 0})


class KVEventSubscriber:
    """Applies KV events of many publishers to one PrefixIndex from a background thread."""

    def __init__(
        self,
        index: PrefixIndex,
        snapshot_timeout_s: float = 1.0,
        retry_interval_s: float = 1.0,
        on_resync: Callable[[str], None] | None = None,
    ) -> None:
        self.index = index
        self._snapshot_timeout_s = snapshot_timeout_s
        self._retry_interval_s = retry_interval_s
        self._on_resync = on_resync
        self._ctx: zmq.Context = zmq.Context.instance()
        self._publishers: dict[str, _Publisher] = {}
        self._commands: list[tuple[str, str, str, str]] = []  # (op, id, events, snapshot)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._synced = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="kv-event-subscriber", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for pub in self._publishers.values():
            pub.socket.close(linger=0)
        self._publishers.clear()

    def add_publisher(self, publisher_id: str, events_endpoint: str, snapshot_endpoint: str) -> None:
        """Follow a publisher (idempotent; a changed endpoint reconnects)."""
        with self._lock:
            self._commands.append(("add", publisher_id, events_endpoint, snapshot_endpoint))

    def remove_publisher(self, publisher_id: str) -> None:
        """Stop following a publisher that left discovery and forget its blocks."""
        with self._lock:
            self._commands.append(("remove", publisher_id, "", ""))

    def is_synced(self, publisher_id: str) -> bool:
        pub = self._publishers.get(publisher_id)
        return pub is not None and pub.last_seq is not None

    def last_seq(self, publisher_id: str) -> int | None:
        pub = self._publishers.get(publisher_id)
        return None if pub is None else pub.last_seq

    def resync_count(self, publisher_id: str) -> int:
        pub = self._publishers.get(publisher_id)
        return 0 if pub is None else pub.resyncs

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
        """Block until ``predicate()`` holds after some batch was applied (for tests and startup)."""
        deadline = time.monotonic() + timeout_s
        with self._synced:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._synced.wait(min(left, 0.05))
        return True

    # -- subscriber thread ------------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        while not self._closed.is_set():
            self._apply_commands(poller)
            now = time.monotonic()
            for pub in list(self._publishers.values()):
                if pub.last_seq is None and now >= pub.retry_at:
                    self._resync(pub)
            ready = dict(poller.poll(50)) if self._publishers else {}
            if not self._publishers:
                time.sleep(0.05)
            for pub in list(self._publishers.values()):
                if pub.socket in ready:
                    self._drain(pub)

    def _apply_commands(self, poller: zmq.Poller) -> None:
        with self._lock:
            commands, self._commands = self._commands, []
        for op, publisher_id, events_ep, snapshot_ep in commands:
            old = self._publishers.get(publisher_id)
            if op == "add" and old and (old.events_endpoint, old.snapshot_endpoint) == (events_ep, snapshot_ep):
                continue
            if old is not None:
                poller.unregister(old.socket)
                old.socket.close(linger=0)
                del self._publishers[publisher_id]
            if op == "remove":
                self.index.clear(publisher_id)
                continue
            sock = self._ctx.socket(zmq.SUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            secure_zmq_client(sock)
            sock.connect(events_ep)
            poller.register(sock, zmq.POLLIN)
            # The first snapshot waits a moment so that the subscription reaches the
            # publisher first (slow joiner); anything missed later shows up as a gap.
            self._publishers[publisher_id] = _Publisher(
                publisher_id, events_ep, snapshot_ep, sock, retry_at=time.monotonic() + 0.05
            )

    def _resync(self, pub: _Publisher) -> None:
        try:
            seq, state = request_snapshot(pub.snapshot_endpoint, self._snapshot_timeout_s)
        except (TimeoutError, zmq.ZMQError) as exc:
            log.warning("KV snapshot from %s failed (%s); retrying", pub.publisher_id, exc)
            pub.retry_at = time.monotonic() + self._retry_interval_s
            return
        if pub.publisher_id != STORE_PUBLISHER and STORE_MEDIUM in state:
            # a writer's store-tier announcements (Mooncake): a hint added to the store tier
            self.index.store(STORE_PUBLISHER, state.pop(STORE_MEDIUM), STORE_MEDIUM)
        self.index.replace(pub.publisher_id, state)
        pub.last_seq = pub.snapshot_seq = seq
        pub.draining = True
        pub.resyncs += 1
        if self._on_resync:
            self._on_resync(pub.publisher_id)
        self._notify()

    def _drain(self, pub: _Publisher) -> None:
        while True:
            try:
                frames = pub.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                batch = decode_batch(frames)
            except (ValueError, TypeError) as exc:
                log.warning("malformed KV event from %s: %s", pub.publisher_id, exc)
                continue
            self._on_batch(pub, batch)
        self._notify()

    def _on_batch(self, pub: _Publisher, batch: EventBatch) -> None:
        if pub.last_seq is None:
            return  # waiting for a snapshot that will include this batch or a later one
        if batch.seq <= pub.last_seq:
            if pub.draining and batch.seq <= pub.snapshot_seq:
                return  # already part of the snapshot
            log.info("KV event publisher %s restarted (seq %d after %d)", pub.publisher_id, batch.seq, pub.last_seq)
            self._mark_unsynced(pub)
            return
        if batch.seq != pub.last_seq + 1:
            log.info("KV event gap from %s: %d -> %d; resynchronising", pub.publisher_id, pub.last_seq, batch.seq)
            self._mark_unsynced(pub)
            return
        self._apply(pub.publisher_id, batch)
        pub.last_seq = batch.seq
        pub.draining = False
        pub.stats["batches"] += 1

    def _mark_unsynced(self, pub: _Publisher) -> None:
        pub.stats["gaps"] += 1
        pub.last_seq = None
        pub.retry_at = 0.0

    def _apply(self, publisher_id: str, batch: EventBatch) -> None:
        for event in batch.events:
            if isinstance(event, BlockStored):
                self.index.store(_holder(publisher_id, event.medium), event.keys, event.medium)
            elif isinstance(event, BlockRemoved):
                self.index.remove(_holder(publisher_id, event.medium), event.keys, event.medium)
            elif isinstance(event, AllBlocksCleared):
                self.index.clear(publisher_id)

    def _notify(self) -> None:
        with self._synced:
            self._synced.notify_all()


def _holder(publisher_id: str, medium: str) -> str:
    """Where an event's blocks are filed: store-tier blocks under the store, whoever announced them."""
    return STORE_PUBLISHER if medium == STORE_MEDIUM else publisher_id
