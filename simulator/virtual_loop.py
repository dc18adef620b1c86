"""An asyncio event loop on virtual time: a discrete-event simulation of asyncio code.

When nothing is ready, the loop would block in ``select`` until the next timer; here
``select`` returns at once and the clock jumps to that timer instead. The simulated
workers (which read time only through ``loop.time()``, see clock.py) therefore run
unchanged, as fast as the CPU allows and independent of the machine's load. Only
in-process code may run on it: sockets are still polled, but never waited for.
"""

from __future__ import annotations

import asyncio
import selectors


class StalledSimulation(RuntimeError):
    """Nothing can run and nothing is scheduled: every task waits on something that never happens."""


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise StalledSimulation("virtual-time loop: no task can run and no timer is scheduled")
        self.now += timeout
        return []


def new_virtual_loop() -> asyncio.AbstractEventLoop:
    selector = _JumpingSelector()
    loop = asyncio.SelectorEventLoop(selector)
    loop.time = lambda: selector.now  # type: ignore[method-assign]  # the loop's one clock, by design
    return loop
