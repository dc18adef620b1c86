"""Scorers: cost terms for choosing a worker; lower is better. A profile sums ``weight * score``.

Every score is expressed in prefill-token equivalents so that weights stay readable:
the default cost of a prefill candidate is `uncached_prefill_tokens + queued tokens`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import repeat
from operator import add, mul, sub, truediv
from typing import TYPE_CHECKING, ClassVar, Protocol

from router.scheduler_config import PluginSpec
from router.workers import Worker

if TYPE_CHECKING:
    from router.pool_columns import PoolColumns


@dataclass(slots=True)
class Candidates:
    """One pool's workers evaluated for one request, column by column (row i is ``workers[i]``).

    Columns, not one object per worker: a decision at 64 workers scores ~100 of them within
    a budget of ~100 us, and each scorer is then one list comprehension over a column. The
    load columns are the pool's (router/pool_columns.py), refreshed only where a worker changed.
    """

    workers: list[Worker]
    worker_ids: list[str]  # the prefix index's publisher ids
    prompt_tokens: int
    hit_tokens: list[int]  # prompt tokens whose KV the worker has or can pull from the store
    store_tokens: list[int]  # of those, the ones it must pull from the store (not in its own cache)
    uncached_tokens: list[int]  # prompt_tokens - hit_tokens
    queued_prefill_tokens: list[int]  # Worker.queued_prefill_tokens
    active_requests: list[int]  # Worker.active_requests
    kv_usage: list[float]  # Worker.kv_fraction
    kv_capacity: list[int]  # Worker.kv_capacity
    prefill_rate_tps: list[float | None]  # Worker.prefill_rate_tps (None until measured)
    sole_blocks: list[int] | None = None  # blocks only this worker holds (PrefixIndex); filled when a scorer reads it
    # PrefixIndex.eviction_estimates_of (share of evictions losing a sole copy, their youth); filled when read
    eviction_shares: list[float] | None = None
    eviction_youth: list[float] | None = None

    @classmethod
    def of_pool(cls, pool: PoolColumns, prompt_tokens: int, hit_tokens: list[int],
                store_tokens: list[int] | None = None) -> Candidates:  # fmt: skip
        """The pool's workers for one request: its load columns as the pool keeps them (shared, not copied:
        read-only here), and the request's hit, store and uncached tokens per worker."""
        if not any(hit_tokens):  # a new prompt: one C-level fill
            uncached = [prompt_tokens] * len(hit_tokens)
        else:
            uncached = list(map(sub, repeat(prompt_tokens), hit_tokens))
            if min(uncached) < 0:
                uncached = [max(u, 0) for u in uncached]
        return cls(pool.workers, pool.worker_ids, prompt_tokens, hit_tokens, store_tokens or [0] * len(pool.workers),
                   uncached, pool.queued_prefill_tokens, pool.active_requests, pool.kv_usage, pool.kv_capacity,
                   pool.prefill_rate_tps)  # fmt: skip

    def __len__(self) -> int:
        return len(self.workers)

    def take(self, rows: list[int]) -> Candidates:
        """The candidates at ``rows``, in that order."""
        return Candidates([self.workers[i] for i in rows], [self.worker_ids[i] for i in rows], self.prompt_tokens,
                          [self.hit_tokens[i] for i in rows], [self.store_tokens[i] for i in rows],
                          [self.uncached_tokens[i] for i in rows], [self.queued_prefill_tokens[i] for i in rows],
                          [self.active_requests[i] for i in rows], [self.kv_usage[i] for i in rows],
                          [self.kv_capacity[i] for i in rows], [self.prefill_rate_tps[i] for i in rows],
                          None if self.sole_blocks is None else [self.sole_blocks[i] for i in rows],
                          None if self.eviction_shares is None else [self.eviction_shares[i] for i in rows],
                          None if self.eviction_youth is None else [self.eviction_youth[i] for i in rows])  # fmt: skip


class Scorer(Protocol):
    """Scores a whole pool at once: one list comprehension per scorer and decision, not one
    call per worker (a 64-worker decision has a budget of ~100 us in Python).

    A scorer whose score is one load column of Candidates names it in ``column``: the
    scheduler then keeps its weighted sum per worker between decisions (router/pool_columns.py)."""

    name: str
    column: ClassVar[str | None]

    def scores(self, candidates: Candidates) -> list[float]: ...


@dataclass(slots=True)
class UncachedPrefillScorer:
    """Work this request adds: prompt tokens the worker would have to compute, plus the
    cheaper but not free work of pulling store-held blocks (so a local hit wins a tie)."""

    name: str = "uncached_prefill_tokens"
    column: ClassVar[str | None] = None
    store_token_cost: float = 0.25  # a pulled token, in computed-token equivalents (measured ~0.1 on CPU, less on GPU)

    def scores(self, candidates: Candidates) -> list[float]:
        if not any(candidates.store_tokens):  # nothing to pull from the store: the uncached tokens themselves
            return candidates.uncached_tokens  # type: ignore[return-value]  # ints are numbers here
        k = self.store_token_cost
        return [u + k * s for u, s in zip(candidates.uncached_tokens, candidates.store_tokens)]


@dataclass(slots=True)
class QueuedPrefillScorer:
    """Work already ahead of this request on the worker."""

    name: str = "queued_prefill_tokens"
    column: ClassVar[str | None] = "queued_prefill_tokens"

    def scores(self, candidates: Candidates) -> list[float]:
        return candidates.queued_prefill_tokens  # type: ignore[return-value]  # ints are numbers here


@dataclass(slots=True)
class KVUsageScorer:
    """Memory pressure: a full cache means preemption and evicted prefixes."""

    name: str = "kv_usage"
    column: ClassVar[str | None] = "kv_usage"

    def scores(self, candidates: Candidates) -> list[float]:
        return candidates.kv_usage


@dataclass(slots=True)
class RunningRequestsScorer:
    """Batch size: more running sequences mean slower steps for everyone."""

    name: str = "running_requests"
    column: ClassVar[str | None] = "active_requests"

    def scores(self, candidates: Candidates) -> list[float]:
        return candidates.active_requests  # type: ignore[return-value]


@dataclass(slots=True)
class KVImportScorer:
    """Decode side of a disaggregated request: prompt KV it must pull from the store.

    A decode worker that already holds the prompt's prefix in its own cache imports only
    the rest, so its first decode step starts sooner (and the store serves fewer bytes).
    """

    name: str = "kv_import_tokens"
    column: ClassVar[str | None] = None
    import_token_cost: float = 0.25  # an imported token, in computed-token equivalents

    def scores(self, candidates: Candidates) -> list[float]:
        return list(map(mul, candidates.uncached_tokens, repeat(self.import_token_cost)))


@dataclass(slots=True)
class PredictedTTFTScorer:
    """Milliseconds until this worker would emit the first token: the work queued ahead plus
    this request's uncached tokens, at the worker's measured prefill rate."""

    name: str = "predicted_ttft_ms"
    column: ClassVar[str | None] = None
    default_rate_tps: float = 8000.0  # until the worker's rate has been measured

    def scores(self, candidates: Candidates) -> list[float]:
        default = self.default_rate_tps
        return [
            1000.0 * (q + u) / (r or default)
            for q, u, r in zip(candidates.queued_prefill_tokens, candidates.uncached_tokens, candidates.prefill_rate_tps)
        ]


@dataclass(slots=True)
class CachePressureScorer:
    """What the new KV would evict: each uncached token computed here takes a cache slot, and
    the larger the share of this worker's cache that holds the only copy of a block in the
    cluster, the likelier the evicted block is one nobody else can serve. A cache full of
    copies (a decode worker's imports, a conversation also held elsewhere) takes new prefixes
    for free; one full of sole copies charges up to one token per token.

    With ``recency``, the share is weighted by how young the sole copies this worker evicted
    were (PrefixIndex.eviction_estimates_of, capped at ``max_factor``): a cache whose sole
    copies are cold takes new prefixes more cheaply than one evicting recently used ones."""

    name: str = "cache_pressure"
    column: ClassVar[str | None] = None
    recency: bool = False
    max_factor: float = 4.0

    def scores(self, candidates: Candidates) -> list[float]:
        sole = candidates.sole_blocks
        if sole is None:
            return [0.0] * len(candidates)
        uncached, capacity = candidates.uncached_tokens, candidates.kv_capacity
        pressure = list(map(truediv, map(mul, uncached, sole), capacity))  # C-level maps
        if max(map(sub, sole, capacity), default=-1) >= 0:  # a cache of nothing but sole copies charges 1 per token
            pressure = [p if s < c else float(u) for p, u, s, c in zip(pressure, uncached, sole, capacity)]
        youth = candidates.eviction_youth
        return list(map(mul, pressure, youth)) if self.recency and youth is not None else pressure


@dataclass(slots=True)
class EvictionCostScorer:
    """What the new KV would evict, from what this worker's recent evictions lost: each uncached
    token computed here evicts a block like the ones the worker evicted last. A worker that has
    evicted nothing yet, or only copies held elsewhere, takes new prefixes for free; one whose
    evictions lost the only copy of blocks younger than the cluster's evicted ones charges more
    (up to ``max_factor`` tokens per token): its cache is full of what was used recently."""

    name: str = "eviction_cost"
    column: ClassVar[str | None] = None
    max_factor: float = 4.0  # the cap of PrefixIndex.eviction_estimates_of's youth, read by the scheduler

    def scores(self, candidates: Candidates) -> list[float]:
        shares, youth = candidates.eviction_shares, candidates.eviction_youth
        if shares is None or youth is None:
            return [0.0] * len(candidates)
        return list(map(mul, candidates.uncached_tokens, map(mul, shares, youth)))


@dataclass(slots=True)
class WeightedScorer:
    scorer: Scorer
    weight: float


SCORER_TYPES: dict[str, type] = {
    "uncached-tokens": UncachedPrefillScorer,  # the prefix scorer: what the cache does not cover
    "queued-tokens": QueuedPrefillScorer,
    "running-requests": RunningRequestsScorer,
    "kv-usage": KVUsageScorer,
    "kv-import-tokens": KVImportScorer,
    "predicted-ttft": PredictedTTFTScorer,
    "cache-pressure": CachePressureScorer,
    "eviction-cost": EvictionCostScorer,
}


def build_scorer(spec: PluginSpec) -> WeightedScorer:
    cls = SCORER_TYPES.get(spec.type)
    if cls is None:
        raise KeyError(f"unknown scorer type {spec.type!r}; known: {', '.join(SCORER_TYPES)}")
    try:
        return WeightedScorer(cls(**spec.params), spec.weight)
    except TypeError as exc:
        raise TypeError(f"scorer {spec.type!r}: bad parameters {spec.params}") from exc


def total_costs(candidates: Candidates, scorers: list[WeightedScorer], load_costs: list[float] | None = None) -> list[float]:
    """Each candidate's weighted sum of its scores (0 for every candidate without scorers);
    summed column-wise with C-level maps. ``load_costs``: the weighted sum of the scorers that
    name a ``column``, already summed per row (PoolColumns); those scorers are then skipped."""
    costs: Iterable[float] = repeat(0.0, len(candidates)) if load_costs is None else load_costs
    for ws in scorers:  # lazy maps, nested: one list at the end, not one per scorer
        if load_costs is not None and ws.scorer.column is not None:
            continue
        scores = ws.scorer.scores(candidates)
        costs = map(add, costs, scores if ws.weight == 1 else map(mul, scores, repeat(ws.weight)))
    return list(costs)
