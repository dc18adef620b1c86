"""Global prefix index: which publisher (worker id or "kvstore") holds which KV blocks.

Fed by KV events (router/kv_events.py). A lookup walks a request's block-key chain
once and returns, for every publisher, how many leading blocks it holds. Because a
block key commits to its whole prefix (kvstore/block_key.py), holding block i means
holding the prefix up to i only if blocks 0..i-1 are held too, so the walk stops for
a publisher at its first missing block.

A publisher may hold a key on several media (gpu, cpu, ...); the key counts as held
until it has been removed from every medium.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from kvstore.block_key import BlockKey


class PrefixIndex:
    """Thread-safe: events apply from the subscriber thread, lookups from the event loop."""

    def __init__(self) -> None:
        self._holders: dict[BlockKey, set[str]] = {}
        # publisher -> key -> bitmask of the media holding it
        self._held: dict[str, dict[BlockKey, int]] = {}
        self._media: dict[str, int] = {}
        self._lock = threading.Lock()

    def _medium_bit(self, medium: str) -> int:
        bit = self._media.get(medium)
        if bit is None:
            bit = 1 << len(self._media)
            self._media[medium] = bit
        return bit

    def store(self, publisher: str, keys: Iterable[BlockKey], medium: str = "gpu") -> None:
        with self._lock:
            bit = self._medium_bit(medium)
            held = self._held.setdefault(publisher, {})
            for key in keys:
                mask = held.get(key, 0)
                if not mask:
                    holders = self._holders.get(key)
                    if holders is None:
                        self._holders[key] = {publisher}
                    else:
                        holders.add(publisher)
                held[key] = mask | bit

    def remove(self, publisher: str, keys: Iterable[BlockKey], medium: str = "gpu") -> None:
        with self._lock:
            held = self._held.get(publisher)
            if held is None:
                return
            bit = self._medium_bit(medium)
            for key in keys:
                mask = held.get(key, 0) & ~bit
                if mask:
                    held[key] = mask
                elif key in held:
                    del held[key]
                    self._drop_holder(key, publisher)

    def clear(self, publisher: str) -> None:
        """Forget every block of a publisher (AllBlocksCleared, or the publisher left)."""
        with self._lock:
            for key in self._held.pop(publisher, {}):
                self._drop_holder(key, publisher)

    def replace(self, publisher: str, by_medium: dict[str, list[BlockKey]]) -> None:
        """Install a snapshot as the publisher's whole state."""
        self.clear(publisher)
        self._held.setdefault(publisher, {})
        for medium, keys in by_medium.items():
            self.store(publisher, keys, medium)

    def _drop_holder(self, key: BlockKey, publisher: str) -> None:
        holders = self._holders.get(key)
        if holders is None:
            return
        holders.discard(publisher)
        if not holders:
            del self._holders[key]

    def match(self, chain: Sequence[BlockKey]) -> dict[str, int]:
        """Number of leading blocks of ``chain`` each publisher holds (publishers with 0 omitted)."""
        result: dict[str, int] = {}
        if not chain:
            return result
        holders = self._holders
        with self._lock:
            first = holders.get(chain[0])
            if not first:
                return result
            alive = set(first)
            for depth in range(1, len(chain)):
                here = holders.get(chain[depth])
                if here is None:
                    break
                if len(here) >= len(alive) and alive <= here:
                    continue  # common case: nobody drops out at this depth
                kept = alive & here
                for publisher in alive - kept:
                    result[publisher] = depth
                alive = kept
                if not alive:
                    return result
            else:
                depth = len(chain)
        for publisher in alive:
            result[publisher] = depth
        return result

    def publishers(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def keys_of(self, publisher: str) -> set[BlockKey]:
        with self._lock:
            return set(self._held.get(publisher, {}))

    def num_blocks_of(self, publisher: str) -> int:
        """Blocks one publisher holds (on any medium)."""
        return len(self._held.get(publisher, ()))

    def num_blocks(self) -> int:
        """Distinct blocks in the index (the `index_blocks` gauge)."""
        return len(self._holders)
