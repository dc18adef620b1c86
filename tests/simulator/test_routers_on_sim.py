"""Real routers (unchanged `splitserve router` processes) in front of simulated pools.

Two replicas share one prefix view through the workers' KV events, and see each
other's traffic through the workers' load (GetLoad), not only their own in-flight work.
"""

import asyncio
import json

import httpx
import pytest
from sim_profile import TEST_PROFILE

from simulator.cluster import ClusterConfig
from simulator.launch import ClusterThread, start_router, wait_ready
from simulator.model_dir import write_sim_model_dir

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

PREFIX = list(range(10_000, 14_000))  # 4,000 tokens: 0.41 s of prefill with the test profile
# A router that only follows the prefix and never looks at load: it piles every request
# sharing a cached prefix onto the worker holding it (another tenant's naive router).
PREFIX_ONLY = {
    "decider": {"basis": "uncached", "colocate_threshold_tokens": 0},
    "profiles": {
        "prefill": {"scorers": [{"type": "uncached-tokens"}]},
        "decode": {"scorers": [{"type": "running-requests"}]},
        "colocated": {"scorers": [{"type": "uncached-tokens"}]},
    },
}


@pytest.fixture(scope="module")
def routers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sim-routers")
    model_dir = write_sim_model_dir(tmp / "model")
    (tmp / "prefix-only.json").write_text(json.dumps(PREFIX_ONLY))
    cluster = ClusterThread.start(ClusterConfig(TEST_PROFILE, prefill=2, decode=2, fingerprint="fp"))
    started = []
    try:
        for name, args in (("a", ["--scheduler-config", str(tmp / "prefix-only.json")]),
                           ("b", ["--policy", "kv-aware", "--colocate-threshold", "0"])):  # fmt: skip
            started.append(
                start_router(
                    model_dir, cluster.cluster, tmp / f"router-{name}.log", args + ["--health-interval", "0.1"], wait=False
                )
            )
        for router in started:
            wait_ready(router, cluster.cluster)
        yield started
    finally:
        for router in started:
            router.stop()
        cluster.stop()


async def complete(client: httpx.AsyncClient, url: str, prompt: list[int]) -> dict:
    reply = await client.post(url + "/v1/completions", json={"model": "model", "prompt": prompt, "max_tokens": 4}, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()


def prefill_decisions(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics").text
    out = {}
    for line in text.splitlines():
        if line.startswith("splitserve_router_decisions_total{") and 'role="prefill"' in line:
            worker = line.split('worker="')[1].split('"')[0]
            out[worker] = float(line.rsplit(" ", 1)[1])
    return out


async def test_two_routers_share_the_prefix_view_and_see_each_others_load(routers):
    a, b = routers
    async with httpx.AsyncClient() as client:
        await complete(client, a.url, PREFIX + [1, 2, 3])
        holder = max(prefill_decisions(a.url).items(), key=lambda kv: kv[1])[0]

        # B never sent this prefix, yet it knows where it is (KV events) and gets the hit.
        await asyncio.sleep(0.3)
        reply = await complete(client, b.url, PREFIX + [4, 5, 6])
        assert reply["usage"]["prompt_tokens_details"]["cached_tokens"] == len(PREFIX)
        assert prefill_decisions(b.url) == {holder: 1.0}

        # A piles five long requests on the holder (~2 s of queued prefill)...
        suffixes = [list(range(100_000 + i * 4000, 104_000 + i * 4000)) for i in range(6)]
        burst = [asyncio.ensure_future(complete(client, a.url, PREFIX + s)) for s in suffixes[:5]]
        await asyncio.sleep(0.4)  # a few GetLoad polls later
        # ...so B, whose own in-flight count for the holder is zero, places the same kind of
        # request elsewhere (the decode worker that imported the prefix, or the idle prefill
        # worker); from its own counts alone the holder would look idle and cheapest.
        reply = await complete(client, b.url, PREFIX + suffixes[5])
        assert reply["choices"][0]["finish_reason"] == "length"
        assert prefill_decisions(b.url).get(holder) == 1.0, prefill_decisions(b.url)
        await asyncio.gather(*burst)
