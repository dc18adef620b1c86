"""KV events: who holds which blocks (DESIGN.md), shaped after vLLM's format.

Wire format on a ZMQ PUB socket, one message per batch:
    [topic, seq (8-byte big-endian), msgpack([timestamp, [event, ...]])]
Events are tagged arrays:
    ["BlockStored", [key, ...], parent | None, [token_id, ...], block_size, lora_id | None, medium]
    ["BlockRemoved", [key, ...], medium]
    ["AllBlocksCleared"]
A subscriber that sees a gap in ``seq`` asks the publisher's snapshot socket
(ZMQ REP) for the full state: msgpack([seq, {medium: [key, ...]}]); every event
with a sequence number above ``seq`` then applies on top of it.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack

from kvstore.block_key import BlockKey
from splitserve.internal_auth import secure_zmq_client, secure_zmq_server

SNAPSHOT_REQUEST = b"snapshot"


@dataclass(slots=True)
class BlockStored:
    keys: list[BlockKey]
    parent: BlockKey | None
    medium: str
    token_ids: list[int] = field(default_factory=list)
    block_size: int = 16


@dataclass(slots=True)
class BlockRemoved:
    keys: list[BlockKey]
    medium: str


@dataclass(slots=True)
class AllBlocksCleared:
    pass


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(slots=True)
class EventBatch:
    topic: str
    seq: int
    timestamp: float
    events: list[KVEvent]


def encode_event(event: KVEvent) -> list:
    if isinstance(event, BlockStored):
        return ["BlockStored", event.keys, event.parent, event.token_ids, event.block_size, None, event.medium]
    if isinstance(event, BlockRemoved):
        return ["BlockRemoved", event.keys, event.medium]
    if isinstance(event, AllBlocksCleared):
        return ["AllBlocksCleared"]
    raise TypeError(f"not a KV event: {event!r}")


def decode_event(raw: list) -> KVEvent:
    tag = raw[0]
    if tag == "BlockStored":
        _, keys, parent, token_ids, block_size, _lora, medium = raw
        return BlockStored(list(keys), parent, medium, list(token_ids), block_size)
    if tag == "BlockRemoved":
        return BlockRemoved(list(raw[1]), raw[2])
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    raise ValueError(f"unknown KV event tag {tag!r}")


def encode_batch(topic: str, seq: int, events: list[KVEvent], timestamp: float | None = None) -> list[bytes]:
    ts = time.time() if timestamp is None else timestamp
    payload = msgpack.packb([ts, [encode_event(e) for e in events]], use_bin_type=True)
    return [topic.encode(), struct.pack(">Q", seq), payload]


def decode_batch(frames: list[bytes]) -> EventBatch:
    if len(frames) != 3 or len(frames[1]) != 8:
        raise ValueError(f"malformed KV event message: {len(frames)} frames")
    ts, raw_events = msgpack.unpackb(frames[2], raw=False)
    return EventBatch(frames[0].decode(), struct.unpack(">Q", frames[1])[0], ts, [decode_event(e) for e in raw_events])


def decode_snapshot(payload: bytes) -> tuple[int, dict[str, list[BlockKey]]]:
    seq, by_medium = msgpack.unpackb(payload, raw=False)
    return seq, {m: list(keys) for m, keys in by_medium.items()}


class KVEventPublisher:
    """PUB socket for event batches plus a REP socket that serves snapshots.

    ``snapshot`` returns the publisher's full state {medium: [keys]}; it is called
    under the same lock as ``publish`` so that a snapshot and its sequence number
    agree. Thread-safe: callers may publish from any thread.
    """

    def __init__(
        self,
        pub_endpoint: str,
        snapshot_endpoint: str,
        topic: str,
        snapshot: Callable[[], dict[str, list[BlockKey]]],
    ) -> None:
        import zmq  # imported here so that the event records need no ZMQ (engine-only installs)

        self.topic = topic
        self._snapshot = snapshot
        self._ctx = zmq.Context.instance()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        secure_zmq_server(self._pub)
        self._pub.bind(pub_endpoint)
        self.pub_endpoint = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._rep = self._ctx.socket(zmq.REP)
        self._rep.setsockopt(zmq.LINGER, 0)
        secure_zmq_server(self._rep)
        self._rep.bind(snapshot_endpoint)
        self.snapshot_endpoint = self._rep.getsockopt_string(zmq.LAST_ENDPOINT)
        self._lock = threading.Lock()
        self._seq = 0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve_snapshots, name=f"kv-snapshot-{topic}", daemon=True)
        self._thread.start()

    @property
    def seq(self) -> int:
        return self._seq

    def publish(self, events: list[KVEvent]) -> None:
        if not events or self._closed.is_set():
            return
        with self._lock:
            self._seq += 1
            self._pub.send_multipart(encode_batch(self.topic, self._seq, events))

    def _serve_snapshots(self) -> None:
        import zmq

        poller = zmq.Poller()
        poller.register(self._rep, zmq.POLLIN)
        while not self._closed.is_set():
            if not poller.poll(100):
                continue
            try:
                self._rep.recv()
                with self._lock:
                    payload = msgpack.packb([self._seq, self._snapshot()], use_bin_type=True)
                self._rep.send(payload)
            except zmq.ZMQError:
                if self._closed.is_set():
                    return
                raise

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self._pub.close()
        self._rep.close()


def request_snapshot(endpoint: str, timeout_s: float = 2.0) -> tuple[int, dict[str, list[BlockKey]]]:
    """Ask a publisher's snapshot socket for its full state; raises TimeoutError."""
    import zmq

    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
    secure_zmq_client(sock)
    sock.connect(endpoint)
    try:
        sock.send(SNAPSHOT_REQUEST)
        return decode_snapshot(sock.recv())
    except zmq.Again as exc:
        raise TimeoutError(f"no KV snapshot from {endpoint} within {timeout_s}s") from exc
    finally:
        sock.close()
