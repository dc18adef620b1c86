"""KV events: who holds which blocks (DESIGN.md), in vLLM's KV-event format.

Wire format on a ZMQ PUB socket, one message per batch:
    [topic, seq (8-byte big-endian), msgpack([timestamp, [event, ...]])]
Events are tagged arrays (msgspec ``array_like`` + ``tag``, as vLLM's ``KVCacheEvent``):
    ["BlockStored", [key, ...], parent | None, [token_id, ...], block_size, lora_id | None, medium]
    ["BlockRemoved", [key, ...], medium]
    ["AllBlocksCleared"]
A subscriber that sees a gap in ``seq`` asks the publisher's snapshot socket
(ZMQ REP, kvstore/event_publisher.py) for the full state: msgpack([seq, {medium: [key, ...]}]); every
event with a sequence number above ``seq`` then applies on top of it.
Events are built by keyword (``kw_only``): the field order is the wire order, not an API.
"""

from __future__ import annotations

import struct
import time

import msgspec

BlockKey = bytes  # 16 bytes: kvstore/block_key.py


class _Event(msgspec.Struct, array_like=True, tag=True, kw_only=True, forbid_unknown_fields=True):
    pass


class BlockStored(_Event, kw_only=True):
    keys: list[BlockKey]
    parent: BlockKey | None = None  # the key before keys[0]; None when unknown or the first block
    token_ids: list[int] = msgspec.field(default_factory=list)
    block_size: int = 16
    lora_id: int | None = None  # vLLM's field; always None here
    medium: str  # "gpu" | "cpu" | "store"


class BlockRemoved(_Event, kw_only=True):
    keys: list[BlockKey]
    medium: str


class AllBlocksCleared(_Event):
    pass


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


class _Payload(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    timestamp: float
    events: list[KVEvent]


class EventBatch(msgspec.Struct):
    topic: str
    seq: int
    timestamp: float
    events: list[KVEvent]


class Snapshot(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """A publisher's whole state, valid as of event ``seq``."""

    seq: int
    keys: dict[str, list[BlockKey]]  # medium -> keys


_payload = msgspec.msgpack.Decoder(_Payload)
_snapshot = msgspec.msgpack.Decoder(Snapshot)


def encode_batch(topic: str, seq: int, events: list[KVEvent], timestamp: float | None = None) -> list[bytes]:
    ts = time.time() if timestamp is None else timestamp
    return [topic.encode(), struct.pack(">Q", seq), msgspec.msgpack.encode(_Payload(ts, events))]


def decode_batch(frames: list[bytes]) -> EventBatch:
    """ValueError (msgspec.DecodeError is one) for a message of another shape."""
    if len(frames) != 3 or len(frames[1]) != 8:
        raise ValueError(f"malformed KV event message: {len(frames)} frames")
    payload = _payload.decode(frames[2])
    return EventBatch(bytes(frames[0]).decode(), struct.unpack(">Q", frames[1])[0], payload.timestamp, payload.events)


def encode_snapshot(seq: int, keys: dict[str, list[BlockKey]]) -> bytes:
    return msgspec.msgpack.encode(Snapshot(seq, keys))


def decode_snapshot(payload: bytes) -> Snapshot:
    return _snapshot.decode(payload)
