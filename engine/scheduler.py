"""Continuous batching: running sequences first (decodes and unfinished prefill chunks),
then new ones, under a per-step token budget; preemption by recompute when blocks run out.

Priorities (``SamplingParams.priority``, lower value = more urgent, vLLM's convention): the
waiting queue is ordered by (priority, arrival), and preemption frees the least urgent
running sequence, the latest arrival among equals.

The plan of a step is just ``{sequence: num_new_tokens}`` in batch order.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field

from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.sequence import Sequence, SequenceStatus


@dataclass(slots=True)
class SchedulerOutput:
    plan: dict[Sequence, int]  # sequence -> new tokens computed this step, in batch order
    imports: list[Sequence] = field(default_factory=list)  # admitted with KV to scatter before the step
    preempted: list[Sequence] = field(default_factory=list)


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager) -> None:
        self.config = config
        self.blocks = block_manager
        self.waiting: list[Sequence] = []  # sorted by _rank
        self.running: list[Sequence] = []
        self._arrivals = itertools.count()
        self._arrival: dict[Sequence, int] = {}

    def _rank(self, seq: Sequence) -> tuple[int, int]:
        return seq.params.priority, self._arrival[seq]

    def add(self, seq: Sequence) -> None:
        self._arrival[seq] = next(self._arrivals)
        self._enqueue(seq)

    def _enqueue(self, seq: Sequence) -> None:
        bisect.insort(self.waiting, seq, key=self._rank)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def queued_prefill_tokens(self) -> int:
        waiting = sum(s.num_uncomputed for s in self.waiting)
        return waiting + sum(s.num_uncomputed for s in self.running if s.num_uncomputed > 1)

    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        out = SchedulerOutput(plan={})
        queue = list(self.running)
        while queue and budget > 0:
            seq = queue.pop(0)
            while self.blocks.room(seq) < 1:
                # the least urgent of all running sequences, even one already planned this step
                victim = max([*out.plan, *queue, seq], key=self._rank)
                if victim in out.plan:
                    budget += out.plan.pop(victim)
                elif victim is not seq:
                    queue.remove(victim)
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            else:
                # a prefill chunk shrinks to the free blocks rather than preempting others
                n = min(seq.num_uncomputed, budget, self.blocks.room(seq))
                self.blocks.allocate(seq, seq.num_computed_tokens + n)
                out.plan[seq] = n
                budget -= n
        if out.preempted:
            return out  # blocks are scarce: do not admit new work this step
        i, blocked = 0, False
        while i < len(self.waiting) and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[i]
            if (blocked and not seq.landed) or not self._admit(seq, out):
                # later arrivals wait behind it, except those whose KV has landed: they hold
                # their blocks already and need at most one more (else they could hold the very
                # blocks the one ahead waits for)
                blocked, i = True, i + 1
                continue
            self.waiting.pop(i)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            n = min(seq.num_uncomputed, budget, self.blocks.room(seq))
            self.blocks.allocate(seq, seq.num_computed_tokens + n)
            out.plan[seq] = n
            budget -= n
        return out

    def _admit(self, seq: Sequence, out: SchedulerOutput) -> bool:
        """Attach cached prefix (and imported KV) blocks; False (nothing held) if it cannot start now."""
        if seq.landed:  # its blocks hold the imported KV already (first_scheduled was set then)
            if not self.blocks.can_allocate(seq, seq.num_computed_tokens + 1):
                return False  # it keeps its blocks
            out.imports.append(seq)  # the step waits for the copy before it reads them
            return True
        # the last token is always computed: its logits give the next token
        hit = self.blocks.match_prefix(seq, seq.num_tokens - 1)
        seq.num_computed_tokens = hit
        imported = 0
        source = seq.pending_kv
        if source is not None and hit // self.blocks.block_size >= seq.pending_kv_start_block and source.usable():
            imported = min(seq.pending_kv_tokens, seq.num_tokens - 1)
        else:
            seq.pending_kv = None  # the cached head it relied on is gone, or the peer's lease ran out: recompute
        have = max(hit, imported)
        first_chunk = min(seq.num_tokens - have, 1)  # at least one token joins this step
        if not self.blocks.can_allocate(seq, have + first_chunk):
            self.blocks.release(seq)
            seq.num_computed_tokens = 0
            return False
        if not seq.first_scheduled:
            seq.first_scheduled = True
            seq.num_cached_tokens = have
            self.blocks.record_query(seq.num_prompt_tokens, hit)
        if imported > hit:
            self.blocks.allocate(seq, imported)
            seq.num_computed_tokens = imported
            out.imports.append(seq)
        return True

    def _preempt(self, seq: Sequence) -> None:
        """Free ``seq``'s blocks; it recomputes prompt + output so far when readmitted."""
        self.running.remove(seq)
        self.blocks.release(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        self._enqueue(seq)  # its arrival is kept: it goes ahead of later arrivals of its priority

    def finish(self, seq: Sequence, keep_blocks: bool = False) -> None:
        """Remove ``seq`` from the batch; free its blocks unless a prefill_only request holds them."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._arrival.pop(seq, None)
        if not keep_blocks:
            self.blocks.release(seq)
