"""Replay a workload through the real scheduler and simulated workers on virtual time.

The router's decision path is the real one: `router.scheduler.Scheduler` (the policy
config), `PrefixIndex` fed by the workers' KV events, `Worker` load polled every
``poll_s`` (GetLoad's fields, from `service.load_of`) plus the scheduler's own in-flight
charges, released as `router/worker_backend.py` releases them. What is left out is the
router's own CPU time (HTTP, tokenization, gRPC), measured apart (bench/router_bench.py),
and the network between processes. On a virtual-time loop a 64-worker cluster replays
the whole Mooncake trace in minutes, unaffected by other load on the machine;
`splitserve bench` against `splitserve sim` runs the same workload through the full
stack in wall time for a cross-check.
"""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass, field

from contracts.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from router.prefix_index import PrefixIndex
from router.scheduler import AdmissionRejected, Mode, Scheduler, SchedulerConfig, ScheduleRequest
from router.workers import Role, Worker, WorkerLoad
from simulator.block_cache import BlockCache
from simulator.clock import SimClock
from simulator.decode import SimDecodeWorker
from simulator.node import SimNode
from simulator.prefill import SimPrefillWorker
from simulator.profile import Profile
from simulator.service import load_of
from simulator.virtual_loop import new_virtual_loop
from simulator.workloads import ReplayRequest


@dataclass(slots=True)
class IndexSink:
    """KV events straight into the prefix index, as the router's subscriber would apply them."""

    index: PrefixIndex
    worker_id: str

    def publish(self, events: list[KVEvent]) -> None:
        for event in events:
            if isinstance(event, BlockStored):
                self.index.store(self.worker_id, event.keys, event.medium)
            elif isinstance(event, BlockRemoved):
                self.index.remove(self.worker_id, event.keys, event.medium)
            elif isinstance(event, AllBlocksCleared):
                self.index.clear(self.worker_id)

    def close(self) -> None:
        pass


@dataclass(slots=True)
class ReplayConfig:
    profile: Profile
    scheduler: SchedulerConfig
    prefill: int
    decode: int
    block_size: int = 16
    capacity_blocks: int | None = None
    poll_s: float = 1.0  # the router's GetLoad interval
    tick_s: float = 0.05  # decode steps run per wake-up (simulated seconds; no arrival waits longer than one step)
    decode_keeps_imports: bool = False  # True: decode workers before they evicted imported KV first (a what-if now)
    # What-if (no worker does this yet): when a request is placed, every other worker holding part
    # of its prefix moves that copy to the front of its eviction order, since the conversation's
    # next turn will go where the longest prefix now is.
    demote_moved_copies: bool = False
    # Workers evict blocks another worker also holds first (leaves only), told by copy notices
    # from the prefix index (BlockCache.shared_first).
    evict_shared_first: bool = False


@dataclass(slots=True)
class RequestOutcome:
    index: int
    mode: str
    ttft_s: float
    e2e_s: float
    output_tokens: int
    prompt_tokens: int
    hit_tokens: int
    rejected: bool = False


@dataclass(slots=True)
class ReplaySummary:
    completed: int
    rejected: int
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float
    ttft_mean_s: float
    e2e_p90_s: float
    tpot_p90_s: float  # time per output token after the first: what colocated prefills cost the decode batch
    hit_rate: float
    colocated_fraction: float
    duration_s: float
    outcomes: list[RequestOutcome] = field(default_factory=list, repr=False)


def replay(config: ReplayConfig, requests: list[ReplayRequest]) -> ReplaySummary:
    loop = new_virtual_loop()
    try:
        return loop.run_until_complete(_replay(config, requests))
    finally:
        loop.close()


async def _replay(config: ReplayConfig, requests: list[ReplayRequest]) -> ReplaySummary:
    index = PrefixIndex()
    clock = SimClock(1.0)
    sims: dict[str, SimPrefillWorker | SimDecodeWorker] = {}
    views: dict[str, Worker] = {}
    for role, count in ((Role.PREFILL, config.prefill), (Role.DECODE, config.decode)):
        for i in range(count):
            wid = f"{role.value}-{i}"
            capacity = config.capacity_blocks or config.profile.kv_capacity_blocks(config.block_size)
            cache = BlockCache(capacity, shared_first=config.evict_shared_first)
            node = SimNode(wid, role.value, config.profile, clock, cache, "sim", config.block_size, IndexSink(index, wid))
            sims[wid] = (
                SimPrefillWorker(node)
                if role is Role.PREFILL
                else SimDecodeWorker(node, config.tick_s, flush_s=1e9, keep_imports=config.decode_keeps_imports)
            )
            views[wid] = Worker(wid, role, WorkerLoad(worker_id=wid, role=role.value))
    engines = [asyncio.create_task(s.run()) for s in sims.values()]
    if config.evict_shared_first:
        index.on_sharing = lambda wid, key, shared: sims[wid].cache.mark_shared(key) if shared else sims[wid].cache.mark_sole(key)
    scheduler = Scheduler(config.scheduler, index)
    prefill = [w for w in views.values() if w.role is Role.PREFILL]
    decode = [w for w in views.values() if w.role is Role.DECODE]

    async def poll() -> None:
        while True:
            for wid, sim in sims.items():
                views[wid].update_load(load_of(sim.node, sim))
            await asyncio.sleep(config.poll_s)

    poller = asyncio.create_task(poll())
    start = asyncio.get_running_loop().time()
    demote = index if config.demote_moved_copies else None
    outcomes = await asyncio.gather(
        *(_one(r, start, scheduler, prefill, decode, sims, config.block_size, demote) for r in requests)
    )
    duration = asyncio.get_running_loop().time() - start
    for task in [poller, *engines]:
        task.cancel()
    await asyncio.gather(poller, *engines, return_exceptions=True)
    return summarize(list(outcomes), duration)


async def _one(r: ReplayRequest, start: float, scheduler: Scheduler, prefill: list[Worker], decode: list[Worker],
               sims: dict, block_size: int, demote: PrefixIndex | None = None) -> RequestOutcome:  # fmt: skip
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, start + r.arrival_s - loop.time()))
    t0 = loop.time()
    try:
        decision = scheduler.decide(ScheduleRequest(r.prompt_len, r.chain, block_size), prefill, decode)
    except AdmissionRejected:
        return RequestOutcome(r.index, "rejected", 0.0, 0.0, r.output_len, r.prompt_len, 0, rejected=True)
    rid, charge = f"r{r.index}", decision.charge
    assert charge is not None
    if demote is not None:
        keep = decision.prefill_worker or decision.decode_worker
        for wid, blocks in demote.match(r.chain).items():
            if wid != keep and wid in sims:
                sims[wid].cache.demote(r.chain[:blocks])
    try:
        if decision.mode is Mode.DISAGGREGATED:
            assert decision.prefill_worker is not None
            result = await sims[decision.prefill_worker].prefill(rid, r.prompt_len, r.chain)
            ttft = loop.time() - t0
            _view(prefill, decision.prefill_worker).record_prefill(result.computed_tokens, ttft)
            charge.prompt_computed()
            charge.finished(decision.prefill_worker)
            hit = result.cached_tokens
            async for _ in sims[decision.decode_worker].generate(rid, r.prompt_len, r.chain, r.output_len, True):
                pass
        else:
            ttft, hit = -1.0, 0
            async for chunk in sims[decision.decode_worker].generate(rid, r.prompt_len, r.chain, r.output_len, False):
                if ttft < 0:
                    ttft, hit = loop.time() - t0, chunk.cached_tokens
                    charge.prompt_computed()
    finally:
        charge.release()
    return RequestOutcome(r.index, decision.mode.value, ttft, loop.time() - t0, r.output_len, r.prompt_len, hit)


def _view(workers: list[Worker], address: str) -> Worker:
    return next(w for w in workers if w.address == address)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def summarize(outcomes: list[RequestOutcome], duration_s: float) -> ReplaySummary:
    done = [o for o in outcomes if not o.rejected]
    ttfts = [o.ttft_s for o in done]
    prompt = sum(o.prompt_tokens for o in done)
    return ReplaySummary(
        completed=len(done),
        rejected=len(outcomes) - len(done),
        ttft_p50_s=percentile(ttfts, 0.5),
        ttft_p90_s=percentile(ttfts, 0.9),
        ttft_p99_s=percentile(ttfts, 0.99),
        ttft_mean_s=statistics.fmean(ttfts) if ttfts else float("nan"),
        e2e_p90_s=percentile([o.e2e_s for o in done], 0.9),
        tpot_p90_s=percentile([(o.e2e_s - o.ttft_s) / (o.output_tokens - 1) for o in done if o.output_tokens > 1], 0.9),
        hit_rate=sum(o.hit_tokens for o in done) / prompt if prompt else 0.0,
        colocated_fraction=sum(o.mode == Mode.COLOCATED.value for o in done) / len(done) if done else 0.0,
        duration_s=duration_s,
        outcomes=outcomes,
    )
