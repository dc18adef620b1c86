"""Scorers: cost terms for choosing a worker; lower is better. A profile sums ``weight * score``.

Every score is expressed in prefill-token equivalents so that weights stay readable:
the default cost of a prefill candidate is `uncached_prefill_tokens + queued tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from router.scheduler_config import PluginSpec
from router.workers import Worker


@dataclass(slots=True)
class Candidate:
    """One worker evaluated for one request."""

    worker: Worker
    prompt_tokens: int
    hit_tokens: int  # prompt tokens whose KV this worker has or can pull from the store
    store_tokens: int = 0  # of those, the ones it must pull from the store (not in its own cache)

    @property
    def uncached_tokens(self) -> int:
        return max(self.prompt_tokens - self.hit_tokens, 0)

    @property
    def queued_prefill_tokens(self) -> int:
        return self.worker.queued_prefill_tokens


class Scorer(Protocol):
    name: str

    def score(self, candidate: Candidate) -> float: ...


@dataclass(slots=True)
class UncachedPrefillScorer:
    """Work this request adds: prompt tokens the worker would have to compute, plus the
    cheaper but not free work of pulling store-held blocks (so a local hit wins a tie)."""

    name: str = "uncached_prefill_tokens"
    store_token_cost: float = 0.25  # a pulled token, in computed-token equivalents (measured ~0.1 on CPU, less on GPU)

    def score(self, candidate: Candidate) -> float:
        return float(candidate.uncached_tokens) + self.store_token_cost * candidate.store_tokens


@dataclass(slots=True)
class QueuedPrefillScorer:
    """Work already ahead of this request on the worker."""

    name: str = "queued_prefill_tokens"

    def score(self, candidate: Candidate) -> float:
        return float(candidate.queued_prefill_tokens)


@dataclass(slots=True)
class KVUsageScorer:
    """Memory pressure: a full cache means preemption and evicted prefixes."""

    name: str = "kv_usage"

    def score(self, candidate: Candidate) -> float:
        load = candidate.worker.load
        if load.total_kv_blocks:
            return load.active_kv_blocks / load.total_kv_blocks
        return float(load.kv_usage)


@dataclass(slots=True)
class RunningRequestsScorer:
    """Batch size: more running sequences mean slower steps for everyone."""

    name: str = "running_requests"

    def score(self, candidate: Candidate) -> float:
        return float(candidate.worker.active_requests)


@dataclass(slots=True)
class KVImportScorer:
    """Decode side of a disaggregated request: prompt KV it must pull from the store.

    A decode worker that already holds the prompt's prefix in its own cache imports only
    the rest, so its first decode step starts sooner (and the store serves fewer bytes).
    """

    name: str = "kv_import_tokens"
    import_token_cost: float = 0.25  # an imported token, in computed-token equivalents

    def score(self, candidate: Candidate) -> float:
        return self.import_token_cost * candidate.uncached_tokens


@dataclass(slots=True)
class PredictedTTFTScorer:
    """Milliseconds until this worker would emit the first token: the work queued ahead plus
    this request's uncached tokens, at the worker's measured prefill rate."""

    name: str = "predicted_ttft_ms"
    default_rate_tps: float = 8000.0  # until the worker's rate has been measured

    def score(self, candidate: Candidate) -> float:
        rate = candidate.worker.prefill_rate_tps or self.default_rate_tps
        return 1000.0 * (candidate.queued_prefill_tokens + candidate.uncached_tokens) / rate


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


def total_cost(candidate: Candidate, scorers: list[WeightedScorer]) -> float:
    return sum(ws.weight * ws.scorer.score(candidate) for ws in scorers)
