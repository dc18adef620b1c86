"""Ref-counted KV blocks with a content-addressed prefix cache and LRU reuse.

A block is *cached* once it is full and its key (kvstore.block_key chain) is
registered; a cached block whose last user finished stays in the free list and
can be reused by a later request with the same prefix until it is evicted,
oldest first. Every registration / eviction is recorded as a KV event.

Free blocks come in two lists: uncached ones (nothing to lose) are handed out first,
then cached ones in eviction order. A decode worker's copy of KV it imported for a
disaggregated request goes to the head of the cached list when the request ends
(``Sequence.imported_blocks``): the prefill worker holds the same blocks, so the
cache keeps what only this worker has (docs/performance.md, routing at scale).

Fences (a GPU engine that lands imports early, ``LLMEngine.land_import``): a block freed while
work queued on the engine's stream may still read or write it (a step launched ahead for a
request that has just finished) is *fenced* with an event recorded on that stream at the
release. Allocation for the engine's own steps ignores fences (the stream runs in order); a copy
on another stream takes only unfenced blocks (``allocate(..., unfenced=True)``). Fences pass in the
order they were recorded (one stream), so they are kept in that order and dropped from the front.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from contracts.kv_events import BlockRemoved, BlockStored, KVEvent
from engine.sequence import Sequence
from kvstore.block_key import BlockKey, chain_key, root_key


class Fence(Protocol):
    """Work queued before the fence (a CUDA event): ``query()`` is True once it has all run."""

    def query(self) -> bool: ...


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    key: BlockKey | None = None  # set while the block is registered in the prefix cache


@dataclass(slots=True)
class PrefixCacheStats:
    queries: int = 0  # prompt tokens looked up
    hits: int = 0  # prompt tokens found cached


@dataclass(slots=True)
class BlockManager:
    num_blocks: int
    block_size: int
    fingerprint: str
    enable_prefix_caching: bool = True
    medium: str = "gpu"
    fence_mark: Callable[[], Fence] | None = None  # set: releases fence the blocks they free (see the module doc)
    blocks: list[Block] = field(init=False)
    free: OrderedDict[int, None] = field(init=False)  # cached, ref_count == 0, eviction order first
    free_uncached: OrderedDict[int, None] = field(init=False)  # no key, ref_count == 0: handed out first
    cached: dict[BlockKey, int] = field(init=False)
    events: list[KVEvent] = field(init=False)
    stats: PrefixCacheStats = field(init=False)
    fenced: dict[int, Fence] = field(init=False)  # free block -> the fence of the release that freed it
    fences: deque[tuple[Fence, list[int]]] = field(init=False)  # (fence, blocks it fenced), oldest first

    def __post_init__(self) -> None:
        self.blocks = [Block(i) for i in range(self.num_blocks)]
        self.free = OrderedDict()
        self.free_uncached = OrderedDict((i, None) for i in range(self.num_blocks))
        self.cached = {}
        self.events = []
        self.stats = PrefixCacheStats()
        self.fenced = {}
        self.fences = deque()

    # ---- queries -------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self.free) + len(self.free_uncached)

    @property
    def num_active(self) -> int:
        return self.num_blocks - self.num_free

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        """New blocks ``seq`` needs to hold ``num_tokens`` tokens."""
        return max(0, -(-num_tokens // self.block_size) - len(seq.block_table))

    def room(self, seq: Sequence) -> int:
        """Tokens ``seq`` could add now: its own free slots plus every free block."""
        return (len(seq.block_table) + self.num_free) * self.block_size - seq.num_computed_tokens

    def can_allocate(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_needed(seq, num_tokens) <= self.num_free

    def num_unfenced_free(self) -> int:
        """Free blocks no queued work can still touch (fences whose work has run are dropped)."""
        self._drop_passed_fences()
        return self.num_free - len(self.fenced)

    def _drop_passed_fences(self) -> None:
        while self.fences and self.fences[0][0].query():
            fence, block_ids = self.fences.popleft()
            for block_id in block_ids:
                if self.fenced.get(block_id) is fence:  # not taken (and freed again) since
                    del self.fenced[block_id]

    # ---- prefix cache ----------------------------------------------------------------------
    def match_prefix(self, seq: Sequence, max_tokens: int) -> int:
        """Attach cached leading blocks of ``seq`` (at most ``max_tokens`` tokens); returns tokens matched."""
        if not self.enable_prefix_caching or seq.block_table:
            return 0
        parent = root_key(self.fingerprint, seq.cache_salt)
        hits: list[tuple[int, BlockKey]] = []
        for start in range(0, max_tokens - self.block_size + 1, self.block_size):
            parent = chain_key(parent, seq.token_ids[start : start + self.block_size])
            block_id = self.cached.get(parent)
            if block_id is None:
                break
            hits.append((block_id, parent))
        for block_id, key in hits:
            self._acquire(block_id)
            seq.block_table.append(block_id)
            seq.block_keys.append(key)
        return len(hits) * self.block_size

    def record_query(self, num_prompt_tokens: int, num_hit_tokens: int) -> None:
        self.stats.queries += num_prompt_tokens
        self.stats.hits += num_hit_tokens

    def commit_full_blocks(self, seq: Sequence) -> None:
        """Register every newly full, computed block of ``seq`` in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        num_full = min(seq.num_computed_tokens, seq.num_tokens) // self.block_size
        if num_full <= len(seq.block_keys):
            return
        stored: list[BlockKey] = []
        first_parent = seq.block_keys[-1] if seq.block_keys else None
        parent = first_parent if first_parent is not None else root_key(self.fingerprint, seq.cache_salt)
        first_new = len(seq.block_keys)
        for i in range(first_new, num_full):
            tokens = seq.token_ids[i * self.block_size : (i + 1) * self.block_size]
            parent = chain_key(parent, tokens)
            seq.block_keys.append(parent)
            block = self.blocks[seq.block_table[i]]
            if block.key is None and parent not in self.cached:
                block.key = parent
                self.cached[parent] = block.block_id
                stored.append(parent)
        if stored:
            token_ids = seq.token_ids[first_new * self.block_size : num_full * self.block_size]
            self.events.append(
                BlockStored(keys=stored, parent=first_parent, token_ids=token_ids, block_size=self.block_size, medium=self.medium)
            )

    # ---- allocation ------------------------------------------------------------------------
    def allocate(self, seq: Sequence, num_tokens: int, unfenced: bool = False) -> None:
        """Grow ``seq``'s block table to hold ``num_tokens`` tokens (caller checked can_allocate;
        with ``unfenced``, that ``num_unfenced_free()`` covers them)."""
        for _ in range(self.blocks_needed(seq, num_tokens)):
            if unfenced and self.fenced:
                block_id = self._take_unfenced()
            elif self.free_uncached:
                block_id, _ = self.free_uncached.popitem(last=False)
            else:
                block_id, _ = self.free.popitem(last=False)
                self._evict(block_id)
            self.fenced.pop(block_id, None)  # the engine's own stream runs after the work fenced
            self.blocks[block_id].ref_count = 1
            seq.block_table.append(block_id)

    def _take_unfenced(self) -> int:
        for block_id in self.free_uncached:
            if block_id not in self.fenced:
                del self.free_uncached[block_id]
                return block_id
        for block_id in self.free:
            if block_id not in self.fenced:
                del self.free[block_id]
                self._evict(block_id)
                return block_id
        raise RuntimeError("no unfenced free block: check num_unfenced_free() before allocate(unfenced=True)")

    def release(self, seq: Sequence) -> None:
        """Drop ``seq``'s references; its cached blocks stay reusable until evicted."""
        fence = self.fence_mark() if self.fence_mark is not None and seq.block_table else None
        fenced: list[int] = []
        # tail blocks first, so that shared prefix heads are evicted last
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                if fence is not None:
                    self.fenced[block_id] = fence
                    fenced.append(block_id)
                if block.key is None:  # nothing to reuse: hand it out before cached blocks
                    self.free_uncached[block_id] = None
                    self.free_uncached.move_to_end(block_id, last=False)
                else:
                    self.free[block_id] = None
        first, end = seq.imported_blocks
        for block_id in seq.block_table[first:end]:  # root first, so that the deepest ends up oldest
            if block_id in self.free:
                self.free.move_to_end(block_id, last=False)  # another worker holds these: evict them first
        seq.imported_blocks = (0, 0)
        seq.block_table.clear()
        seq.block_keys.clear()
        if fence is not None and fenced:
            self.fences.append((fence, fenced))
            self._drop_passed_fences()  # keeps the queue short on an engine that never lands a copy

    def reset_prefix_cache(self) -> bool:
        """Forget every cached block no request uses; False if some are still in use."""
        if self.num_active:
            return False
        removed = list(self.cached)
        for block in self.blocks:
            block.key = None
        self.free_uncached.update(self.free)  # nothing is cached any more
        self.free.clear()
        self.cached.clear()
        if removed:
            self.events.append(BlockRemoved(keys=removed, medium=self.medium))
        return True

    def take_events(self) -> list[KVEvent]:
        events, self.events = self.events, []
        return events

    def _acquire(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free[block_id]  # a prefix hit: only cached blocks are found
            self.fenced.pop(block_id, None)  # read, never written: whoever reads it runs after the fence
        block.ref_count += 1

    def _evict(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.key is not None:
            del self.cached[block.key]
            self.events.append(BlockRemoved(keys=[block.key], medium=self.medium))
            block.key = None
