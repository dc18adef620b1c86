"""The router's view of one worker: address, role, health, last polled load."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from splitserve.rpc.worker_pb2 import WorkerLoad  # GetLoad's answer, kept as the worker sent it


class Role(str, Enum):
    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(slots=True)
class Worker:
    """A worker as the scheduler sees it.

    ``inflight_prefill_tokens`` / ``inflight_requests`` count the work this router sent
    that has not finished yet: charged when a request is placed, released as its prompt
    is computed and as it ends (router/backend.py). The polled load lags by up to one
    poll interval in both directions (a burst not seen yet, finished work still
    counted), so the scheduler takes the larger of the two.
    """

    address: str
    role: Role
    load: WorkerLoad = field(default_factory=WorkerLoad)
    healthy: bool = True
    ready: bool = True
    prefill_rate_tps: float | None = None  # measured, EWMA of computed tokens / second
    inflight_prefill_tokens: int = 0
    inflight_requests: int = 0

    @property
    def worker_id(self) -> str:
        """Id used by the prefix index (the worker's KV-event topic); the address until known."""
        return self.load.worker_id or self.address

    @property
    def available(self) -> bool:
        return self.healthy and self.ready

    @property
    def queued_prefill_tokens(self) -> int:
        return max(self.load.queued_prefill_tokens, self.inflight_prefill_tokens)

    @property
    def active_requests(self) -> int:
        return max(self.load.running_requests + self.load.waiting_requests, self.inflight_requests)

    def update_load(self, load: WorkerLoad) -> None:
        self.load = load

    def release(self, prefill_tokens: int, requests: int) -> None:
        self.inflight_prefill_tokens = max(0, self.inflight_prefill_tokens - prefill_tokens)
        self.inflight_requests = max(0, self.inflight_requests - requests)

    def record_prefill(self, computed_tokens: int, seconds: float, alpha: float = 0.2) -> None:
        if computed_tokens <= 0 or seconds <= 0:
            return
        rate = computed_tokens / seconds
        self.prefill_rate_tps = rate if self.prefill_rate_tps is None else (1 - alpha) * self.prefill_rate_tps + alpha * rate
