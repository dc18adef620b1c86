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

_Id = tuple[str, int, BlockKey]  # (worker, blocks, last block key): one chain of one worker


class InflightPrefixes:
    """Not thread-safe: the scheduler's event loop adds, matches and drops.

    Chains are filed by their first block. A block key commits to its position and every
    block before it (kvstore/block_key.py), so a chain goes deeper into a query than a worker's
    known depth d exactly when its key at d equals the query's: one comparison rules out most
    chains, and only one that goes deeper is bisected for its depth. Adding and dropping a chain
    cost O(1); a match O(in-flight chains with the query's first block), a comparison each. (Many
    requests that share a system prompt the index already holds cost a comparison each.)"""

    def __init__(self) -> None:
        self._by_root: dict[BlockKey, dict[_Id, tuple[Sequence[BlockKey], int]]] = {}

    def __len__(self) -> int:
        return sum(n for entries in self._by_root.values() for _, n in entries.values())

    def add(self, worker_id: str, chain: Sequence[BlockKey]) -> None:
        if not chain:
            return
        entries = self._by_root.setdefault(chain[0], {})
        ident = (worker_id, len(chain), chain[-1])
        _, n = entries.get(ident, (chain, 0))
        entries[ident] = (chain, n + 1)

    def drop(self, worker_id: str, chain: Sequence[BlockKey]) -> None:
        entries = self._by_root.get(chain[0]) if chain else None
        ident = (worker_id, len(chain), chain[-1]) if chain else None
        if entries is None or ident not in entries:
            return  # never added, or dropped already
        held, n = entries[ident]
        if n > 1:
            entries[ident] = (held, n - 1)
            return
        del entries[ident]
        if not entries:
            del self._by_root[chain[0]]

    def merge_into(self, matches: dict[str, int], chain: Sequence[BlockKey]) -> dict[str, int]:
        """``matches`` (leading blocks each worker holds, PrefixIndex.match) raised to what each
        worker will hold once its in-flight prompts are computed."""
        entries = self._by_root.get(chain[0]) if chain else None
        if not entries:
            return matches
        end = len(chain)
        for (worker, _, _), (held, _) in entries.items():
            known = matches.get(worker, 0)
            if known >= end or known >= len(held) or held[known] != chain[known]:
                continue  # this chain goes no deeper into the query than the worker's known depth
            lo, hi = known + 1, min(end, len(held))  # chain[:lo] == held[:lo]; the depth is <= hi
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if held[mid - 1] == chain[mid - 1]:
                    lo = mid
                else:
                    hi = mid - 1
            matches[worker] = lo
        return matches
