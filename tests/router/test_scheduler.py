"""Scheduler decisions on hand-built worker loads and a hand-fed prefix index."""

import pytest
from scheduler_support import BS, request, worker

from router.prefix_index import PrefixIndex
from router.scheduler import (
    AdmissionRejected,
    DeciderBasis,
    Mode,
    NoWorkersAvailable,
    Policy,
    Scheduler,
    SchedulerConfig,
)
from router.workers import Role, WorkerLoad

PROMPT = list(range(2048))


def test_picks_the_prefill_worker_that_holds_the_prompt_prefix():
    index = PrefixIndex()
    req = request(PROMPT)
    index.store("p2", req.block_keys[:100])
    index.store("p1", req.block_keys[:10])
    sched = Scheduler(SchedulerConfig(), index)
    prefill = [worker("p1", Role.PREFILL), worker("p2", Role.PREFILL), worker("p3", Role.PREFILL)]
    d = sched.decide(req, prefill, [worker("d1", Role.DECODE)])
    assert (d.mode, d.prefill_worker, d.decode_worker) == (Mode.DISAGGREGATED, "p2", "d1")
    assert d.predicted_hit_tokens == 100 * BS


def test_avoids_an_overloaded_worker_even_if_it_holds_some_prefix():
    index = PrefixIndex()
    req = request(PROMPT)
    index.store("p1", req.block_keys[:8])  # 128 tokens cached, but 50k tokens queued
    sched = Scheduler(SchedulerConfig(), index)
    prefill = [worker("p1", Role.PREFILL, queued_prefill_tokens=50_000), worker("p2", Role.PREFILL)]
    assert sched.decide(req, prefill, [worker("d1", Role.DECODE)]).prefill_worker == "p2"


def test_picks_the_least_loaded_decode_worker():
    sched = Scheduler(SchedulerConfig(), PrefixIndex())
    decode = [
        worker("d1", Role.DECODE, active_kv_blocks=900, running_requests=40),
        worker("d2", Role.DECODE, active_kv_blocks=100, running_requests=4),
    ]
    assert sched.decide(request(PROMPT), [worker("p1", Role.PREFILL)], decode).decode_worker == "d2"


def test_colocates_short_prompts_and_prompts_whose_uncached_part_is_short():
    index = PrefixIndex()
    sched = Scheduler(SchedulerConfig(colocate_threshold_tokens=256), index)
    prefill, decode = [worker("p1", Role.PREFILL)], [worker("d1", Role.DECODE)]
    short = sched.decide(request(list(range(100))), prefill, decode)
    assert (short.mode, short.prefill_worker, short.decode_worker) == (Mode.COLOCATED, None, "d1")
    req = request(PROMPT)
    index.store("d1", req.block_keys[:120])  # only 128 of 2048 tokens left to compute
    assert sched.decide(req, prefill, decode).mode is Mode.COLOCATED


def test_colocates_when_there_is_no_prefill_worker_or_the_pool_is_saturated():
    sched = Scheduler(SchedulerConfig(prefill_saturation_tokens=10_000), PrefixIndex())
    decode = [worker("d1", Role.DECODE)]
    assert sched.decide(request(PROMPT), [], decode).mode is Mode.COLOCATED
    busy = [worker("p1", Role.PREFILL, queued_prefill_tokens=20_000)]
    assert sched.decide(request(PROMPT), busy, decode).mode is Mode.COLOCATED


def test_long_uncached_prompts_are_disaggregated():
    sched = Scheduler(SchedulerConfig(), PrefixIndex())
    d = sched.decide(request(PROMPT), [worker("p1", Role.PREFILL)], [worker("d1", Role.DECODE)])
    assert (d.mode, d.prefill_worker) == (Mode.DISAGGREGATED, "p1")


def test_rejects_with_retry_after_when_no_placement_meets_the_ttft_slo():
    config = SchedulerConfig(ttft_slo_ms=500, default_prefill_rate_tps=10_000)
    sched = Scheduler(config, PrefixIndex())
    prefill = [worker("p1", Role.PREFILL, queued_prefill_tokens=40_000)]
    decode = [worker("d1", Role.DECODE, queued_prefill_tokens=30_000)]
    with pytest.raises(AdmissionRejected) as exc:
        sched.decide(request(PROMPT), prefill, decode)
    # best choice: (30000 + 2048) / 10000 = 3.2 s against 0.5 s -> retry in 3 s
    assert exc.value.retry_after_s == 3
    assert exc.value.predicted_ttft_s == pytest.approx(3.2048)


def test_slo_prefers_a_placement_that_meets_it_over_a_cheaper_one_that_does_not():
    config = SchedulerConfig(ttft_slo_ms=1000, default_prefill_rate_tps=10_000)
    sched = Scheduler(config, PrefixIndex())
    fast = worker("p2", Role.PREFILL, queued_prefill_tokens=2_000)
    fast.prefill_rate_tps = 20_000.0
    slow = worker("p1", Role.PREFILL, queued_prefill_tokens=1_000)
    slow.prefill_rate_tps = 1_000.0
    busy = worker("d1", Role.DECODE, running_requests=4)  # an idle decode worker would be cheaper than both
    d = sched.decide(request(PROMPT), [slow, fast], [busy])
    assert d.prefill_worker == "p2" and d.predicted_ttft_s <= 1.0


def test_requests_between_load_polls_spread_over_equal_workers():
    # basis "cost": kv-aware's "cheapest" would prefill the later ones on the idle decode workers
    sched = Scheduler(SchedulerConfig(basis=DeciderBasis.COST), PrefixIndex())
    prefill = [worker("p1", Role.PREFILL), worker("p2", Role.PREFILL)]
    decode = [worker("d1", Role.DECODE), worker("d2", Role.DECODE)]
    prompts = [[i * 10_000 + t for t in PROMPT] for i in range(4)]  # distinct: none hits another in flight
    picks = [sched.decide(request(p), prefill, decode) for p in prompts]
    assert sorted(d.prefill_worker for d in picks) == ["p1", "p1", "p2", "p2"]
    assert sorted(d.decode_worker for d in picks) == ["d1", "d1", "d2", "d2"]


def test_round_robin_cycles_through_workers_and_ignores_the_index():
    index = PrefixIndex()
    req = request(PROMPT)
    index.store("p2", req.block_keys)
    sched = Scheduler(SchedulerConfig(policy=Policy.ROUND_ROBIN), index)
    prefill = [worker("p1", Role.PREFILL), worker("p2", Role.PREFILL), worker("p3", Role.PREFILL)]
    decode = [worker("d1", Role.DECODE), worker("d2", Role.DECODE)]
    picks = [sched.decide(req, prefill, decode) for _ in range(6)]
    assert [d.prefill_worker for d in picks] == ["p1", "p2", "p3", "p1", "p2", "p3"]
    assert [d.decode_worker for d in picks] == ["d1", "d2", "d1", "d2", "d1", "d2"]


def test_random_policy_only_picks_available_workers():
    sched = Scheduler(SchedulerConfig(policy=Policy.RANDOM, seed=0), PrefixIndex())
    prefill = [worker("p1", Role.PREFILL), worker("p2", Role.PREFILL)]
    prefill[0].healthy = False
    decode = [worker("d1", Role.DECODE), worker("d2", Role.DECODE)]
    picks = {sched.decide(request(PROMPT), prefill, decode, exclude={"d1"}).decode_worker for _ in range(20)}
    assert picks == {"d2"}
    assert {sched.decide(request(PROMPT), prefill, decode).prefill_worker for _ in range(20)} == {"p2"}


def test_unhealthy_and_excluded_workers_are_never_chosen():
    sched = Scheduler(SchedulerConfig(), PrefixIndex())
    decode = [worker("d1", Role.DECODE), worker("d2", Role.DECODE)]
    decode[0].healthy = False
    with pytest.raises(NoWorkersAvailable):
        sched.decide(request(PROMPT), [], decode, exclude={"d2"})


def test_prefers_the_worker_holding_the_prefix_locally_over_one_that_would_pull_it_from_the_store():
    index = PrefixIndex()
    req = request(PROMPT)
    index.store("kvstore", req.block_keys, "store")  # every worker could pull the whole prefix
    index.store("p2", req.block_keys[:100])  # but p2 already has most of it in its own cache
    sched = Scheduler(SchedulerConfig(colocate_threshold_tokens=0), index)
    for order in (["p1", "p2"], ["p2", "p1"]):
        prefill = [worker(a, Role.PREFILL) for a in order]
        d = sched.decide(req, prefill, [worker("d1", Role.DECODE)])
        assert d.prefill_worker == "p2"
        assert d.predicted_hit_tokens == len(PROMPT) - 1  # the store supplies the rest of the chain


def test_a_decode_worker_without_the_prefix_is_not_colocated_on_because_the_store_holds_it():
    # colocated prefill on a decode worker reads only its own cache: a store hit does not make it cheap
    index = PrefixIndex()
    req = request(PROMPT)
    index.store("kvstore", req.block_keys, "store")
    sched = Scheduler(SchedulerConfig(colocate_threshold_tokens=256), index)
    d = sched.decide(req, [worker("p1", Role.PREFILL)], [worker("d1", Role.DECODE)])
    assert (d.mode, d.prefill_worker) == (Mode.DISAGGREGATED, "p1")


def test_colocates_on_the_decode_worker_that_holds_the_prefix():
    index = PrefixIndex()
    req = request(PROMPT)
    index.store("kvstore", req.block_keys, "store")
    index.store("d2", req.block_keys[:120])
    sched = Scheduler(SchedulerConfig(colocate_threshold_tokens=256), index)
    for order in (["d1", "d2"], ["d2", "d1"]):
        decode = [worker(a, Role.DECODE, running_requests=2 if a == "d2" else 0) for a in order]
        d = sched.decide(req, [worker("p1", Role.PREFILL)], decode)
        assert (d.mode, d.decode_worker) == (Mode.COLOCATED, "d2")
        assert d.predicted_hit_tokens == 120 * BS
        d.charge.release()


def test_disaggregated_requests_decode_where_the_prompt_prefix_already_is():
    index = PrefixIndex()
    req = request(PROMPT)
    index.store("d1", req.block_keys[:64])  # d1 imports 1024 tokens less from the store
    # basis "uncached": disaggregate whatever the decode side holds (kv-aware's "cost" would colocate on d1)
    sched = Scheduler(SchedulerConfig(colocate_threshold_tokens=0, basis=DeciderBasis.UNCACHED), index)
    for order in (["d1", "d2"], ["d2", "d1"]):
        d = sched.decide(req, [worker("p1", Role.PREFILL)], [worker(a, Role.DECODE) for a in order])
        assert (d.mode, d.decode_worker) == (Mode.DISAGGREGATED, "d1")


def test_finished_requests_stop_counting_so_a_sequential_stream_keeps_its_cache_affinity():
    index = PrefixIndex()
    req = request(PROMPT)
    index.store("kvstore", req.block_keys, "store")
    index.store("p2", req.block_keys)
    sched = Scheduler(SchedulerConfig(colocate_threshold_tokens=0), index)
    prefill = [worker("p1", Role.PREFILL), worker("p2", Role.PREFILL)]
    decode = [worker("d1", Role.DECODE)]
    for _ in range(20):  # one at a time, all within one load-poll interval
        d = sched.decide(req, prefill, decode)
        assert d.prefill_worker == "p2"
        d.charge.release()
    assert all(w.inflight_requests == w.inflight_prefill_tokens == 0 for w in prefill + decode)


def test_new_prefixes_spread_over_idle_workers():
    index = PrefixIndex()
    sched = Scheduler(SchedulerConfig(colocate_threshold_tokens=0, basis=DeciderBasis.COST), index)
    prefill = [worker("p1", Role.PREFILL), worker("p2", Role.PREFILL)]
    picks = []
    for group in range(4):
        req = request([group * 10_000 + t for t in range(512)])
        d = sched.decide(req, prefill, [worker("d1", Role.DECODE)])
        d.charge.release()
        index.store(d.prefill_worker, req.block_keys)  # what the worker's KV events would report
        picks.append(d.prefill_worker)
    assert sorted(picks) == ["p1", "p1", "p2", "p2"]


def test_a_later_turn_runs_on_the_decode_worker_holding_the_conversation_when_that_is_cheaper():
    index = PrefixIndex()
    req = request(PROMPT)
    index.store("d2", req.block_keys[:96])  # an earlier turn: 1536 of 2048 tokens, imported by d2
    sched = Scheduler(SchedulerConfig(colocate_threshold_tokens=0), index)  # kv-aware: basis "cost"
    prefill = [worker("p1", Role.PREFILL)]
    d = sched.decide(req, prefill, [worker("d1", Role.DECODE), worker("d2", Role.DECODE)])
    assert (d.mode, d.decode_worker, d.predicted_hit_tokens) == (Mode.COLOCATED, "d2", 1536)
    index.store("p1", req.block_keys)  # the prefill worker holds all of it: no reason to load d2
    d = sched.decide(req, prefill, [worker("d1", Role.DECODE), worker("d2", Role.DECODE)])
    assert (d.mode, d.prefill_worker) == (Mode.DISAGGREGATED, "p1")


def test_a_workers_load_reflects_a_poll_or_a_charge_at_once_whichever_is_larger():
    w = worker("p1", Role.PREFILL, queued_prefill_tokens=500, running_requests=2)
    w.charge(1_000, 1)  # placed by this router, not yet in a poll
    assert (w.queued_prefill_tokens, w.active_requests) == (1_000, 2)
    w.update_load(WorkerLoad(worker_id="p1-id", queued_prefill_tokens=3_000, running_requests=4, total_kv_blocks=1000))
    assert (w.queued_prefill_tokens, w.active_requests, w.worker_id) == (3_000, 4, "p1-id")
    w.release(1_000, 1)
    w.update_load(WorkerLoad(worker_id="p1-id", total_kv_blocks=1000, active_kv_blocks=250))
    assert (w.queued_prefill_tokens, w.active_requests, w.kv_fraction) == (0, 0, 0.25)


def _pressure_config(basis: DeciderBasis) -> SchedulerConfig:
    from router.scheduler_config import parse_scheduler_config

    profile = {"scorers": [{"type": "uncached-tokens"}, {"type": "queued-tokens"}, {"type": "cache-pressure"}]}
    return parse_scheduler_config({"decider": {"basis": basis.value},
                                   "profiles": {"prefill": profile, "decode": {}, "colocated": profile}})  # fmt: skip


def test_a_new_prefix_goes_where_it_evicts_copies_rather_than_the_only_copy_of_a_hot_prefix():
    index = PrefixIndex()
    hot_p1 = request([10_000_000 + t for t in range(1000 * BS)])  # fills p1's cache; nobody else has it
    hot_p2 = request([20_000_000 + t for t in range(1000 * BS)])  # p2's cache holds a copy of d1's prefix
    index.store("p1", hot_p1.block_keys)
    index.store("p2", hot_p2.block_keys)
    index.store("d1", hot_p2.block_keys)
    sched = Scheduler(_pressure_config(DeciderBasis.COST), index)
    d = sched.decide(request(PROMPT), [worker("p1", Role.PREFILL), worker("p2", Role.PREFILL)], [worker("d1", Role.DECODE)])
    assert (d.mode, d.prefill_worker) == (Mode.DISAGGREGATED, "p2")


def test_basis_cheapest_prefills_a_new_prompt_on_a_decode_worker_whose_cache_holds_only_copies():
    index = PrefixIndex()
    hot = request([10_000_000 + t for t in range(1000 * BS)])
    index.store("p1", hot.block_keys)  # the prefill worker's cache: the only copy of a hot prefix
    prefill, decode = [worker("p1", Role.PREFILL)], [worker("d1", Role.DECODE)]
    d = Scheduler(_pressure_config(DeciderBasis.CHEAPEST), index).decide(request(PROMPT), prefill, decode)
    assert (d.mode, d.decode_worker) == (Mode.COLOCATED, "d1")
    d = Scheduler(_pressure_config(DeciderBasis.COST), index).decide(request(PROMPT), prefill, decode)
    assert d.mode is Mode.DISAGGREGATED  # "cost" colocates only on a decode worker holding more of the prompt


@pytest.mark.parametrize("scorer", [{"type": "eviction-cost"}, {"type": "cache-pressure", "recency": True}])
def test_a_new_prefix_goes_to_the_worker_whose_evictions_lose_the_least_recently_used_blocks(scorer: dict):
    from router.scheduler_config import parse_scheduler_config

    profile = {"scorers": [{"type": "uncached-tokens"}, {"type": "queued-tokens"}, scorer]}
    config = parse_scheduler_config({"decider": {"basis": "cost"},
                                     "profiles": {"prefill": profile, "decode": {}, "colocated": profile}})  # fmt: skip
    index = PrefixIndex()
    cold = request([10_000_000 + t for t in range(600 * BS)]).block_keys
    hot = request([20_000_000 + t for t in range(600 * BS)]).block_keys
    index.store("cold", cold)
    index.store("other", request([30_000_000 + t for t in range(1000 * BS)]).block_keys)  # time passes
    index.store("hot", hot)
    index.remove("cold", cold[500:])  # both caches keep 500 sole copies and evicted 100: the cold
    index.remove("hot", hot[500:])  # one's long unused, the hot one's stored just now
    prefill = [worker("hot", Role.PREFILL), worker("cold", Role.PREFILL)]
    d = Scheduler(config, index).decide(request(PROMPT), prefill, [worker("d1", Role.DECODE)])
    assert (d.mode, d.prefill_worker) == (Mode.DISAGGREGATED, "cold")
