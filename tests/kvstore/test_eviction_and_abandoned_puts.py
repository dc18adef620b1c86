"""Eviction under memory pressure, and puts abandoned by a client that died."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from kvstore.embedded import EmbeddedStore
from kvstore.master_config import MasterConfig
from kvstore.sync_client import KVStoreClient

OBJ = 64 << 10
CAPACITY = 64 * OBJ  # room for 64 objects


def test_eviction_spares_leased_and_pinned_objects_and_takes_the_least_recently_used():
    config = MasterConfig(events_port=None, lease_ttl_s=30.0, tick_interval_s=0.05)
    with EmbeddedStore(CAPACITY, master=config) as store, KVStoreClient(store.address) as client:
        objects = {f"obj{i:03d}": os.urandom(OBJ) for i in range(72)}
        names = list(objects)
        assert all(r.ok for r in client.put({k: objects[k] for k in names[:48]}).values())
        assert client.pin(names[0:4]) == [True] * 4
        leased = client.get(names[4:8])  # leased for 30 s and now the most recently used
        assert all(leased[k] == objects[k] for k in names[4:8])

        assert all(r.ok for r in client.put({k: objects[k] for k in names[48:72]}).values())
        time.sleep(0.2)  # let the master's tick settle down to the low watermark

        exists = dict(zip(names, client.exists(names)))
        assert all(exists[k] for k in names[0:8]), "a pinned or leased object was evicted"
        assert all(exists[k] for k in names[48:72])
        middle = [exists[k] for k in names[8:48]]  # never read since their put: oldest first out
        evicted = middle.count(False)
        assert evicted > 0 and middle == [False] * evicted + [True] * (40 - evicted)
        stats = client.stats()
        assert stats.evictions == evicted
        assert stats.nodes[0].used <= config.high_watermark * CAPACITY
        got = client.get(names[48:72] + names[0:8])
        assert all(got[k] == objects[k] for k in got)


def test_store_full_of_leased_objects_refuses_puts_instead_of_evicting_them():
    config = MasterConfig(events_port=None, lease_ttl_s=30.0)
    with EmbeddedStore(8 * OBJ, master=config) as store, KVStoreClient(store.address) as client:
        first = {f"a{i}": os.urandom(OBJ) for i in range(8)}
        client.put(first)
        client.get(list(first))  # all leased
        result = client.put({"b": os.urandom(OBJ)})["b"]
        assert not result.ok and "leased" in str(result.error)
        assert client.get(list(first)) == first


CRASHING_CLIENT = textwrap.dedent(
    """
    import sys, time, grpc, xxhash
    from contracts.rpc import kvstore_pb2 as pb, kvstore_pb2_grpc as pb_grpc
    data = b"z" * (4 << 20)
    master = pb_grpc.MasterStub(grpc.insecure_channel(sys.argv[1]))
    started = master.PutStart(pb.PutStartItem(key="half-written", size=len(data), checksum=xxhash.xxh3_64_intdigest(data)))
    node = pb_grpc.StorageNodeStub(grpc.insecure_channel(started.replicas[0].address))
    def chunks():
        yield pb.WriteChunk(offset=started.replicas[0].offset, size=len(data), checksum=0, data=data[: 1 << 20])
        print("writing", flush=True)
        time.sleep(60)  # killed here: half the object sent, never committed
    node.Write(chunks())
    """
)


def test_client_killed_mid_put_leaves_nothing_visible_and_its_space_returns():
    config = MasterConfig(events_port=None, put_timeout_s=1.0, tick_interval_s=0.05)
    with EmbeddedStore(16 << 20, master=config) as store, KVStoreClient(store.address) as client:
        crashing = subprocess.Popen([sys.executable, "-c", CRASHING_CLIENT, store.address], stdout=subprocess.PIPE, text=True)
        try:
            assert crashing.stdout.readline().strip() == "writing"
            assert client.stats().pending_puts == 1 and client.stats().nodes[0].used >= 4 << 20
            os.kill(crashing.pid, signal.SIGKILL)
        finally:
            crashing.kill()
            crashing.wait()
        assert client.exists(["half-written"]) == [False]
        assert client.get(["half-written"]) == {"half-written": None}
        deadline = time.monotonic() + 5
        while client.stats().nodes[0].used > 0:
            assert time.monotonic() < deadline, "space of the abandoned put never came back"
            time.sleep(0.05)
        assert client.stats().pending_puts == 0
        data = os.urandom(4 << 20)
        assert client.put({"half-written": data})["half-written"].ok  # the key is free for a real writer
        assert client.get(["half-written"])["half-written"] == data


WRITTEN_NEVER_COMMITTED = textwrap.dedent(
    """
    import sys, time, grpc
    from contracts.rpc import kvstore_pb2 as pb, kvstore_pb2_grpc as pb_grpc
    from kvstore.data_plane import OK, WRITE, DataPlaneClient, Item
    data = memoryview(b"w" * (4 << 20))
    master = pb_grpc.MasterStub(grpc.insecure_channel(sys.argv[1]))
    started = master.PutStart(pb.PutStartItem(key="written", size=len(data)))  # checksum to come at commit
    replica = started.replicas[0]
    assert DataPlaneClient().request_blocking(replica.data_address, WRITE, [Item(replica.offset, len(data), data)]) == [OK]
    print("written", flush=True)
    time.sleep(60)  # killed here: every byte on the node and acknowledged, never committed
    """
)


def test_writer_killed_between_its_acknowledged_data_and_its_commit_leaves_nothing_visible():
    config = MasterConfig(events_port=None, put_timeout_s=1.0, tick_interval_s=0.05)
    with EmbeddedStore(16 << 20, master=config) as store, KVStoreClient(store.address, use_shm=False) as client:
        command = [sys.executable, "-c", WRITTEN_NEVER_COMMITTED, store.address]
        writer = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout is not None and writer.stdout.readline().strip() == "written"
            os.kill(writer.pid, signal.SIGKILL)
        finally:
            writer.kill()
            writer.wait()
        assert client.exists(["written"]) == [False]
        assert client.get(["written"]) == {"written": None}
        deadline = time.monotonic() + 5
        while client.stats().nodes[0].used > 0:
            assert time.monotonic() < deadline, "space of the uncommitted put never came back"
            time.sleep(0.05)
        assert client.stats().pending_puts == 0
        data = os.urandom(4 << 20)
        assert client.put({"written": data})["written"].ok
        assert client.get(["written"])["written"] == data
