"""A simulated worker's KV cache: block-exact, fixed capacity, LRU eviction of unused blocks.

Blocks a running request uses are referenced and never evicted. When a request
releases its blocks they stay cached (a prefix cache) and become evictable, deepest
block of the chain first, so that a shared prefix outlives the tails hanging off it
(vLLM's order). Anonymous blocks (a prompt's partial last block, output tokens)
take capacity but have no key and are freed at release.

With ``shared_first``, the cache also learns which of its blocks another worker holds
(``mark_shared`` / ``mark_sole``: copy notices, from the router's prefix index) and evicts
those first, oldest first, but only a leaf: a block no other cached block of this cache
continues, since a copy whose descendants only this cache holds is still needed here.
So the cluster keeps one copy of more prefixes (docs/performance.md, routing at scale).

Not thread-safe on its own: the worker's event loop mutates it; ``snapshot`` may run
on the KV-event publisher's thread and takes the lock.
"""

from __future__ import annotations

import heapq
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
    def __init__(self, capacity_blocks: int, shared_first: bool = False) -> None:
        if capacity_blocks <= 0:
            raise ValueError(f"KV capacity must be > 0 blocks, got {capacity_blocks}")
        self.capacity = capacity_blocks
        self.shared_first = shared_first
        self._referenced: dict[BlockKey, int] = {}  # key -> number of requests using it
        # unreferenced, least recently used first; the value is its stamp in that order
        self._free: OrderedDict[BlockKey, int] = OrderedDict()
        self._newest = self._oldest = 0  # stamps: released blocks count up, demoted ones down
        self._anonymous = 0
        self._shared: set[BlockKey] = set()  # cached keys another worker also holds
        self._parent: dict[BlockKey, BlockKey] = {}  # cached key -> the key before it in its chain
        self._children: dict[BlockKey, int] = {}  # key -> cached keys whose parent it is
        self._victims: list[tuple[int, BlockKey]] = []  # heap of (stamp, key): free shared leaves, lazily cleaned
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
            for i, key in enumerate(chain):
                if key in self._referenced:
                    self._referenced[key] += 1
                elif key in self._free:
                    del self._free[key]
                    self._referenced[key] = 1
                else:
                    self._referenced[key] = 1
                    new_keys.append(key)
                    if self.shared_first and i:
                        self._parent[key] = parent = chain[i - 1]
                        self._children[parent] = self._children.get(parent, 0) + 1
            self._anonymous += anonymous
            evicted = []
            while self.used_blocks > self.capacity:
                evicted.append(self._evict_one())
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
                    self._newest += 1
                    self._free[key] = self._newest
                    self._offer(key)
            for key in chain:  # root first, so that the deepest ends up oldest
                if key in evict_first and key in self._free:
                    self._to_front(key)

    def demote(self, chain: Sequence[BlockKey]) -> None:
        """Make the unreferenced blocks of ``chain`` the oldest of all (deepest first): a copy
        another worker now serves (the what-if of ReplayConfig.demote_moved_copies)."""
        with self._lock:
            for key in chain:
                if key in self._free:
                    self._to_front(key)

    def mark_shared(self, key: BlockKey) -> None:
        """Another worker now holds ``key`` too (a copy notice); ignored without ``shared_first``."""
        if self.shared_first and (key in self._free or key in self._referenced):
            with self._lock:
                self._shared.add(key)
                self._offer(key)

    def mark_sole(self, key: BlockKey) -> None:
        """This cache's copy of ``key`` is now the only one in the cluster: if it was put first
        in the eviction order as a copy (``evict_first``, ``demote``), it becomes the newest."""
        self._shared.discard(key)
        if self.shared_first and self._free.get(key, 1) <= 0:
            with self._lock:
                self._newest += 1
                self._free[key] = self._newest
                self._free.move_to_end(key)

    def _to_front(self, key: BlockKey) -> None:
        self._oldest -= 1
        self._free[key] = self._oldest
        self._free.move_to_end(key, last=False)
        self._offer(key)

    def _offer(self, key: BlockKey) -> None:
        """Queue ``key`` as an eviction victim if it is a free shared leaf (checked again when popped)."""
        if key in self._shared and not self._children.get(key) and key in self._free:
            heapq.heappush(self._victims, (self._free[key], key))
            if len(self._victims) > 2 * self.capacity:  # mostly stale entries: keep the live ones
                self._victims = [(s, k) for s, k in self._victims if self._free.get(k) == s]
                heapq.heapify(self._victims)

    def _evict_one(self) -> BlockKey:
        victims = self._victims
        key = None
        while victims:
            stamp, candidate = heapq.heappop(victims)
            if self._free.get(candidate) == stamp and candidate in self._shared and not self._children.get(candidate):
                key = candidate
                del self._free[key]
                break
        if key is None:
            key, _ = self._free.popitem(last=False)
        if self.shared_first:
            self._shared.discard(key)
            parent = self._parent.pop(key, None)
            if parent is not None:
                left = self._children[parent] - 1
                if left:
                    self._children[parent] = left
                else:
                    del self._children[parent]
                    self._offer(parent)
        return key

    def snapshot(self) -> dict[str, list[BlockKey]]:
        with self._lock:
            return {"gpu": list(self._referenced) + list(self._free)}
