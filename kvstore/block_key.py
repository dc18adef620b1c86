"""The block-key scheme shared by engine, router and kvstore (DESIGN.md).

key(block 0 parent) = xxh3_128(fingerprint_utf8 || 0x00 || cache_salt_utf8)
key(block i)        = xxh3_128(key(block i-1) || token_ids_i as little-endian int32)

Only full blocks have keys. Keys are 16-byte digests; they are stable across
processes and machines (never Python's ``hash``). The 0x00 separator keeps
(fingerprint, salt) pairs such as ("ab", "c") and ("a", "bc") apart.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xxhash

BlockKey = bytes  # 16 bytes
DEFAULT_BLOCK_SIZE = 16


def root_key(model_fingerprint: str, cache_salt: str = "") -> BlockKey:
    """Parent key of block 0 for a model (and an optional per-tenant salt)."""
    return xxhash.xxh3_128_digest(model_fingerprint.encode() + b"\x00" + cache_salt.encode())


def chain_key(parent: BlockKey, block_token_ids: Sequence[int]) -> BlockKey:
    """Key of one full block given its parent's key."""
    data = np.asarray(block_token_ids, dtype="<i4").tobytes()
    return xxhash.xxh3_128_digest(parent + data)


def block_keys(
    token_ids: Sequence[int],
    model_fingerprint: str,
    block_size: int = DEFAULT_BLOCK_SIZE,
    cache_salt: str = "",
    parent: BlockKey | None = None,
) -> list[BlockKey]:
    """Keys of every full block of ``token_ids``; a partial tail block has none.

    ``parent`` continues an existing chain (keys of blocks appended later).
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    prev = root_key(model_fingerprint, cache_salt) if parent is None else parent
    # one conversion to bytes, then a bytes slice per block (a numpy slice and tobytes per block
    # cost more than the hashing); struct packs a list of ints 2x faster than numpy converts it
    if isinstance(token_ids, np.ndarray):
        data = np.asarray(token_ids, dtype="<i4").tobytes()
    else:
        data = struct.pack(f"<{len(token_ids)}i", *token_ids)
    step = block_size * 4
    keys: list[BlockKey] = []
    digest = xxhash.xxh3_128_digest
    for start in range(0, len(data) - step + 1, step):
        prev = digest(prev + data[start : start + step])
        keys.append(prev)
    return keys


@dataclass(frozen=True, slots=True)
class KVLayout:
    """What makes stored KV bytes compatible: never mix two different layouts."""

    model_fingerprint: str
    dtype: str  # "bfloat16", "float16", "float32"
    block_size: int
    tp_rank: int = 0
    tp_size: int = 1

    def prefix(self) -> str:
        return f"{self.model_fingerprint}/{self.dtype}/b{self.block_size}/tp{self.tp_rank}of{self.tp_size}"


def store_key(layout: KVLayout, key: BlockKey) -> str:
    """Name of one stored object: one block, all layers, one TP shard."""
    return f"{layout.prefix()}/{key.hex()}"
