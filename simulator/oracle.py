"""The best prefix hit rate a workload allows at a given KV capacity (an offline bound).

The oracle pools every worker's capacity into one cache and knows the future: it keeps
a block only if it is used again, and evicts the block whose next use is farthest
(Belady's rule), so no router over the same total capacity can hit more blocks. A
request's hit counts its leading cached blocks (a prefix), like the workers' caches,
and the last prompt token is always computed. It also ignores timing: a prefix still
being computed counts as available, which only raises the bound.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass

from kvstore.block_key import BlockKey
from simulator.workloads import ReplayRequest

_NEVER = float("inf")


@dataclass(slots=True)
class OracleResult:
    capacity_blocks: int
    hit_rate: float  # hit tokens / prompt tokens at this capacity
    unbounded_hit_rate: float  # the same with unlimited capacity: what the workload shares at all


def oracle_hit_rate(requests: list[ReplayRequest], capacity_blocks: int, block_size: int = 16) -> OracleResult:
    ordered = sorted(requests, key=lambda r: (r.arrival_s, r.index))
    uses: dict[BlockKey, list[int]] = defaultdict(list)
    for i, r in enumerate(ordered):
        for key in r.chain:
            uses[key].append(i)
    cursor: dict[BlockKey, int] = defaultdict(int)  # how many of a key's uses are past
    cached: dict[BlockKey, float] = {}  # key -> its next use
    # max-heap by (next use, depth in the chain), negated, lazily cleaned: among blocks next
    # used together the deepest goes first, since a prefix hit needs the blocks before it
    farthest: list[tuple[float, int, BlockKey]] = []
    seen: set[BlockKey] = set()
    hits = unbounded = prompt = 0
    for r in ordered:
        lead = 0
        while lead < len(r.chain) and r.chain[lead] in cached:
            lead += 1
        seen_lead = 0
        while seen_lead < len(r.chain) and r.chain[seen_lead] in seen:
            seen_lead += 1
        cap = max(r.prompt_len - 1, 0)
        hits += min(lead * block_size, cap)
        unbounded += min(seen_lead * block_size, cap)
        prompt += r.prompt_len
        for depth, key in enumerate(r.chain):
            seen.add(key)
            cursor[key] += 1
            key_uses = uses[key]
            nxt = key_uses[cursor[key]] if cursor[key] < len(key_uses) else _NEVER
            if nxt == _NEVER:
                cached.pop(key, None)  # never used again: keeping it cannot help
                continue
            cached[key] = nxt
            heapq.heappush(farthest, (-nxt, -depth, key))
        while len(cached) > capacity_blocks:
            neg, _, key = heapq.heappop(farthest)
            if cached.get(key) == -neg:
                del cached[key]
    return OracleResult(capacity_blocks, hits / prompt if prompt else 0.0, unbounded / prompt if prompt else 0.0)
