"""Virtual-time replays through the real scheduler, and the oracle that bounds their hit rate."""

import pytest

from router.scheduler_config import load_policy
from simulator.oracle import oracle_hit_rate
from simulator.profile import load_profile
from simulator.replay import ReplayConfig, replay
from simulator.workloads import ReplayRequest, mooncake_trace, tenants, unique_prompts

pytestmark = pytest.mark.timeout(120)
H200 = load_profile("h200-llama-3.1-8b")


def test_a_lone_request_takes_exactly_the_profiles_prefill_time():
    [request] = unique_prompts([ReplayRequest(0, 0.0, 15_000, [b""] * (15_000 // 16), 10)])
    s = replay(ReplayConfig(H200, load_policy("kv-aware"), prefill=1, decode=1), [request])
    assert s.ttft_p50_s == pytest.approx(H200.prefill.seconds(15_000, 0), rel=1e-6)  # virtual time: no overhead


def test_kv_aware_beats_round_robin_on_many_tenants_and_stays_under_the_oracle():
    # 12 system prompts of 375 blocks; a worker's cache holds 4 of them: round-robin sends
    # every prompt everywhere and thrashes, kv-aware keeps each prompt on its worker.
    requests = tenants(240, num_tenants=12, prefix_len=6000, question_len=600, output_len=20, rate=8.0)
    results = {p: replay(ReplayConfig(H200, load_policy(p), prefill=4, decode=4, capacity_blocks=1600), requests)
               for p in ("round-robin", "kv-aware")}  # fmt: skip
    oracle = oracle_hit_rate(requests, 8 * 1600)
    assert results["kv-aware"].hit_rate > 2 * results["round-robin"].hit_rate
    assert results["kv-aware"].ttft_p90_s < results["round-robin"].ttft_p90_s
    assert results["kv-aware"].hit_rate <= oracle.hit_rate + 1e-9
    assert oracle.hit_rate == pytest.approx(oracle.unbounded_hit_rate)  # pooled, all 12 prompts fit


def test_the_oracle_counts_only_prefixes_and_respects_capacity():
    a, b = [b"a%d" % i for i in range(10)], [b"b%d" % i for i in range(10)]
    reqs = [ReplayRequest(0, 0, 160, a, 1), ReplayRequest(1, 1, 160, b, 1), ReplayRequest(2, 2, 160, a, 1),
            ReplayRequest(3, 3, 160, [b"x"] + b[1:], 1)]  # fmt: skip
    roomy, tight = oracle_hit_rate(reqs, 100), oracle_hit_rate(reqs, 10)
    assert roomy.hit_rate == pytest.approx(159 / 640)  # request 2 hits all of a but its last token; 3 shares no prefix
    assert tight.hit_rate == pytest.approx(159 / 640)  # Belady keeps a (used again), drops b (never as a prefix)
    assert oracle_hit_rate(reqs, 5).hit_rate == pytest.approx(80 / 640)


def test_trace_hash_ids_become_shared_block_chains():
    reqs = mooncake_trace("tests/data/mooncake_trace_head40.jsonl", limit=3)
    assert [len(r.chain) for r in reqs] == [r.prompt_len // 16 for r in reqs]
    assert len({k for r in reqs for k in r.chain}) == sum(len(r.chain) for r in reqs)  # the head shares nothing
    again = mooncake_trace("tests/data/mooncake_trace_head40.jsonl", limit=3)
    assert [r.chain for r in again] == [r.chain for r in reqs]  # deterministic
