"""Choose where a request runs: colocated or disaggregated, which prefill and decode worker.

Input: the request's block-key chain, the workers (with their last polled load) and the
prefix index. Output: a Decision. The policy is data (router/scheduler_config.py): for
each placement (prefill worker, decode worker, decode worker that also prefills) a
profile of filters -> weighted scorers -> picker, and a P/D decider:

1. candidates: the available workers of the pool, each with the prompt tokens it holds;
2. filters drop candidates (router/filters.py), scorers sum into a cost (router/scorers.py);
3. the decider prefers colocated when the part to compute is short, the prefill pool is
   saturated, or (basis ``cost``) a decode worker holds more of the prompt than the best
   prefill worker and costs less, or (basis ``cheapest``) the best decode worker costs less
   whatever it holds; else disaggregated; with a TTFT SLO, a placement predicted to break it
   is skipped, and when every one would, the request is rejected (AdmissionRejected);
4. the profile's picker chooses among what is left (router/pickers.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from itertools import repeat
from operator import mul

from kvstore.block_key import BlockKey
from router.filters import Filter, apply_filters, build_filter
from router.inflight_prefixes import InflightPrefixes
from router.pickers import Option, Options, Picker, RandomPick, build_picker
from router.pool_columns import LoadTerms, PoolColumns
from router.prefix_index import STORE_PUBLISHER, PrefixIndex
from router.scheduler_config import (  # noqa: F401 (re-exported)
    DeciderBasis,
    PluginSpec,
    Policy,
    SchedulerConfig,
    SchedulerConfigError,
)
from router.scorers import Candidates, WeightedScorer, build_scorer, total_costs
from router.workers import Worker


def _reads_evictions(spec: PluginSpec) -> bool:
    return spec.type == "eviction-cost" or (spec.type == "cache-pressure" and bool(spec.params.get("recency")))


def _no_blocks(publisher: str) -> int:
    return 0


# Scorer types that read the prefix index; a policy without them never looks it up.
_PREFIX_SCORERS = frozenset({"uncached-tokens", "kv-import-tokens", "predicted-ttft", "cache-pressure"})


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
    inflight: InflightPrefixes | None = None  # where the prompt's chain counts as held until computed
    chain: Sequence[BlockKey] = ()

    def prompt_computed(self) -> None:
        self.prefiller.release(self.prefill_tokens, 0)
        self.prefill_tokens = 0
        if self.inflight is not None:
            self.inflight.drop(self.prefiller.worker_id, self.chain)
            self.inflight = None

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
class _Profile:
    filters: list[Filter]
    scorers: list[WeightedScorer]
    picker: Picker
    pool: str  # "prefill" | "decode": whose turn counter a rotating picker reads
    reads_sole: bool  # a scorer reads Candidates.sole_blocks
    eviction_cap: float | None  # max_factor of a scorer reading Candidates.eviction_shares / eviction_youth
    load_terms: LoadTerms | None  # its scorers that read one worker column (None with filters: rows may drop)


class Scheduler:
    """Runs the configured pipeline; `decide` is the one entry point (the router's and the
    endpoint picker's): a tokenized request and the pools in, the chosen workers out."""

    def __init__(self, config: SchedulerConfig, index: PrefixIndex | None = None) -> None:
        self.config = config.resolved()
        self.index = index
        self._profiles = {
            name: _Profile(
                [build_filter(f) for f in spec.filters],
                [build_scorer(s) for s in spec.scorers],
                build_picker(spec.picker, self.config.seed),
                "prefill" if name == "prefill" else "decode",
                any(s.type == "cache-pressure" for s in spec.scorers),
                next((float(s.params.get("max_factor", 4.0)) for s in spec.scorers if _reads_evictions(s)), None),
                None,
            )
            for name, spec in self.config.profiles.items()
        }
        for profile in self._profiles.values():
            if not profile.filters:
                columns = [(ws.scorer.column, ws.weight) for ws in profile.scorers if ws.scorer.column is not None]
                profile.load_terms = LoadTerms(columns)
        self._pools = {
            pool: PoolColumns({n: p.load_terms for n, p in self._profiles.items() if p.pool == pool and p.load_terms})
            for pool in ("prefill", "decode")
        }
        # Eviction ages count from a block's last use only if the index hears of uses: the
        # scheduler touches the prefix its chosen prefiller hits.
        self._touches = any(p.eviction_cap is not None for p in self._profiles.values())
        self._turns = {"prefill": 0, "decode": 0}
        self._reads_index = self.config.basis is not DeciderBasis.PROMPT or any(
            s.type in _PREFIX_SCORERS for spec in self.config.profiles.values() for s in spec.scorers
        )
        use_inflight = self.config.inflight_prefixes and self._reads_index and index is not None
        self.inflight = InflightPrefixes() if use_inflight else None

    def decide(
        self,
        request: ScheduleRequest,
        prefill_workers: Sequence[Worker],
        decode_workers: Sequence[Worker],
        exclude: frozenset[str] | set[str] = frozenset(),
    ) -> Decision:
        if exclude:
            prefill = [w for w in prefill_workers if w.healthy and w.ready and w.address not in exclude]
            decode = [w for w in decode_workers if w.healthy and w.ready and w.address not in exclude]
        else:  # Worker.available, read inline: a property call per worker is a measurable share of a decision
            prefill = [w for w in prefill_workers if w.healthy and w.ready]
            decode = [w for w in decode_workers if w.healthy and w.ready]
        if not decode:
            raise NoWorkersAvailable("no healthy decode worker is available")
        decision, workers = self._place(request, prefill, decode)
        if self._touches and self.index is not None and decision.predicted_hit_tokens:
            hit_blocks = decision.predicted_hit_tokens // request.block_size
            self.index.touch(workers[0].worker_id, request.block_keys[:hit_blocks])
        decision.charge = self._charge(decision, request, workers)
        if self.inflight is not None and request.block_keys:
            self.inflight.add(workers[0].worker_id, request.block_keys)
            decision.charge.inflight, decision.charge.chain = self.inflight, request.block_keys
        return decision

    def _place(self, request: ScheduleRequest, prefill: list[Worker], decode: list[Worker]) -> tuple[Decision, list[Worker]]:
        """The decision and its workers (prefill worker first when disaggregated)."""
        use_index = self._reads_index and self.index is not None
        matches = self.index.match(request.block_keys) if use_index and self.index is not None else {}
        if self.inflight is not None:
            matches = self.inflight.merge_into(matches, request.block_keys)
        held = self.index.num_blocks_of if use_index and self.index is not None else _no_blocks
        prompt, bs = request.prompt_tokens, request.block_size
        last = max(prompt - 1, 0)  # the last prompt token is always computed: it yields the first token

        def hit_tokens(ids: list[str]) -> list[int]:  # min(blocks held * bs, last) per worker, in C-level maps
            if not matches:
                return [0] * len(ids)
            tokens = list(map(mul, map(matches.get, ids, repeat(0)), repeat(bs)))
            if tokens and max(tokens) > last:  # e.g. holds every block of a prompt that fills its blocks exactly
                return [t if t <= last else last for t in tokens]
            return tokens

        # Only the worker's own cache counts on the decode side: a decode worker neither prefills
        # (colocated) nor imports (disaggregated) from the store what it already holds.
        decode_pool = self._pools["decode"]
        decode_pool.refresh(decode)
        local = Candidates.of_pool(decode_pool, prompt, hit_tokens(decode_pool.worker_ids))
        colocated = self._options("colocated", local, held)
        disagg: Options | None = None

        def disaggregated() -> Options:  # built only when the decider or a fallback looks at it
            nonlocal disagg
            if disagg is None:
                # A prefill worker pulls from the store the blocks that follow its own prefix.
                pool = self._pools["prefill"]
                pool.refresh(prefill)
                own = hit_tokens(pool.worker_ids)
                store_hit = min(matches.get(STORE_PUBLISHER, 0) * bs, last)
                if store_hit:
                    pulling = Candidates.of_pool(pool, prompt, [max(o, store_hit) for o in own],
                                                 [max(store_hit - o, 0) for o in own])  # fmt: skip
                else:
                    pulling = Candidates.of_pool(pool, prompt, own)
                disagg = self._options("prefill", pulling, held)
            return disagg

        slo_s = self.config.ttft_slo_ms / 1000 if self.config.ttft_slo_ms else None
        if request.priority < 0:
            slo_s = None  # an urgent request waits in a queue rather than being turned away
        if self._prefer_colocated(request, colocated, disaggregated, prefill):
            chosen = self._pick_within_slo("colocated", colocated, slo_s)
            chosen = chosen or self._pick_within_slo("prefill", disaggregated(), slo_s)
        else:
            chosen = self._pick_within_slo("prefill", disaggregated(), slo_s)
            chosen = chosen or self._pick_within_slo("colocated", colocated, slo_s)
        if chosen is None:
            assert slo_s is not None
            best_ttft = min(o.ttft_s(i) for o in (colocated, disaggregated()) for i in range(len(o)))
            raise AdmissionRejected(best_ttft, slo_s, max(1, math.ceil(best_ttft - slo_s)))
        if chosen.colocated:
            self._turns["decode"] += 1
            return Decision(Mode.COLOCATED, None, chosen.address, chosen.hit_tokens, chosen.ttft_s), [chosen.worker]
        decode_option = self._pick("decode", self._options("decode", local, held))
        self._turns["prefill"] += 1
        self._turns["decode"] += 1
        decision = Decision(Mode.DISAGGREGATED, chosen.address, decode_option.address, chosen.hit_tokens, chosen.ttft_s)
        return decision, [chosen.worker, decode_option.worker]

    def _prefer_colocated(
        self, request: ScheduleRequest, colocated: Options, disaggregated: Callable[[], Options], prefill: list[Worker]
    ) -> bool:
        if not prefill:  # (filters never drop a whole pool: no prefill options only without prefill workers)
            return True
        if self.config.basis is DeciderBasis.PROMPT:  # the baselines: prompt length only
            return request.prompt_tokens < self.config.colocate_threshold_tokens
        best = self._pick("colocated", colocated)
        if best.uncached_tokens < self.config.colocate_threshold_tokens:
            return True
        disagg = disaggregated()
        saturation = self.config.prefill_saturation_tokens
        if min(disagg.candidates.queued_prefill_tokens, default=0) >= saturation:
            return True
        if self.config.basis is DeciderBasis.COST:
            # A decode worker that holds more of the prompt than the chosen prefill worker, and is
            # cheaper all told, computes the rest itself (a conversation's earlier turn lives there).
            other = self._pick("prefill", disagg)
            return best.hit_tokens > other.hit_tokens and best.cost < other.cost
        if self.config.basis is DeciderBasis.CHEAPEST:
            return best.cost < self._pick("prefill", disagg).cost
        return False

    def _options(self, profile_name: str, candidates: Candidates, held: Callable[[str], int]) -> Options:
        profile = self._profiles[profile_name]
        if profile.reads_sole and candidates.sole_blocks is None and self.index is not None:
            candidates.sole_blocks = self.index.sole_blocks_of(candidates.worker_ids)
        if profile.eviction_cap is not None and candidates.eviction_shares is None and self.index is not None:
            estimates = self.index.eviction_estimates_of(candidates.worker_ids, profile.eviction_cap)
            candidates.eviction_shares, candidates.eviction_youth = estimates
        load_costs = None
        if profile.load_terms is not None:  # no filters: the rows are the pool's
            load_costs = self._pools[profile.pool].load_costs[profile_name]
        elif profile.filters and len(candidates):
            candidates = apply_filters(profile.filters, candidates)
        return Options(candidates, total_costs(candidates, profile.scorers, load_costs), held,
                       self.config.default_prefill_rate_tps, profile_name == "colocated")  # fmt: skip

    def _pick(self, profile_name: str, options: Options) -> Option:
        if options.picked is not None:
            return options.picked
        profile = self._profiles[profile_name]
        picked = options.option(profile.picker.pick(options, self._turns[profile.pool]))
        if not isinstance(profile.picker, RandomPick):  # the same options and turn: the same choice
            options.picked = picked
        return picked

    def _pick_within_slo(self, profile_name: str, options: Options, slo_s: float | None) -> Option | None:
        if slo_s is not None:
            options = options.take([i for i in range(len(options)) if options.ttft_s(i) <= slo_s])
        return self._pick(profile_name, options) if len(options) else None

    # -- accounting -------------------------------------------------------------

    @staticmethod
    def _charge(decision: Decision, request: ScheduleRequest, workers: list[Worker]) -> Charge:
        """Count the decision on its workers until the backend releases it (see Charge);
        ``workers``: the one computing the prompt first."""
        prefiller = workers[0]
        charge = Charge(prefiller, max(request.prompt_tokens - decision.predicted_hit_tokens, 0), list(workers))
        prefiller.charge(charge.prefill_tokens, 1)
        for worker in workers[1:]:
            worker.charge(0, 1)
        return charge
