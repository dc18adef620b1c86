"""Routing decisions that pay off, and a worker that dies mid-run, through real routers.

Both tests add workers of their own to the session stack (same kvstore) and run their
own `splitserve router` processes over them, so the shared stack stays intact.
"""

from __future__ import annotations

import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_stack import start_router, start_worker, wait_until

pytestmark = pytest.mark.slow

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda omicron sigma tau".split()


def prefix_cache_tokens(metrics_addresses: list[str]) -> tuple[float, float]:
    """(hit, queried) prompt tokens of the workers' local prefix caches, summed."""
    hits = queries = 0.0
    for address in metrics_addresses:
        for line in httpx.get(f"http://{address}/metrics", timeout=5).text.splitlines():
            if line.startswith("splitserve_worker_prefix_cache_hits_total"):
                hits += float(line.rsplit(" ", 1)[1])
            elif line.startswith("splitserve_worker_prefix_cache_queries_total"):
                queries += float(line.rsplit(" ", 1)[1])
    return hits, queries


def serving(metrics_address: str) -> bool:
    try:
        return httpx.get(f"http://{metrics_address}/metrics", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def shared_prefix_workload(seed: int, prefixes: int = 4, requests: int = 24) -> list[str]:
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
    """The same shared-prefix workload (fresh prefixes each) through a kv-aware and a round-robin router."""
    extra, extra_addr, extra_metrics = start_worker("prefill", model_dir, stack["kvstore"], "prefill-extra", logs)
    prefill = [stack["prefill"][0], extra_addr]
    prefill_metrics = [stack["metrics"]["prefill-0"], extra_metrics]
    routers = []
    try:
        wait_until(lambda: serving(extra_metrics), 180, "extra prefill worker serving", extra)
        results = {}
        # --colocate-threshold 0: every request is prefilled on the prefill pool, where the choice is made
        for seed, policy in ((1, "kv-aware"), (2, "round-robin")):
            proc, url = start_router(f"router-{policy}", model_dir, prefill, stack["decode"], logs,
                                     "--policy", policy, "--colocate-threshold", "0",
                                     "--kvstore-events", stack["kvstore_events"])  # fmt: skip
            routers.append(proc)
            hits0, queries0 = prefix_cache_tokens(prefill_metrics)
            with httpx.Client(base_url=url, timeout=60) as client:
                ttfts = [ttft_s(client, prompt) for prompt in shared_prefix_workload(seed)]
            time.sleep(2.5)  # workers publish their counters with the next load poll
            hits1, queries1 = prefix_cache_tokens(prefill_metrics)
            results[policy] = {"hit_rate": (hits1 - hits0) / (queries1 - queries0), "mean_ttft": statistics.mean(ttfts)}
            proc.stop()
        return results
    finally:
        for proc in routers:
            proc.stop()
        extra.stop()


def test_kv_aware_routing_realises_more_local_prefix_hits_than_round_robin(policy_runs):
    assert policy_runs["kv-aware"]["hit_rate"] > policy_runs["round-robin"]["hit_rate"], policy_runs


@pytest.mark.xfail(reason="tiny CPU model: a ~400-token prefill costs a few ms, as much as pulling the same "
                   "blocks from the store, so local hits do not yet show in TTFT (measured kv-aware 45 ms vs "
                   "round-robin 40 ms); needs a larger model or a cheaper local-hit path")
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
