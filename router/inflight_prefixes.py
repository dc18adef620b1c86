"""Prompts the router has placed whose KV is still being computed: held as soon as routed.

A worker announces a prompt's blocks (BlockStored) only once it has computed them, so a
request that shares a prefix with one still in a prefill queue would find no holder in the
prefix index and compute the prefix a second time elsewhere. The scheduler adds each
decision's chain under the worker that computes it and drops it when the first token is
out (`Charge.prompt_computed`); by then the worker has stored the blocks. A second request
routed there queues behind the first and hits what it computed (llm-d's approximate prefix
cache does the same). Kept apart from the prefix index so that in-flight chains never count
as copies (sole-copy counts, copy notices, eviction estimates).
"""

from __future__ import annotations

from collections.abc import Sequence

from kvstore.block_key import BlockKey


class InflightPrefixes:
    """Not thread-safe: the scheduler's event loop adds, matches and drops.

    Chains are filed by their first block. A block key commits to every block before it
    (kvstore/block_key.py), so two chains agree up to some depth and differ after it, and
    that depth is found by bisection: adding and dropping a chain cost O(1) and
    O(chains with its first block), a match O(log blocks) per such chain."""

    def __init__(self) -> None:
        self._by_root: dict[BlockKey, list[tuple[str, Sequence[BlockKey]]]] = {}

    def __len__(self) -> int:
        return sum(map(len, self._by_root.values()))

    def add(self, worker_id: str, chain: Sequence[BlockKey]) -> None:
        if chain:
            self._by_root.setdefault(chain[0], []).append((worker_id, chain))

    def drop(self, worker_id: str, chain: Sequence[BlockKey]) -> None:
        entries = self._by_root.get(chain[0]) if chain else None
        if entries is None:
            return
        for i, (worker, held) in enumerate(entries):
            if worker == worker_id and len(held) == len(chain) and held[-1] == chain[-1]:  # the same chain
                del entries[i]
                break
        if not entries:
            del self._by_root[chain[0]]

    def merge_into(self, matches: dict[str, int], chain: Sequence[BlockKey]) -> dict[str, int]:
        """``matches`` (leading blocks each worker holds, PrefixIndex.match) raised to what each
        worker will hold once its in-flight prompts are computed."""
        entries = self._by_root.get(chain[0]) if chain else None
        for worker, held in entries or ():
            depth = _common_depth(chain, held)
            if matches.get(worker, 0) < depth:
                matches[worker] = depth
        return matches


def _common_depth(a: Sequence[BlockKey], b: Sequence[BlockKey]) -> int:
    """Leading blocks two chains share, given that they share the first."""
    lo, hi = 1, min(len(a), len(b))  # a[:lo] == b[:lo]; the answer is <= hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[mid - 1] == b[mid - 1]:
            lo = mid
        else:
            hi = mid - 1
    return lo
