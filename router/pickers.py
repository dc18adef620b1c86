"""Pickers: choose one scored candidate (last stage of a scheduling profile)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from router.scheduler_config import PluginSpec
from router.scorers import Candidates
from router.workers import Worker


@dataclass(slots=True)
class Options:
    """A profile's filtered candidates with their weighted costs."""

    candidates: Candidates
    costs: list[float]
    held_of: Callable[[str], int]  # blocks a publisher holds in the index: breaks cost ties towards the emptier cache
    default_rate_tps: float  # prefill rate of a worker whose rate has not been measured yet
    colocated: bool = False
    picked: Option | None = None  # a deterministic picker's choice, kept: a decision may ask twice

    def __len__(self) -> int:
        return len(self.costs)

    def held_blocks(self, row: int) -> int:
        return self.held_of(self.candidates.worker_ids[row])

    def ttft_s(self, row: int) -> float:
        """Predicted time to first token: the work queued ahead plus this request's, at the worker's rate."""
        c = self.candidates
        return (c.queued_prefill_tokens[row] + c.uncached_tokens[row]) / (c.prefill_rate_tps[row] or self.default_rate_tps)

    def take(self, rows: list[int]) -> Options:
        return Options(self.candidates.take(rows), [self.costs[i] for i in rows], self.held_of, self.default_rate_tps,
                       self.colocated)  # fmt: skip

    def option(self, row: int) -> Option:
        c = self.candidates
        return Option(c.workers[row], c.hit_tokens[row], c.uncached_tokens[row], self.costs[row], self.ttft_s(row),
                      self.colocated)  # fmt: skip


@dataclass(slots=True)
class Option:
    """The picked row of an Options."""

    worker: Worker
    hit_tokens: int
    uncached_tokens: int
    cost: float
    ttft_s: float
    colocated: bool

    @property
    def address(self) -> str:
        return self.worker.address


class Picker(Protocol):
    def pick(self, options: Options, turn: int) -> int:
        """The row to use (``options`` is never empty); ``turn`` counts the earlier decisions of
        this pool (for rotating pickers)."""


@dataclass(slots=True)
class MinCost:
    """Cheapest first; among equals the worker holding fewer blocks, so that new prefixes
    spread over the pool instead of all landing on the first worker listed."""

    def pick(self, options: Options, turn: int) -> int:
        costs = options.costs
        best = min(costs)
        if costs.count(best) == 1:  # the usual case, found by C-level scans
            return costs.index(best)
        ties = [i for i, cost in enumerate(costs) if cost == best]
        return min(ties, key=options.held_blocks)


@dataclass(slots=True)
class RoundRobin:
    """The next worker in address order; ignores the costs."""

    def pick(self, options: Options, turn: int) -> int:
        workers = options.candidates.workers
        ordered = sorted(range(len(workers)), key=lambda i: workers[i].address)
        return ordered[turn % len(ordered)]


@dataclass(slots=True)
class RandomPick:
    seed: int | None = None
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if self.seed is not None:
            self._rng.seed(self.seed)

    def pick(self, options: Options, turn: int) -> int:
        return self._rng.randrange(len(options))


PICKER_TYPES: dict[str, type] = {"min-cost": MinCost, "round-robin": RoundRobin, "random": RandomPick}


def build_picker(spec: PluginSpec, seed: int | None = None) -> Picker:
    cls = PICKER_TYPES.get(spec.type)
    if cls is None:
        raise KeyError(f"unknown picker type {spec.type!r}; known: {', '.join(PICKER_TYPES)}")
    params = dict(spec.params)
    if cls is RandomPick and seed is not None:
        params.setdefault("seed", seed)
    try:
        return cls(**params)
    except TypeError as exc:
        raise TypeError(f"picker {spec.type!r}: bad parameters {spec.params}") from exc
