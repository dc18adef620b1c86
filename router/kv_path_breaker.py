"""Circuit breaker on the disaggregated KV path (prefill -> store / direct transfer -> decode).

The store is a cache, not a single point of failure: when the KV path fails (a prefill
whose store write failed, a decode that could not read the prompt KV), the failing
request is recomputed colocated, and the breaker opens so that the next requests go
colocated straight away instead of each paying the decode worker's KV wait. While open,
one request per ``cooldown_s`` still goes disaggregated as a probe; the first KV-path
success closes the breaker, so the system returns to the store within about one
cool-down of the store's return. Transport-neutral: it watches outcomes, not the store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(slots=True)
class KVPathBreaker:
    cooldown_s: float = 2.0
    clock: Callable[[], float] = time.monotonic
    open: bool = False
    next_probe: float = 0.0
    opened: int = field(default=0)  # times the breaker opened (for logs and tests)

    def allow(self) -> bool:
        """May this request go disaggregated? Closed: yes; open: one probe per cool-down."""
        if not self.open:
            return True
        now = self.clock()
        if now < self.next_probe:
            return False
        self.next_probe = now + self.cooldown_s
        return True

    def failed(self, why: str) -> None:
        if not self.open:
            self.opened += 1
            log.warning("KV path failed (%s): routing colocated, probing every %.1fs", why, self.cooldown_s)
        self.open = True
        self.next_probe = self.clock() + self.cooldown_s

    def succeeded(self) -> None:
        if self.open:
            log.warning("KV path works again: disaggregated routing resumes")
        self.open = False
