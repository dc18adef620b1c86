"""Routing decisions that pay off, and a worker that dies mid-run, through real routers.

Both tests add workers of their own to the session stack (same kvstore) and run their
own `splitserve router` processes over them, so the shared stack stays intact.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from e2e_stack import start_router, start_worker, wait_until

from bench.serve.prometheus import metric_sum

pytestmark = pytest.mark.slow

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda omicron sigma tau".split()
POLICIES = ("kv-aware", "round-robin")


def scrape_sum(addresses: list[str], name: str) -> float:
    return sum(metric_sum(httpx.get(f"http://{a}/metrics", timeout=5).text, name) or 0.0 for a in addresses)


def store_pulled_bytes(addresses: list[str]) -> float:
    """KV bytes the workers read from the store (`kv_transfer_bytes_total{direction="in"}`)."""
    total = 0.0
    for address in addresses:
        for line in httpx.get(f"http://{address}/metrics", timeout=5).text.splitlines():
            if (
                line.startswith("splitserve_worker_kv_transfer_bytes_total{")
                and 'direction="in"' in line
                and 'transport="store"' in line
            ):
                total += float(line.rsplit(" ", 1)[1])
    return total


def serving(metrics_address: str) -> bool:
    try:
        return httpx.get(f"http://{metrics_address}/metrics", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def kv_bytes_per_token(model_dir: str) -> int:
    """fp32 K and V of every layer for one token (the unit of a store transfer)."""
    c = json.loads((Path(model_dir) / "config.json").read_text())
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    return c["num_hidden_layers"] * 2 * c["num_key_value_heads"] * head_dim * 4


def shared_prefix_workload(seed: int, prefixes: int = 4, requests: int = 32) -> list[str]:
    """`requests` prompts over `prefixes` distinct ~420-token prefixes, in a shuffled order."""
    rng = random.Random(seed)
    heads = [" ".join(rng.choice(WORDS) for _ in range(95)) for _ in range(prefixes)]
    prompts = [f"{heads[i % prefixes]} question {i}?" for i in range(requests)]
    rng.shuffle(prompts)
    return prompts


def ttft_s(client: httpx.Client, prompt: str) -> float:
    body = {"model": "default", "prompt": prompt, "max_tokens": 2, "temperature": 0, "stream": True, "ignore_eos": True}
    start = time.monotonic()
    first = None
    with client.stream("POST", "/v1/completions", json=body) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if first is None and line.startswith("data: {") and '"text"' in line:
                first = time.monotonic() - start
    assert first is not None, "no token streamed"
    return first


@pytest.fixture(scope="module")
def policy_runs(stack, model_dir, logs: Path) -> dict[str, dict[str, float]]:
    """A kv-aware and a round-robin router (default settings) over the same 2 prefill + 2 decode
    workers, one request at a time, in rounds ordered ABBA so that drift in the load of this
    shared machine reaches both alike; every round brings fresh prefixes.

    Local prefix-hit rate = prompt tokens the computing worker found in its own cache / prompt
    tokens: the router's realised hits minus what prefill workers pulled from the store.
    """
    extra, extra_addr, extra_metrics = start_worker("prefill", model_dir, stack["kvstore"], "prefill-extra", logs)
    prefill = [stack["prefill"][0], extra_addr]
    prefill_metrics = [stack["metrics"]["prefill-0"], extra_metrics]
    per_token = kv_bytes_per_token(model_dir)
    routers = []
    try:
        wait_until(lambda: serving(extra_metrics), 180, "extra prefill worker serving", extra)
        urls = {}
        for policy in POLICIES:
            proc, urls[policy] = start_router(f"router-{policy}", model_dir, prefill, stack["decode"], logs,
                                              "--policy", policy, "--kvstore-events", stack["kvstore_events"])  # fmt: skip
            routers.append(proc)
        for policy in POLICIES:  # first use of each path (channels, the new worker's first shapes) is not measured
            with httpx.Client(base_url=urls[policy], timeout=60) as client:
                for prompt in shared_prefix_workload(seed=100 + len(policy), requests=4):
                    ttft_s(client, prompt)
        ttfts: dict[str, list[float]] = {p: [] for p in POLICIES}
        local_hits = dict.fromkeys(POLICIES, 0.0)
        prompt_tokens = dict.fromkeys(POLICIES, 0.0)
        for round_, policy in enumerate(POLICIES + POLICIES[::-1]):  # ABBA: neither goes first more often
            router = urls[policy].removeprefix("http://")
            hits0 = scrape_sum([router], "splitserve_router_realised_prefix_hit_tokens_total")
            prompts0 = scrape_sum([router], "splitserve_router_prompt_tokens_total")
            pulled0 = store_pulled_bytes(prefill_metrics)
            with httpx.Client(base_url=urls[policy], timeout=60) as client:
                ttfts[policy] += [ttft_s(client, prompt) for prompt in shared_prefix_workload(seed=round_)]
            time.sleep(0.5)  # the last transfer counters reach the workers' /metrics
            pulled_tokens = (store_pulled_bytes(prefill_metrics) - pulled0) / per_token
            local_hits[policy] += scrape_sum([router], "splitserve_router_realised_prefix_hit_tokens_total") - hits0
            local_hits[policy] -= pulled_tokens
            prompt_tokens[policy] += scrape_sum([router], "splitserve_router_prompt_tokens_total") - prompts0
        results = {p: {"hit_rate": local_hits[p] / prompt_tokens[p], "mean_ttft": statistics.mean(ttfts[p]),
                       "median_ttft": statistics.median(ttfts[p])} for p in POLICIES}  # fmt: skip
        (logs / "policy_runs.json").write_text(json.dumps({"summary": results, "ttft_s": ttfts}, indent=1))
        print(f"policy runs: {results}")
        return results
    finally:
        for proc in routers:
            proc.stop()
        extra.stop()


def test_kv_aware_routing_realises_more_local_prefix_hits_than_round_robin(policy_runs):
    assert policy_runs["kv-aware"]["hit_rate"] > policy_runs["round-robin"]["hit_rate"], policy_runs


def test_kv_aware_routing_lowers_mean_ttft_against_round_robin(policy_runs):
    assert policy_runs["kv-aware"]["mean_ttft"] < policy_runs["round-robin"]["mean_ttft"], policy_runs


def test_a_decode_worker_killed_mid_run_hangs_no_request_and_the_rest_still_serve(stack, model_dir, logs: Path):
    victim, victim_addr, _ = start_worker("decode", model_dir, stack["kvstore"], "decode-victim", logs)
    router = None
    try:
        router, url = start_router("router-failover", model_dir, stack["prefill"], [stack["decode"][0], victim_addr],
                                   logs)  # fmt: skip
        body = {"model": "default", "prompt": "Tell me a long story. " * 3, "max_tokens": 48, "temperature": 0,
                "ignore_eos": True}  # fmt: skip

        def call(stream: bool) -> tuple[int, float]:
            start = time.monotonic()
            with httpx.Client(base_url=url, timeout=60) as client:
                try:
                    if stream:
                        with client.stream("POST", "/v1/completions", json=body | {"stream": True}) as reply:
                            for _ in reply.iter_lines():
                                pass
                            status = reply.status_code
                    else:
                        status = client.post("/v1/completions", json=body).status_code
                except httpx.HTTPError:
                    status = -1
            return status, time.monotonic() - start

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(call, i % 2 == 0) for i in range(8)]
            time.sleep(1.5)
            victim.process.kill()  # SIGKILL: no drain, no goodbye
            outcomes = [f.result(timeout=90) for f in futures]
        assert all(elapsed < 60 for _, elapsed in outcomes), outcomes  # nothing hung until the client gave up
        assert all(status != -1 for status, _ in outcomes), outcomes
        with httpx.Client(base_url=url, timeout=60) as client:
            later = [client.post("/v1/completions", json=body | {"max_tokens": 4}).status_code for _ in range(6)]
        assert later == [200] * 6
    finally:
        if router is not None:
            router.stop()
        victim.stop()
