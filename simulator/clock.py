"""Simulated time: wall-clock time multiplied by a speed-up factor.

Every duration a simulated worker spends (prefill, decode step, transfer) is a
simulated duration; it sleeps ``seconds / speedup`` of wall time. Latencies measured
by a client in wall time convert back with ``* speedup``.

The time is the running event loop's (``loop.time()``): on a normal loop that is the
wall clock; on a virtual-time loop (simulator/virtual_loop.py) the same workers run as
a discrete-event simulation, as fast as the CPU allows.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(slots=True)
class SimClock:
    speedup: float = 1.0

    def __post_init__(self) -> None:
        if self.speedup <= 0:
            raise ValueError(f"speed-up must be > 0, got {self.speedup}")

    def now(self) -> float:
        """Simulated seconds (the event loop's clock, scaled)."""
        return asyncio.get_running_loop().time() * self.speedup

    def wall(self) -> float:
        """The event loop's own seconds (virtual on a virtual-time loop)."""
        return asyncio.get_running_loop().time()

    async def sleep(self, sim_seconds: float) -> None:
        if sim_seconds > 0:
            await asyncio.sleep(sim_seconds / self.speedup)

    async def sleep_until(self, sim_deadline: float) -> None:
        """Sleep to an absolute simulated time: a worker that schedules each step from the
        previous step's end (not from when it woke up) does not accumulate the event loop's
        wake-up lateness."""
        await self.sleep(sim_deadline - self.now())

    async def sleep_until_unless(self, sim_deadline: float, event: asyncio.Event) -> None:
        """``sleep_until``, but return early when ``event`` is set."""
        left = sim_deadline - self.now()
        if left <= 0 or event.is_set():
            return
        try:
            await asyncio.wait_for(event.wait(), left / self.speedup)
        except TimeoutError:
            pass
