"""Choose where a request runs: colocated or disaggregated, which prefill and decode worker.

Input: the request's block-key chain, the workers (with their last polled load) and the
prefix index. Output: a Decision. Three policies: ``kv-aware`` (cost = weighted sum of
scorers, P/D decider, SLO-aware admission) and the ``round-robin`` / ``random``
baselines, which ignore the index and load and never reject.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from kvstore.block_key import BlockKey
from router.prefix_index import PrefixIndex
from router.scorers import (
    Candidate,
    WeightedScorer,
    default_colocated_scorers,
    default_decode_scorers,
    default_prefill_scorers,
    total_cost,
)
from router.workers import Worker

STORE_PUBLISHER = "kvstore"


class Policy(str, Enum):
    KV_AWARE = "kv-aware"
    ROUND_ROBIN = "round-robin"
    RANDOM = "random"


class Mode(str, Enum):
    COLOCATED = "colocated"
    DISAGGREGATED = "disaggregated"


class NoWorkersAvailable(Exception):
    """No healthy decode worker (every request needs one)."""


class AdmissionRejected(Exception):
    """Every placement would break the TTFT SLO; the client should retry later."""

    def __init__(self, predicted_ttft_s: float, slo_s: float, retry_after_s: int) -> None:
        super().__init__(
            f"predicted time to first token {predicted_ttft_s * 1000:.0f} ms exceeds the SLO of "
            f"{slo_s * 1000:.0f} ms on every worker; retry after {retry_after_s} s"
        )
        self.predicted_ttft_s = predicted_ttft_s
        self.retry_after_s = retry_after_s


@dataclass(slots=True)
class SchedulerConfig:
    policy: Policy = Policy.KV_AWARE
    colocate_threshold_tokens: int = 256  # uncached prompt tokens below which decode prefills itself
    prefill_saturation_tokens: int = 65536  # queued tokens per prefill worker that count as saturated
    ttft_slo_ms: float | None = None
    default_prefill_rate_tps: float = 8000.0  # until a worker's rate has been measured
    prefix_weight: float = 1.0
    seed: int | None = None


@dataclass(slots=True)
class ScheduleRequest:
    prompt_tokens: int
    block_keys: Sequence[BlockKey]
    block_size: int = 16
    priority: int = 0  # SamplingParams.priority: < 0 is never shed by SLO admission


@dataclass(slots=True)
class Charge:
    """The in-flight work a Decision added to its workers (see Worker); released as it completes.

    Every release is idempotent, so the backend may release on success, failure and
    cancellation paths alike without double counting.
    """

    prefiller: Worker  # computes the prompt: the prefill worker, or the decode worker when colocated
    prefill_tokens: int
    holders: list[Worker]  # each holds one in-flight request of this decision

    def prompt_computed(self) -> None:
        self.prefiller.release(self.prefill_tokens, 0)
        self.prefill_tokens = 0

    def finished(self, address: str) -> None:
        for worker in [w for w in self.holders if w.address == address]:
            worker.release(0, 1)
            self.holders.remove(worker)

    def release(self) -> None:
        self.prompt_computed()
        for worker in self.holders:
            worker.release(0, 1)
        self.holders.clear()


@dataclass(slots=True)
class Decision:
    mode: Mode
    prefill_worker: str | None  # address; None when colocated
    decode_worker: str
    predicted_hit_tokens: int = 0
    predicted_ttft_s: float = 0.0
    charge: Charge | None = field(default=None, repr=False, compare=False)


@dataclass(slots=True)
class _Option:
    mode: Mode
    candidate: Candidate
    cost: float
    ttft_s: float
    held_blocks: int  # blocks the worker holds in the index: breaks cost ties towards the emptier cache


@dataclass(slots=True)
class Scheduler:
    config: SchedulerConfig
    index: PrefixIndex | None = None
    prefill_scorers: list[WeightedScorer] = field(default_factory=list)
    decode_scorers: list[WeightedScorer] = field(default_factory=list)
    colocated_scorers: list[WeightedScorer] = field(default_factory=list)
    _rr: dict[str, int] = field(default_factory=lambda: {"prefill": 0, "decode": 0})
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        w = self.config.prefix_weight
        self.prefill_scorers = self.prefill_scorers or default_prefill_scorers(w)
        self.decode_scorers = self.decode_scorers or default_decode_scorers(w)
        self.colocated_scorers = self.colocated_scorers or default_colocated_scorers(w)
        if self.config.seed is not None:
            self._rng.seed(self.config.seed)

    def decide(
        self,
        request: ScheduleRequest,
        prefill_workers: Sequence[Worker],
        decode_workers: Sequence[Worker],
        exclude: frozenset[str] | set[str] = frozenset(),
    ) -> Decision:
        prefill = [w for w in prefill_workers if w.available and w.address not in exclude]
        decode = [w for w in decode_workers if w.available and w.address not in exclude]
        if not decode:
            raise NoWorkersAvailable("no healthy decode worker is available")
        if self.config.policy is Policy.KV_AWARE:
            decision = self._kv_aware(request, prefill, decode)
        else:
            decision = self._baseline(request, prefill, decode)
        decision.charge = self._charge(decision, request, prefill + decode)
        return decision

    # -- kv-aware ---------------------------------------------------------------

    def _kv_aware(self, request: ScheduleRequest, prefill: list[Worker], decode: list[Worker]) -> Decision:
        matches = self.index.match(request.block_keys) if self.index is not None else {}
        last = max(request.prompt_tokens - 1, 0)  # the last prompt token is always computed: it yields the first token
        store_hit = min(matches.get(STORE_PUBLISHER, 0) * request.block_size, last)

        def local(worker: Worker) -> Candidate:
            """Only the worker's own cache counts: a decode worker neither prefills (colocated)
            nor imports (disaggregated) from the store what it already holds."""
            return Candidate(worker, request.prompt_tokens, min(matches.get(worker.worker_id, 0) * request.block_size, last))

        def with_store(worker: Worker) -> Candidate:
            """A prefill worker pulls from the store the blocks that follow its own prefix."""
            own = local(worker).hit_tokens
            hit = max(own, store_hit)
            return Candidate(worker, request.prompt_tokens, hit, hit - own)

        colocated = [self._option(Mode.COLOCATED, local(w), self.colocated_scorers) for w in decode]
        disagg = [self._option(Mode.DISAGGREGATED, with_store(w), self.prefill_scorers) for w in prefill]
        best_colocated = min(colocated, key=_rank)
        preferred, fallback = (colocated, disagg) if self._prefer_colocated(best_colocated, prefill) else (disagg, colocated)

        slo_s = self.config.ttft_slo_ms / 1000 if self.config.ttft_slo_ms else None
        if request.priority < 0:
            slo_s = None  # an urgent request waits in a queue rather than being turned away
        chosen = self._cheapest_within_slo(preferred, slo_s) or self._cheapest_within_slo(fallback, slo_s)
        if chosen is None:
            assert slo_s is not None
            best_ttft = min(o.ttft_s for o in preferred + fallback)
            raise AdmissionRejected(best_ttft, slo_s, max(1, math.ceil(best_ttft - slo_s)))
        if chosen.mode is Mode.COLOCATED:
            return Decision(Mode.COLOCATED, None, chosen.candidate.worker.address, chosen.candidate.hit_tokens, chosen.ttft_s)
        decode_worker = min((self._option(Mode.DISAGGREGATED, local(w), self.decode_scorers) for w in decode), key=_rank)
        return Decision(
            Mode.DISAGGREGATED,
            chosen.candidate.worker.address,
            decode_worker.candidate.worker.address,
            chosen.candidate.hit_tokens,
            chosen.ttft_s,
        )

    def _prefer_colocated(self, best_colocated: _Option, prefill: list[Worker]) -> bool:
        if not prefill:
            return True
        if best_colocated.candidate.uncached_tokens < self.config.colocate_threshold_tokens:
            return True
        saturation = self.config.prefill_saturation_tokens
        return all(w.queued_prefill_tokens >= saturation for w in prefill)

    def _option(self, mode: Mode, candidate: Candidate, scorers: list[WeightedScorer]) -> _Option:
        rate = candidate.worker.prefill_rate_tps or self.config.default_prefill_rate_tps
        ttft = (candidate.queued_prefill_tokens + candidate.uncached_tokens) / rate
        held = self.index.num_blocks_of(candidate.worker.worker_id) if self.index is not None else 0
        return _Option(mode, candidate, total_cost(candidate, scorers), ttft, held)

    @staticmethod
    def _cheapest_within_slo(options: list[_Option], slo_s: float | None) -> _Option | None:
        ok = [o for o in options if slo_s is None or o.ttft_s <= slo_s]
        return min(ok, key=_rank) if ok else None

    # -- baselines --------------------------------------------------------------

    def _baseline(self, request: ScheduleRequest, prefill: list[Worker], decode: list[Worker]) -> Decision:
        decode_worker = self._pick("decode", decode)
        if not prefill or request.prompt_tokens < self.config.colocate_threshold_tokens:
            return Decision(Mode.COLOCATED, None, decode_worker.address)
        return Decision(Mode.DISAGGREGATED, self._pick("prefill", prefill).address, decode_worker.address)

    def _pick(self, pool: str, workers: list[Worker]) -> Worker:
        if self.config.policy is Policy.RANDOM:
            return self._rng.choice(workers)
        ordered = sorted(workers, key=lambda w: w.address)
        worker = ordered[self._rr[pool] % len(ordered)]
        self._rr[pool] += 1
        return worker

    # -- accounting -------------------------------------------------------------

    @staticmethod
    def _charge(decision: Decision, request: ScheduleRequest, workers: list[Worker]) -> Charge:
        """Count the decision on its workers until the backend releases it (see Charge)."""
        by_address = {w.address: w for w in workers}
        prefiller = by_address[decision.prefill_worker or decision.decode_worker]
        charge = Charge(prefiller, max(request.prompt_tokens - decision.predicted_hit_tokens, 0), [])
        prefiller.inflight_prefill_tokens += charge.prefill_tokens
        for address in filter(None, (decision.prefill_worker, decision.decode_worker)):
            by_address[address].inflight_requests += 1
            charge.holders.append(by_address[address])
        return charge


def _rank(option: _Option) -> tuple[float, int]:
    """Cheapest first; among equals the worker holding fewer blocks, so that new prefixes
    spread over the pool instead of all landing on the first worker listed."""
    return option.cost, option.held_blocks
