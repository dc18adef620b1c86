"""Filters: drop candidates before scoring (first stage of a scheduling profile).

A filter that would drop every candidate keeps them all instead: it expresses a
preference ("avoid nearly full workers"), and refusing a request is the decider's
job (SLO admission), not a filter's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from router.scheduler_config import PluginSpec
from router.scorers import Candidates


class Filter(Protocol):
    def keep(self, candidates: Candidates) -> list[bool]:
        """One flag per candidate: keep it."""


@dataclass(slots=True)
class KVUsageBelow:
    """Skip workers whose KV cache is nearly full (a new request would preempt or evict)."""

    max_usage: float = 0.95

    def keep(self, candidates: Candidates) -> list[bool]:
        return [u < self.max_usage for u in candidates.kv_usage]


@dataclass(slots=True)
class QueueBelow:
    """Skip workers with more than this many prompt tokens queued ahead."""

    max_queued_tokens: int = 65536

    def keep(self, candidates: Candidates) -> list[bool]:
        return [q <= self.max_queued_tokens for q in candidates.queued_prefill_tokens]


FILTER_TYPES: dict[str, type] = {"kv-usage-below": KVUsageBelow, "queue-below": QueueBelow}


def build_filter(spec: PluginSpec) -> Filter:
    cls = FILTER_TYPES.get(spec.type)
    if cls is None:
        raise KeyError(f"unknown filter type {spec.type!r}; known: {', '.join(FILTER_TYPES)}")
    try:
        return cls(**spec.params)
    except TypeError as exc:
        raise TypeError(f"filter {spec.type!r}: bad parameters {spec.params}") from exc


def apply_filters(filters: list[Filter], candidates: Candidates) -> Candidates:
    for f in filters:
        rows = [i for i, keep in enumerate(f.keep(candidates)) if keep]
        if rows and len(rows) < len(candidates):
            candidates = candidates.take(rows)
    return candidates
