"""A prompt the router placed counts as held by its prefilling worker until its first token, so that
requests sharing it queue behind it there instead of computing the same prefix elsewhere."""

from scheduler_support import request, worker

from router.inflight_prefixes import InflightPrefixes
from router.prefix_index import PrefixIndex
from router.scheduler import Mode, Scheduler, SchedulerConfig
from router.scheduler_config import load_policy
from router.workers import Role

DOCUMENT = list(range(4096))  # a long new prefix two conversations share


def pools() -> tuple[list, list]:
    return [worker("p1", Role.PREFILL), worker("p2", Role.PREFILL)], [worker("d1", Role.DECODE)]


def test_a_request_sharing_a_prefix_still_being_computed_goes_where_it_is_computed():
    sched = Scheduler(load_policy("kv-aware"), PrefixIndex())  # no KV events arrive meanwhile
    prefill, decode = pools()
    first = sched.decide(request(DOCUMENT + [1] * 512), prefill, decode)
    second = sched.decide(request(DOCUMENT + [2] * 512), prefill, decode)
    assert first.mode is second.mode is Mode.DISAGGREGATED
    assert second.prefill_worker == first.prefill_worker
    assert second.predicted_hit_tokens == len(DOCUMENT)


def test_a_computed_prompt_no_longer_counts_without_the_workers_kv_events():
    sched = Scheduler(load_policy("kv-aware"), PrefixIndex())
    prefill, decode = pools()
    first = sched.decide(request(DOCUMENT), prefill, decode)
    first.charge.prompt_computed()  # the worker's BlockStored would now report what it holds
    assert sched.decide(request(DOCUMENT + [2] * 512), prefill, decode).predicted_hit_tokens == 0


def test_without_inflight_prefixes_a_prompt_counts_only_once_announced():
    config = load_policy("kv-aware")
    config.inflight_prefixes = False
    sched = Scheduler(config, PrefixIndex())
    prefill, decode = pools()
    sched.decide(request(DOCUMENT + [1] * 512), prefill, decode)
    assert sched.decide(request(DOCUMENT + [2] * 512), prefill, decode).predicted_hit_tokens == 0


def test_the_shipped_kv_aware_policy_counts_inflight_prefixes_and_the_baselines_do_not():
    assert load_policy("kv-aware").inflight_prefixes
    assert Scheduler(SchedulerConfig(), PrefixIndex()).inflight is not None
    assert Scheduler(load_policy("round-robin"), PrefixIndex()).inflight is None


def test_each_inflight_chain_counts_until_its_own_prompt_is_computed():
    inflight = InflightPrefixes()
    a, b = request(DOCUMENT).block_keys, request(DOCUMENT[:2048]).block_keys
    inflight.add("p1", a)
    inflight.add("p1", b)
    inflight.add("p2", b[:10])
    assert inflight.merge_into({}, a) == {"p1": len(a), "p2": 10}
    assert inflight.merge_into({"p1": len(a) + 5, "p2": 3}, a) == {"p1": len(a) + 5, "p2": 10}  # the index knew more
    inflight.drop("p1", a)
    assert inflight.merge_into({}, a) == {"p1": len(b), "p2": 10}  # b's prompt still computes
    inflight.drop("p1", b)
    inflight.drop("p2", b[:10])
    assert inflight.merge_into({}, a) == {} and len(inflight) == 0


def test_the_deepest_of_many_chains_in_flight_on_a_worker_counts():
    inflight = InflightPrefixes()
    system = DOCUMENT[:1024]  # 64 blocks many requests share
    for i in range(50):
        inflight.add("p1", request(system + [10_000 + i] * 256).block_keys)
    deep = request(DOCUMENT).block_keys
    inflight.add("p1", deep)
    inflight.add("p2", deep[:70])
    query = request(DOCUMENT[:3072] + [7] * 64).block_keys
    assert inflight.merge_into({"p1": 64}, query) == {"p1": 192, "p2": 70}  # 3072 tokens / 16
    inflight.drop("p1", deep)
    assert inflight.merge_into({"p1": 64}, query) == {"p1": 64, "p2": 70}  # the others end at the system prompt
    inflight.add("p1", deep)
    inflight.add("p1", deep)  # the same prompt twice: each counts until its own first token
    inflight.drop("p1", deep)
    assert inflight.merge_into({}, query)["p1"] == 192
    assert len(inflight) == 50 + 1 + 1
