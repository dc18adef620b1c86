"""Filters: drop candidates before scoring (first stage of a scheduling profile).

A filter that would drop every candidate keeps them all instead: it expresses a
preference ("avoid nearly full workers"), and refusing a request is the decider's
job (SLO admission), not a filter's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from router.scheduler_config import PluginSpec
from router.scorers import Candidate


class Filter(Protocol):
    def keep(self, candidate: Candidate) -> bool: ...


@dataclass(slots=True)
class KVUsageBelow:
    """Skip workers whose KV cache is nearly full (a new request would preempt or evict)."""

    max_usage: float = 0.95

    def keep(self, candidate: Candidate) -> bool:
        return candidate.kv_usage < self.max_usage


@dataclass(slots=True)
class QueueBelow:
    """Skip workers with more than this many prompt tokens queued ahead."""

    max_queued_tokens: int = 65536

    def keep(self, candidate: Candidate) -> bool:
        return candidate.queued_prefill_tokens <= self.max_queued_tokens


FILTER_TYPES: dict[str, type] = {"kv-usage-below": KVUsageBelow, "queue-below": QueueBelow}


def build_filter(spec: PluginSpec) -> Filter:
    cls = FILTER_TYPES.get(spec.type)
    if cls is None:
        raise KeyError(f"unknown filter type {spec.type!r}; known: {', '.join(FILTER_TYPES)}")
    try:
        return cls(**spec.params)
    except TypeError as exc:
        raise TypeError(f"filter {spec.type!r}: bad parameters {spec.params}") from exc


def apply_filters(filters: list[Filter], candidates: list[Candidate]) -> list[Candidate]:
    for f in filters:
        kept = [c for c in candidates if f.keep(c)]
        candidates = kept or candidates
    return candidates
