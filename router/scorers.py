"""Scorers: cost terms for choosing a worker; lower is better. A profile sums ``weight * score``.

Every score is expressed in prefill-token equivalents so that weights stay readable:
the default cost of a prefill candidate is `uncached_prefill_tokens + queued tokens`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from router.scheduler_config import PluginSpec
from router.workers import Worker


@dataclass(slots=True)
class Candidate:
    """One worker evaluated for one request.

    The load fields are read from the worker once per decision (`of`), not once per scorer:
    a decision at 64 workers scores ~100 candidates, so every attribute chain counts.
    """

    worker: Worker
    prompt_tokens: int
    hit_tokens: int  # prompt tokens whose KV this worker has or can pull from the store
    store_tokens: int = 0  # of those, the ones it must pull from the store (not in its own cache)
    uncached_tokens: int = 0  # prompt_tokens - hit_tokens
    queued_prefill_tokens: int = 0  # Worker.queued_prefill_tokens
    active_requests: int = 0  # Worker.active_requests
    kv_usage: float = 0.0  # Worker.kv_fraction

    @classmethod
    def of(cls, worker: Worker, prompt_tokens: int, hit_tokens: int, store_tokens: int = 0) -> "Candidate":
        return cls(worker, prompt_tokens, hit_tokens, store_tokens, max(prompt_tokens - hit_tokens, 0),
                   worker.queued_prefill_tokens, worker.active_requests, worker.kv_fraction)  # fmt: skip


class Scorer(Protocol):
    """Scores a whole pool at once: one list comprehension per scorer and decision, not one
    call per worker (a 64-worker decision has a budget of ~100 us in Python)."""

    name: str

    def scores(self, candidates: Sequence[Candidate]) -> list[float]: ...


@dataclass(slots=True)
class UncachedPrefillScorer:
    """Work this request adds: prompt tokens the worker would have to compute, plus the
    cheaper but not free work of pulling store-held blocks (so a local hit wins a tie)."""

    name: str = "uncached_prefill_tokens"
    store_token_cost: float = 0.25  # a pulled token, in computed-token equivalents (measured ~0.1 on CPU, less on GPU)

    def scores(self, candidates: Sequence[Candidate]) -> list[float]:
        k = self.store_token_cost
        return [c.uncached_tokens + k * c.store_tokens for c in candidates]


@dataclass(slots=True)
class QueuedPrefillScorer:
    """Work already ahead of this request on the worker."""

    name: str = "queued_prefill_tokens"

    def scores(self, candidates: Sequence[Candidate]) -> list[float]:
        return [c.queued_prefill_tokens for c in candidates]


@dataclass(slots=True)
class KVUsageScorer:
    """Memory pressure: a full cache means preemption and evicted prefixes."""

    name: str = "kv_usage"

    def scores(self, candidates: Sequence[Candidate]) -> list[float]:
        return [c.kv_usage for c in candidates]


@dataclass(slots=True)
class RunningRequestsScorer:
    """Batch size: more running sequences mean slower steps for everyone."""

    name: str = "running_requests"

    def scores(self, candidates: Sequence[Candidate]) -> list[float]:
        return [c.active_requests for c in candidates]


@dataclass(slots=True)
class KVImportScorer:
    """Decode side of a disaggregated request: prompt KV it must pull from the store.

    A decode worker that already holds the prompt's prefix in its own cache imports only
    the rest, so its first decode step starts sooner (and the store serves fewer bytes).
    """

    name: str = "kv_import_tokens"
    import_token_cost: float = 0.25  # an imported token, in computed-token equivalents

    def scores(self, candidates: Sequence[Candidate]) -> list[float]:
        k = self.import_token_cost
        return [k * c.uncached_tokens for c in candidates]


@dataclass(slots=True)
class PredictedTTFTScorer:
    """Milliseconds until this worker would emit the first token: the work queued ahead plus
    this request's uncached tokens, at the worker's measured prefill rate."""

    name: str = "predicted_ttft_ms"
    default_rate_tps: float = 8000.0  # until the worker's rate has been measured

    def scores(self, candidates: Sequence[Candidate]) -> list[float]:
        default = self.default_rate_tps
        return [1000.0 * (c.queued_prefill_tokens + c.uncached_tokens) / (c.worker.prefill_rate_tps or default)
                for c in candidates]  # fmt: skip


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
}


def build_scorer(spec: PluginSpec) -> WeightedScorer:
    cls = SCORER_TYPES.get(spec.type)
    if cls is None:
        raise KeyError(f"unknown scorer type {spec.type!r}; known: {', '.join(SCORER_TYPES)}")
    try:
        return WeightedScorer(cls(**spec.params), spec.weight)
    except TypeError as exc:
        raise TypeError(f"scorer {spec.type!r}: bad parameters {spec.params}") from exc


def total_costs(candidates: Sequence[Candidate], scorers: list[WeightedScorer]) -> list[float]:
    """Each candidate's weighted sum of its scores (0 for every candidate without scorers)."""
    costs = [0.0] * len(candidates)
    for ws in scorers:
        w = ws.weight
        costs = [cost + w * score for cost, score in zip(costs, ws.scorer.scores(candidates))]
    return costs
