"""A master and three storage-node processes serving several concurrent clients."""

from __future__ import annotations

import os
import signal
import threading
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kvstore_processes import Cluster, start_cluster

from contracts.rpc import kvstore_pb2 as pb
from contracts.rpc import kvstore_pb2_grpc as pb_grpc
from kvstore.sync_client import KVStoreClient

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster():
    c = start_cluster(3)
    yield c
    c.stop()


def payload(client: int, i: int) -> bytes:
    return os.urandom(64) * (1 + (client * 7 + i) % 24)  # 64 B .. 1.5 KiB, random content


def test_concurrent_clients_get_back_every_byte_they_put(cluster: Cluster):
    n_clients, n_objects = 4, 1000
    failures: list[str] = []

    def run(c: int) -> None:
        # half the clients use the same-host shared-memory path, half plain gRPC
        with KVStoreClient(cluster.master.address, use_shm=c % 2 == 0, replicas=1 + c % 2) as client:
            objects = {f"client{c}/obj{i}": payload(c, i) for i in range(n_objects)}
            keys = list(objects)
            for start in range(0, n_objects, 250):  # several batches, pipelined per node
                results = client.put({k: objects[k] for k in keys[start : start + 250]})
                failures.extend(f"{k}: {r}" for k, r in results.items() if not r.ok)
            got = client.get(keys)
            failures.extend(k for k in keys if got[k] != objects[k])
            other = f"client{(c + 1) % n_clients}/obj0"
            if got_other := client.get([other])[other]:  # another client's object, when already there
                failures.extend([] if len(got_other) % 64 == 0 else [other])

    threads = [threading.Thread(target=run, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    stats = cluster.stats()
    assert stats.objects == n_clients * n_objects
    assert all(n.used <= n.capacity for n in stats.nodes)
    assert sum(1 for n in stats.nodes if n.used > 0) == 3  # spread over every node


def test_killed_node_objects_become_misses_and_the_rest_keeps_serving(cluster: Cluster):
    with KVStoreClient(cluster.master.address, use_shm=False) as client:
        objects = {f"obj{i}": os.urandom(2048) for i in range(600)}
        assert all(r.ok for r in client.put(objects).values())
        with grpc.insecure_channel(cluster.master.address) as channel:
            located = pb_grpc.MasterStub(channel).BatchGet(pb.KeysRequest(keys=list(objects)))
        victim = cluster.nodes[0]
        lost = {o.key for o in located.objects if o.replicas[0].address == victim.address}
        assert 0 < len(lost) < len(objects)

        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait()
        got = client.get(list(objects))  # before expiry: a miss or the right bytes, never wrong ones
        assert all(got[k] in (None, v) for k, v in objects.items())

        cluster.wait_for_nodes(2, timeout_s=4)  # heartbeat timeout is 1.5 s

        got = client.get(list(objects))
        assert {k for k, v in got.items() if v is None} == lost
        assert all(got[k] == v for k, v in objects.items() if k not in lost)
        assert client.exists(sorted(lost)[:5]) == [False] * 5
        fresh = {f"after/{i}": os.urandom(4096) for i in range(100)}
        assert all(r.ok for r in client.put(fresh).values())
        assert client.get(list(fresh)) == fresh


def test_processes_serve_health_and_metrics_and_stop_cleanly_on_sigterm():
    cluster = start_cluster(1)
    try:
        for proc, service in [
            (cluster.master, "splitserve.kvstore.Master"),
            (cluster.nodes[0], "splitserve.kvstore.StorageNode"),
        ]:
            with grpc.insecure_channel(proc.address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with KVStoreClient(cluster.master.address) as client:
            client.put({"a": b"x" * 1000})
            client.get(["a", "missing"])
        text = urllib.request.urlopen(f"http://127.0.0.1:{cluster.master.metrics_port}/metrics", timeout=5).read().decode()
        for name in [
            "capacity_bytes",
            "used_bytes",
            "objects",
            "hits_total",
            "misses_total",
            "evictions_total",
            "received_bytes_total",
            "operation_seconds_bucket",
        ]:
            assert f"splitserve_kvstore_{name}" in text
        assert 'splitserve_kvstore_misses_total{component="master"} 1.0' in text
        node_text = urllib.request.urlopen(f"http://127.0.0.1:{cluster.nodes[0].metrics_port}/metrics", timeout=5).read().decode()
        assert "splitserve_kvstore_sent_bytes_total" in node_text
    finally:
        assert cluster.stop() == [0, 0]
