"""A simulated prefill worker: one prompt at a time, first-come first-served.

A prefill of ``new`` uncached and ``cached`` prefix tokens takes the profile's
``prefill_s(new, cached)``; the prompt's full blocks then stay in the block cache and
are announced as KV events, exactly as a real worker's prefix cache would.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from kvstore.block_key import BlockKey
from simulator.block_cache import BlockCache
from simulator.node import SimNode


class PromptTooLarge(Exception):
    """The prompt's KV does not fit in this worker's whole cache."""


@dataclass(slots=True)
class PrefillResult:
    first_token_id: int
    cached_tokens: int
    computed_tokens: int
    started_s: float  # simulated time the prefill began (after queueing)
    finished_s: float


@dataclass(slots=True)
class _Job:
    request_id: str
    prompt_len: int
    chain: list[BlockKey]
    estimated_new_tokens: int
    arrived_s: float
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class SimPrefillWorker:
    def __init__(self, node: SimNode) -> None:
        self.node = node
        self.cache: BlockCache = node.cache
        self._queue: deque[_Job] = deque()
        self._current: _Job | None = None
        self._wake = asyncio.Event()
        self._busy_until = 0.0  # simulated time the last prefill ended

    @property
    def running(self) -> int:
        return 1 if self._current is not None else 0

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def queued_prefill_tokens(self) -> int:
        current = self._current.estimated_new_tokens if self._current else 0
        return current + sum(j.estimated_new_tokens for j in self._queue)

    async def prefill(self, request_id: str, prompt_len: int, chain: list[BlockKey]) -> PrefillResult:
        """Queue, compute and cache a prompt; ``chain``: its block keys (SimNode.chain)."""
        if len(chain) + 1 > self.cache.capacity:
            raise PromptTooLarge(f"a {prompt_len}-token prompt needs more KV blocks than this worker has ({self.cache.capacity})")
        hit = min(self.cache.match(chain) * self.node.block_size, prompt_len - 1)
        job = _Job(request_id, prompt_len, chain, prompt_len - hit, self.node.clock.now())
        self._queue.append(job)
        self._wake.set()
        try:
            return await asyncio.shield(job.done)
        except asyncio.CancelledError:
            self.abort(request_id)
            raise

    def abort(self, request_id: str) -> bool:
        for job in list(self._queue):
            if job.request_id == request_id:
                self._queue.remove(job)
                job.done.cancel()
                return True
        return False

    async def run(self) -> None:
        """The engine loop (one task per worker, until cancelled)."""
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            job = self._current = self._queue.popleft()
            try:
                await self._compute(job)
            finally:
                self._current = None

    async def _compute(self, job: _Job) -> None:
        bs = self.node.block_size
        anonymous = 1 if job.prompt_len % bs else 0
        allocation = self.cache.allocate(job.chain, anonymous)
        assert allocation is not None, "a lone prefill always fits: checked against the capacity on arrival"
        self.node.announce_removed(allocation.evicted)
        cached = min(allocation.hit_blocks * bs, job.prompt_len - 1)
        new = job.prompt_len - cached
        start = max(job.arrived_s, self._busy_until)  # not `now`: the event loop's lateness must not add up
        self._busy_until = start + self.node.profile.prefill.seconds(new, cached)
        await self.node.clock.sleep_until(self._busy_until)
        self.node.announce_stored(allocation.new_keys)
        self.cache.release(job.chain, anonymous)
        if not job.done.done():
            job.done.set_result(PrefillResult(self.node.token_at(0), cached, new, start, self._busy_until))
