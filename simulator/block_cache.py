"""A simulated worker's KV cache: block-exact, fixed capacity, LRU eviction of unused blocks.

Blocks a running request uses are referenced and never evicted. When a request
releases its blocks they stay cached (a prefix cache) and become evictable, deepest
block of the chain first, so that a shared prefix outlives the tails hanging off it
(vLLM's order). Anonymous blocks (a prompt's partial last block, output tokens)
take capacity but have no key and are freed at release.

Not thread-safe on its own: the worker's event loop mutates it; ``snapshot`` may run
on the KV-event publisher's thread and takes the lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from kvstore.block_key import BlockKey


@dataclass(slots=True)
class Allocation:
    hit_blocks: int  # leading blocks of the chain that were cached (prefix hit)
    new_keys: list[BlockKey]  # keys not cached before: to announce once computed
    evicted: list[BlockKey]  # keys evicted to make room: to announce now


class BlockCache:
    def __init__(self, capacity_blocks: int) -> None:
        if capacity_blocks <= 0:
            raise ValueError(f"KV capacity must be > 0 blocks, got {capacity_blocks}")
        self.capacity = capacity_blocks
        self._referenced: dict[BlockKey, int] = {}  # key -> number of requests using it
        self._free: OrderedDict[BlockKey, None] = OrderedDict()  # unreferenced, least recently used first
        self._anonymous = 0
        self._lock = threading.Lock()

    @property
    def used_blocks(self) -> int:
        return len(self._referenced) + len(self._free) + self._anonymous

    @property
    def active_blocks(self) -> int:
        """Blocks held by running requests (not evictable)."""
        return len(self._referenced) + self._anonymous

    def match(self, chain: Sequence[BlockKey]) -> int:
        """Leading blocks of ``chain`` in the cache."""
        n = 0
        for key in chain:
            if key not in self._referenced and key not in self._free:
                break
            n += 1
        return n

    def can_allocate(self, chain: Sequence[BlockKey], anonymous: int) -> bool:
        missing = sum(1 for k in chain if k not in self._referenced and k not in self._free)
        reusable = sum(1 for k in chain if k in self._free)
        return self.active_blocks + missing + reusable + anonymous <= self.capacity

    def allocate(self, chain: Sequence[BlockKey], anonymous: int) -> Allocation | None:
        """Reference ``chain`` plus ``anonymous`` blocks, evicting LRU blocks; None when they
        cannot fit even with every unreferenced block evicted (the caller waits)."""
        if not self.can_allocate(chain, anonymous):
            return None
        hit = self.match(chain)
        with self._lock:
            new_keys = []
            for key in chain:
                if key in self._referenced:
                    self._referenced[key] += 1
                elif key in self._free:
                    del self._free[key]
                    self._referenced[key] = 1
                else:
                    self._referenced[key] = 1
                    new_keys.append(key)
            self._anonymous += anonymous
            evicted = []
            while self.used_blocks > self.capacity:
                key, _ = self._free.popitem(last=False)
                evicted.append(key)
        return Allocation(hit, new_keys, evicted)

    def release(self, chain: Sequence[BlockKey], anonymous: int, evict_first: Collection[BlockKey] = ()) -> None:
        """``evict_first``: keys that become the oldest of all instead of the newest (deepest
        first), e.g. a copy another worker also holds."""
        with self._lock:
            self._anonymous -= anonymous
            for key in reversed(chain):  # the chain's tail becomes older than its root
                count = self._referenced.get(key, 0)
                if count > 1:
                    self._referenced[key] = count - 1
                elif count == 1:
                    del self._referenced[key]
                    self._free[key] = None
            for key in chain:  # root first, so that the deepest ends up oldest
                if key in evict_first and key in self._free:
                    self._free.move_to_end(key, last=False)

    def demote(self, chain: Sequence[BlockKey]) -> None:
        """Make the unreferenced blocks of ``chain`` the oldest of all (deepest first): a copy
        another worker now serves (the what-if of ReplayConfig.demote_moved_copies)."""
        with self._lock:
            for key in chain:
                if key in self._free:
                    self._free.move_to_end(key, last=False)

    def snapshot(self) -> dict[str, list[BlockKey]]:
        with self._lock:
            return {"gpu": list(self._referenced) + list(self._free)}
