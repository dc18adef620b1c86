"""A simulated decode worker: continuous batching over a block-exact KV cache.

Each engine step decodes one token for every running sequence and takes the profile's
``decode_step_s(batch, context)``; a colocated request's prefill runs inside the step
that admits it (the batch waits for it, as without chunked prefill). A disaggregated
request first imports the prompt KV it lacks (``transfer_s(bytes)``, off the engine
loop), then joins the batch. A request is admitted when its prompt blocks plus room for
its output fit in the cache, first come first served.

To keep 64 workers cheap in one process, steps without admissions are run several at
a time (up to ``tick_s`` of wall time), and tokens reach the client in chunks: the first
token at once, then every ``flush_s`` of wall time and at the end. An arrival cuts a
multi-step run short at the next step boundary.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from kvstore.block_key import BlockKey
from simulator.block_cache import BlockCache
from simulator.node import SimNode
from simulator.prefill import PromptTooLarge


@dataclass(slots=True)
class Chunk:
    token_ids: list[int]
    finish_reason: str = ""
    cached_tokens: int = 0
    completion_tokens: int = 0


@dataclass(slots=True)
class _Seq:
    request_id: str
    prompt_len: int
    chain: list[BlockKey]
    anonymous: int  # blocks without a key: the prompt's partial tail and the output
    to_generate: int  # tokens this worker emits
    colocated: bool
    generated: int = 0  # tokens of the answer so far, counting a prefill worker's first token
    emitted: int = 0  # of those, the ones this worker produced
    new_keys: list[BlockKey] = field(default_factory=list)  # announced once their KV is in
    cached_tokens: int = 0
    estimated_new_tokens: int = 0
    pending: list[int] = field(default_factory=list)
    last_flush: float = 0.0
    out: asyncio.Queue = field(default_factory=asyncio.Queue)


class SimDecodeWorker:
    def __init__(self, node: SimNode, tick_s: float = 0.01, flush_s: float = 0.25, keep_imports: bool = False) -> None:
        """As our decode workers do (engine/block_manager.py), KV imported for a disaggregated
        request is the first to be evicted once the request ends (the prefill worker holds the
        same blocks), so the cache keeps what only this worker has. ``keep_imports=True`` is the
        what-if of the workers before that change: imported KV ages like any other."""
        self.node = node
        self.keep_imports = keep_imports
        self.cache: BlockCache = node.cache
        self.tick_s, self.flush_s = tick_s, flush_s
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []
        self._importing = 0
        self._wake = asyncio.Event()
        self._busy_until = 0.0  # simulated time the last step ended

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting) + self._importing

    @property
    def queued_prefill_tokens(self) -> int:
        return sum(s.estimated_new_tokens for s in self._waiting if s.colocated)

    async def generate(
        self, request_id: str, prompt_len: int, chain: list[BlockKey], max_tokens: int, first_token_sent: bool
    ) -> AsyncIterator[Chunk]:
        """Yield Chunks until the request finishes (colocated when ``first_token_sent`` is False).
        ``chain``: the block keys of the prompt (SimNode.chain)."""
        bs = self.node.block_size
        blocks = math.ceil((prompt_len + max_tokens) / bs)
        if blocks > self.cache.capacity:
            raise PromptTooLarge(f"{prompt_len} prompt + {max_tokens} output tokens need {blocks} KV blocks; "
                                 f"this worker has {self.cache.capacity}")  # fmt: skip
        seq = _Seq(request_id, prompt_len, chain, blocks - len(chain), max_tokens - (1 if first_token_sent else 0),
                   colocated=not first_token_sent, generated=1 if first_token_sent else 0)  # fmt: skip
        if first_token_sent:
            await self._import(seq)
        else:
            hit = min(self.cache.match(chain) * bs, prompt_len - 1)
            seq.estimated_new_tokens = prompt_len - hit
        if seq.to_generate <= 0:
            yield Chunk([], "length", 0, seq.generated)
            return
        self._waiting.append(seq)
        self._wake.set()
        try:
            while True:
                chunk = await seq.out.get()
                yield chunk
                if chunk.finish_reason:
                    return
        finally:
            self.abort(request_id)

    async def _import(self, seq: _Seq) -> None:
        """Pull the prompt KV this worker lacks from the prefill worker (GPU to GPU)."""
        held = self.cache.match(seq.chain) * self.node.block_size
        missing = max(seq.prompt_len - held, 0)
        self._importing += 1
        try:
            await self.node.clock.sleep(self.node.profile.transfer.seconds(missing * self.node.profile.kv_bytes_per_token))
        finally:
            self._importing -= 1
        seq.cached_tokens = seq.prompt_len

    def abort(self, request_id: str) -> bool:
        for seq in list(self._waiting):
            if seq.request_id == request_id:
                self._waiting.remove(seq)
                return True
        for seq in self._running:
            if seq.request_id == request_id:
                self._running.remove(seq)
                self._release(seq)
                return True
        return False

    async def run(self) -> None:
        """The engine loop (one task per worker, until cancelled)."""
        clock, model = self.node.clock, self.node.profile.decode
        while True:
            admitted = self._admit()
            if not self._running:
                self._wake.clear()
                await self._wake.wait()
                self._busy_until = clock.now()  # idle until now; from here steps run back to back
                continue
            prefill_s = sum(self._prefill_seconds(s) for s in admitted)
            context = sum(s.prompt_len + s.generated for s in self._running)
            step_s = model.step_seconds(len(self._running), context)
            if admitted or self._waiting:
                steps = 1  # something changed or waits for room: one step, then look again
            else:
                left = min(s.to_generate - s.emitted for s in self._running)
                steps = max(1, min(left, int(self.tick_s * clock.speedup / step_s)))
            self._wake.clear()
            start = self._busy_until  # back to back while busy: the event loop's lateness does not add up
            if steps == 1:
                self._busy_until = start + prefill_s + step_s
                await clock.sleep_until(self._busy_until)
            else:
                await clock.sleep_until_unless(start + steps * step_s, self._wake)
                done = min(steps, max(1, math.ceil((clock.now() - start) / step_s - 1e-9)))
                self._busy_until = start + done * step_s
                await clock.sleep_until(self._busy_until)
                steps = done
            for s in admitted:
                self.node.announce_stored(s.new_keys)
            self._emit(steps, admitted)

    def _admit(self) -> list[_Seq]:
        admitted = []
        limit = self.node.profile.decode.max_batch
        while self._waiting and len(self._running) < limit:
            seq = self._waiting[0]
            allocation = self.cache.allocate(seq.chain, seq.anonymous)
            if allocation is None:
                break  # wait for running requests to free room
            self._waiting.popleft()
            self.node.announce_removed(allocation.evicted)
            if seq.colocated:
                seq.cached_tokens = min(allocation.hit_blocks * self.node.block_size, seq.prompt_len - 1)
            seq.new_keys = allocation.new_keys
            self._running.append(seq)
            admitted.append(seq)
        return admitted

    def _prefill_seconds(self, seq: _Seq) -> float:
        if not seq.colocated:
            return 0.0
        new = seq.prompt_len - seq.cached_tokens
        return self.node.profile.prefill.seconds(new, seq.cached_tokens)

    def _emit(self, steps: int, admitted: list[_Seq]) -> None:
        now = self.node.clock.wall()
        for seq in list(self._running):
            owed = seq.to_generate - seq.emitted
            n = min(steps, owed)
            seq.pending += [self.node.token_at(seq.generated + i) for i in range(n)]
            seq.generated += n
            seq.emitted += n
            finished = n == owed
            first = seq.colocated and seq in admitted
            if finished or first or now - seq.last_flush >= self.flush_s:
                reason = "length" if finished else ""
                seq.out.put_nowait(Chunk(seq.pending, reason, seq.cached_tokens, seq.generated))
                seq.pending, seq.last_flush = [], now
            if finished:
                self._running.remove(seq)
                self._release(seq)

    def _release(self, seq: _Seq) -> None:
        imported = () if seq.colocated or self.keep_imports else set(seq.new_keys)
        self.cache.release(seq.chain, seq.anonymous, imported)
