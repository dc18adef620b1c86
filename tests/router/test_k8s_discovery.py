"""Kubernetes discovery against a local stand-in of the Kubernetes API (real HTTP)."""

from __future__ import annotations

import asyncio

import pytest
from k8s_standin import FakePodAPI
from kubernetes import client

from router.discovery import Change, DiscoveryEvent, parse_discovery_spec
from router.k8s_discovery import KubernetesDiscovery
from router.workers import Role

PREFILL = {"app": "splitserve", "role": "prefill"}
DECODE = {"app": "splitserve", "role": "decode"}


@pytest.fixture
def api():
    fake = FakePodAPI("llm")
    yield fake
    fake.close()


async def next_events(queue: asyncio.Queue, count: int) -> list[DiscoveryEvent]:
    return [await asyncio.wait_for(queue.get(), timeout=10) for _ in range(count)]


async def test_pods_appearing_turning_ready_and_disappearing_are_followed(api):
    api.put_pod("prefill-0", PREFILL, "10.0.0.1", ready=True)
    api.put_pod("decode-0", DECODE, "10.0.0.2", ready=False, annotations={"splitserve.io/grpc-port": "6000"})
    api.put_pod("other", {"app": "other"}, "10.0.0.9", ready=True)
    conf = client.Configuration()
    conf.host = api.host
    discovery = KubernetesDiscovery(
        "llm",
        {Role.PREFILL: "app=splitserve,role=prefill", Role.DECODE: "app=splitserve,role=decode"},
        api_client=client.ApiClient(conf),
        watch_timeout_s=2,
    )
    queue: asyncio.Queue[DiscoveryEvent] = asyncio.Queue()
    task = asyncio.create_task(discovery.run(queue.put_nowait))
    try:
        initial = await next_events(queue, 3)
        assert set(initial) == {
            DiscoveryEvent(Change.ADDED, Role.PREFILL, "10.0.0.1:50071"),
            DiscoveryEvent(Change.READY, Role.PREFILL, "10.0.0.1:50071"),
            DiscoveryEvent(Change.ADDED, Role.DECODE, "10.0.0.2:6000"),
        }
        api.put_pod("decode-0", DECODE, "10.0.0.2", ready=True, annotations={"splitserve.io/grpc-port": "6000"})
        assert await next_events(queue, 1) == [DiscoveryEvent(Change.READY, Role.DECODE, "10.0.0.2:6000")]

        api.put_pod("prefill-1", PREFILL, None, ready=False)  # scheduled, no IP yet: not a worker
        api.put_pod("prefill-1", PREFILL, "10.0.0.3", ready=True)
        assert await next_events(queue, 2) == [
            DiscoveryEvent(Change.ADDED, Role.PREFILL, "10.0.0.3:50071"),
            DiscoveryEvent(Change.READY, Role.PREFILL, "10.0.0.3:50071"),
        ]
        api.put_pod("prefill-0", PREFILL, "10.0.0.1", ready=False)
        api.delete_pod("decode-0")
        assert set(await next_events(queue, 2)) == {
            DiscoveryEvent(Change.UNREADY, Role.PREFILL, "10.0.0.1:50071"),
            DiscoveryEvent(Change.REMOVED, Role.DECODE, "10.0.0.2:6000"),
        }
        # Changes made across a watch timeout (re-list + re-watch) are not lost.
        await asyncio.sleep(2.5)
        api.delete_pod("prefill-1")
        assert await next_events(queue, 1) == [DiscoveryEvent(Change.REMOVED, Role.PREFILL, "10.0.0.3:50071")]
        await asyncio.sleep(0.3)
        assert queue.empty()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_discovery_spec_keeps_commas_inside_label_selectors():
    spec = parse_discovery_spec("k8s:namespace=llm,prefill-selector=app=ss,role=prefill,decode-selector=role=decode")
    assert spec == {"namespace": "llm", "prefill-selector": "app=ss,role=prefill", "decode-selector": "role=decode"}
