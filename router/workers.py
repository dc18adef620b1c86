"""The router's view of one worker: address, role, health, last polled load."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from itertools import count

from contracts.rpc.worker_pb2 import WorkerLoad  # GetLoad's answer, kept as the worker sent it

# One counter for every worker: a change stamps the worker with the next value, so a reader that
# remembers the highest stamp it has seen finds the workers changed since (router/pool_columns.py).
_CHANGES = count(1)


class Role(str, Enum):
    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(slots=True)
class Worker:
    """A worker as the scheduler sees it.

    ``inflight_prefill_tokens`` / ``inflight_requests`` count the work this router sent
    that has not finished yet: charged when a request is placed, released as its prompt
    is computed and as it ends (router/worker_backend.py). The polled load lags by up to one
    poll interval in both directions (a burst not seen yet, finished work still
    counted), so the scheduler takes the larger of the two.
    """

    address: str
    role: Role
    load: WorkerLoad = field(default_factory=WorkerLoad)
    healthy: bool = True
    ready: bool = True
    prefill_rate_tps: float | None = None  # measured, EWMA of computed tokens / second (record_prefill stamps it)
    inflight_prefill_tokens: int = 0  # change through charge / release, which keep the fields below current
    inflight_requests: int = 0
    # Derived from the above, recomputed on every change rather than on every read: the
    # scheduler reads them for every worker of every decision.
    worker_id: str = field(init=False)  # id used by the prefix index (the KV-event topic); the address until known
    queued_prefill_tokens: int = field(init=False)  # prompt tokens ahead: polled or charged, the larger
    active_requests: int = field(init=False)  # requests running or waiting: polled or charged, the larger
    kv_fraction: float = field(init=False)  # share of the KV cache running requests hold
    kv_capacity: int = field(init=False)  # KV blocks of its cache, at least 1 (a divisor for scorers)
    changed: int = field(init=False)  # stamp of the last change of the fields above (_CHANGES)

    def __post_init__(self) -> None:
        self._derive()

    @property
    def available(self) -> bool:
        return self.healthy and self.ready

    def update_load(self, load: WorkerLoad) -> None:
        self.load = load
        self._derive()

    def charge(self, prefill_tokens: int, requests: int) -> None:
        self.inflight_prefill_tokens += prefill_tokens
        self.inflight_requests += requests
        self._derive_inflight()

    def release(self, prefill_tokens: int, requests: int) -> None:
        self.inflight_prefill_tokens = max(0, self.inflight_prefill_tokens - prefill_tokens)
        self.inflight_requests = max(0, self.inflight_requests - requests)
        self._derive_inflight()

    def _derive_inflight(self) -> None:
        """The part of _derive that the in-flight counts change (every decision charges)."""
        load = self.load
        self.queued_prefill_tokens = max(load.queued_prefill_tokens, self.inflight_prefill_tokens)
        self.active_requests = max(load.running_requests + load.waiting_requests, self.inflight_requests)
        self.changed = next(_CHANGES)

    def _derive(self) -> None:
        load = self.load
        self.worker_id = load.worker_id or self.address
        self.queued_prefill_tokens = max(load.queued_prefill_tokens, self.inflight_prefill_tokens)
        self.active_requests = max(load.running_requests + load.waiting_requests, self.inflight_requests)
        self.kv_fraction = load.active_kv_blocks / load.total_kv_blocks if load.total_kv_blocks else float(load.kv_usage)
        self.kv_capacity = load.total_kv_blocks or 1
        self.changed = next(_CHANGES)

    def record_prefill(self, computed_tokens: int, seconds: float, alpha: float = 0.2) -> None:
        if computed_tokens <= 0 or seconds <= 0:
            return
        rate = computed_tokens / seconds
        self.prefill_rate_tps = rate if self.prefill_rate_tps is None else (1 - alpha) * self.prefill_rate_tps + alpha * rate
        self.changed = next(_CHANGES)
