"""Messages between a worker's gRPC server process and its engine-core process.

Two ZMQ PUSH/PULL pipes (server -> core, core -> server); every message is one
msgpack array whose first element names its kind. KV bytes never cross this pipe:
the core moves KV itself (kv_transfer/: the store, or a direct pull between engines).

server -> core
    ["add", request_id, prompt, params, cache_salt, prefill_only]
    ["import", request_id, prompt, params, cache_salt, handle, first_token_id, kv_wait_s]
    ["abort", request_id]
    ["load", token]
    ["shutdown"]
core -> server
    ["ready", info]                          # model loaded and warmed up
    ["out", [output, ...], step_s, batch]     # outputs of one engine step
    ["prefilled", request_id, prefill]       # prefill_only request: first token sampled, KVHandle
                                             # (store writes may still be in flight: handle.blocks_pending)
    ["error", request_id, kind, message]     # the request failed; kind: see ErrorKind
    ["load", token, load]
    ["transfer", transport, direction, bytes, seconds]  # one KV batch moved ("store" | "direct", "in" | "out")
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack


class ErrorKind(str, enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"  # unknown KV handle / blocks evicted from the store
    UNAVAILABLE = "unavailable"  # store or engine trouble; retry elsewhere
    INTERNAL = "internal"
    CANCELLED = "cancelled"  # aborted through the Abort RPC


@dataclass(slots=True)
class PrefillResult:
    first_token_id: int
    first_logprob: list | None  # [token_id, logprob, [[id, lp], ...]] or None
    handle: dict  # kv_transfer.handle.KVHandle.to_dict()
    num_cached_tokens: int
    num_computed_tokens: int
    finish_reason: str | None


@dataclass(slots=True)
class CoreInfo:
    worker_id: str
    model_fingerprint: str
    dtype: str
    block_size: int
    tp_size: int
    total_blocks: int
    kv_events_endpoint: str
    kv_snapshot_endpoint: str


def pack(*parts: Any) -> bytes:
    return msgpack.packb(list(parts), use_bin_type=True)


def unpack(data: bytes) -> list:
    return msgpack.unpackb(data, raw=False)


def record(obj: Any) -> dict:
    return asdict(obj)


def prefill_from(d: dict) -> PrefillResult:
    return PrefillResult(**d)
