"""One pool's load columns for the scheduler, refreshed row by row as its workers change.

A decision reads the same load fields of every worker of a pool, and most workers have not
changed since the last decision (a decision charges one or two of them; a load poll updates
each once a second). Reading every field of every worker afresh cost ~10 us per pool at 32
workers on the 2-core dev VM; here a decision compares one stamp per worker (Worker.changed)
and re-reads only the rows that moved. Each profile's load cost (the weighted sum of its
scorers that read one worker field, e.g. queued tokens, running requests) is kept the same
way, so a decision adds only the terms that depend on the request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import compress
from operator import attrgetter, ne

from router.workers import Worker

_CHANGED = attrgetter("changed")

# Worker fields a load scorer may read, by the Candidates column name the scorer declares.
_FIELDS = {
    "queued_prefill_tokens": "queued_prefill_tokens",
    "active_requests": "active_requests",
    "kv_usage": "kv_fraction",
}


class LoadTerms:
    """A profile's scorers that read one worker field, from (Candidates column, weight) each."""

    __slots__ = ("_terms",)

    def __init__(self, terms: list[tuple[str, float]]) -> None:
        self._terms = [(attrgetter(_FIELDS[column]), weight) for column, weight in terms]

    def cost_of(self, worker: Worker) -> float:
        return sum(weight * field_of(worker) for field_of, weight in self._terms)


@dataclass(slots=True)
class PoolColumns:
    """Columns of one pool's workers (row i is ``workers[i]``), as of the workers' ``stamps``."""

    profiles: dict[str, LoadTerms]  # the profiles scoring this pool
    workers: list[Worker] = field(default_factory=list)
    worker_ids: list[str] = field(default_factory=list)
    queued_prefill_tokens: list[int] = field(default_factory=list)
    active_requests: list[int] = field(default_factory=list)
    kv_usage: list[float] = field(default_factory=list)
    kv_capacity: list[int] = field(default_factory=list)
    prefill_rate_tps: list[float | None] = field(default_factory=list)
    load_costs: dict[str, list[float]] = field(default_factory=dict)  # profile -> each row's load cost
    stamps: list[int] = field(default_factory=list)  # each row's Worker.changed when it was read

    def refresh(self, workers: list[Worker]) -> None:
        """Make the columns those of ``workers`` (the same list as last time, or another).

        Stamps are unique across workers and changes, so equal stamp lists mean the same
        workers, unchanged; a row whose stamp differs is re-read (a changed or another worker)."""
        stamps = list(map(_CHANGED, workers))
        if stamps == self.stamps:
            return
        if len(stamps) != len(self.stamps):
            self._rebuild(workers, stamps)
            return
        for row in list(compress(range(len(stamps)), map(ne, stamps, self.stamps))):  # C-level scan
            self._read(row, workers[row])
        self.stamps = stamps

    def _rebuild(self, workers: list[Worker], stamps: list[int]) -> None:
        n = len(workers)
        self.workers, self.worker_ids = list(workers), [""] * n
        self.queued_prefill_tokens, self.active_requests, self.kv_capacity = [0] * n, [0] * n, [0] * n
        self.kv_usage, self.prefill_rate_tps = [0.0] * n, [None] * n
        self.load_costs = {name: [0.0] * n for name in self.profiles}
        for row, w in enumerate(workers):
            self._read(row, w)
        self.stamps = stamps

    def _read(self, row: int, w: Worker) -> None:
        self.workers[row] = w
        self.worker_ids[row] = w.worker_id
        self.queued_prefill_tokens[row] = w.queued_prefill_tokens
        self.active_requests[row] = w.active_requests
        self.kv_usage[row] = w.kv_fraction
        self.kv_capacity[row] = w.kv_capacity
        self.prefill_rate_tps[row] = w.prefill_rate_tps
        for name, terms in self.profiles.items():
            self.load_costs[name][row] = terms.cost_of(w)
