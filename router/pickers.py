"""Pickers: choose one scored candidate (last stage of a scheduling profile)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from operator import attrgetter
from dataclasses import dataclass, field
from typing import Protocol

from router.scheduler_config import PluginSpec
from router.scorers import Candidate


@dataclass(slots=True)
class Option:
    """A filtered candidate with its weighted cost and predicted time to first token."""

    candidate: Candidate
    cost: float
    ttft_s: float
    held_blocks: int  # blocks the worker holds in the index: breaks cost ties towards the emptier cache
    colocated: bool = False

    @property
    def address(self) -> str:
        return self.candidate.worker.address


class Picker(Protocol):
    def pick(self, options: Sequence[Option], turn: int) -> Option:
        """``turn`` counts the earlier decisions of this pool (for rotating pickers)."""


@dataclass(slots=True)
class MinCost:
    """Cheapest first; among equals the worker holding fewer blocks, so that new prefixes
    spread over the pool instead of all landing on the first worker listed."""

    def pick(self, options: Sequence[Option], turn: int) -> Option:
        best = min(options, key=_COST)
        ties = [o for o in options if o.cost == best.cost]
        return best if len(ties) == 1 else min(ties, key=_HELD)


_COST, _HELD = attrgetter("cost"), attrgetter("held_blocks")


@dataclass(slots=True)
class RoundRobin:
    """The next worker in address order; ignores the costs."""

    def pick(self, options: Sequence[Option], turn: int) -> Option:
        ordered = sorted(options, key=lambda o: o.address)
        return ordered[turn % len(ordered)]


@dataclass(slots=True)
class RandomPick:
    seed: int | None = None
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if self.seed is not None:
            self._rng.seed(self.seed)

    def pick(self, options: Sequence[Option], turn: int) -> Option:
        return self._rng.choice(list(options))


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
