"""Same-host shared-memory path, embedded mode, and KV events on ZMQ."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import zmq
from prometheus_client import REGISTRY

from contracts.kv_events import BlockRemoved, BlockStored, decode_batch
from kvstore.block_key import KVLayout, block_keys, store_key
from kvstore.embedded import EmbeddedStore
from kvstore.event_publisher import request_snapshot
from kvstore.sync_client import KVStoreClient


@pytest.fixture(scope="module")
def store():
    with EmbeddedStore(64 << 20) as s:
        yield s


def node_bytes_received() -> float:
    return REGISTRY.get_sample_value("splitserve_kvstore_received_bytes_total", {"component": "node"}) or 0.0


def test_shared_memory_path_returns_the_same_bytes_as_grpc(store):
    objects = {f"shm/{i}": os.urandom(size) for i, size in enumerate([1, 300, 65536, 3 << 20])}
    with KVStoreClient(store.address, use_shm=True) as local, KVStoreClient(store.address, use_shm=False) as remote:
        before = node_bytes_received()
        assert all(r.ok for r in local.put(objects).values())
        assert node_bytes_received() == before  # only metadata crossed gRPC
        via_grpc, via_shm = remote.get(list(objects)), local.get(list(objects))
        assert via_grpc == via_shm == objects
        more = {f"grpc/{i}": os.urandom(5000) for i in range(10)}
        remote.put(more)
        assert node_bytes_received() == before + sum(map(len, more.values()))
        assert local.get(list(more)) == more


def test_a_big_same_host_batch_read_on_several_threads_lands_every_object_in_its_own_buffer(store):
    # over 1 MiB in all, so the copies are split over threads (kvstore/transfer.py); uneven sizes
    objects = {f"par/{i}": os.urandom(size) for i, size in enumerate([700_000, 512 << 10, 3, 1 << 20, 65_537, 300_000])}
    with KVStoreClient(store.address, use_shm=True) as client:
        assert all(r.ok for r in client.put(objects).values())
        buffers = [bytearray(len(v) + 7) for v in objects.values()]  # room to spare stays untouched
        assert client.get_into(list(objects), buffers) == [True] * len(objects)
        for (key, value), buf in zip(objects.items(), buffers):
            assert bytes(buf[: len(value)]) == value and buf[len(value) :] == bytearray(7), key
        assert client.get(list(objects)) == objects


def test_tensors_round_trip_into_caller_buffers_on_both_paths(store):
    layout = KVLayout("tiny-model", "bfloat16", 16, tp_rank=0, tp_size=1)
    keys = block_keys(list(range(64)), "tiny-model")  # 4 blocks
    # one block, all layers: [layers=2, K/V=2, block_size=16, kv_heads=2, head_dim=8]
    blocks = {k: torch.randn(2, 2, 16, 2, 8).to(torch.bfloat16) for k in keys}
    with KVStoreClient(store.address, use_shm=True) as local, KVStoreClient(store.address, use_shm=False) as remote:
        assert all(r.ok for r in local.put_blocks(layout, blocks).values())
        assert local.blocks_exist(layout, keys + [b"\x00" * 16]) == [True] * 4 + [False]
        for client in (local, remote):
            out = [torch.empty(2, 2, 16, 2, 8, dtype=torch.bfloat16) for _ in keys]
            assert client.get_blocks_into(layout, keys, out) == [True] * 4
            assert all(torch.equal(o, blocks[k]) for o, k in zip(out, keys))
        raw = remote.get_blocks(layout, keys)
        assert np.array_equal(np.frombuffer(raw[0], np.uint8), blocks[keys[0]].view(torch.uint8).numpy().reshape(-1))


def test_embedded_store_publishes_stored_and_removed_block_keys():
    layout = KVLayout("events-model", "float16", 16)
    keys = block_keys(list(range(48)), "events-model")  # 3 blocks
    with EmbeddedStore(16 << 20) as store, KVStoreClient(store.address) as client:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"kvstore")
        sub.setsockopt(zmq.RCVTIMEO, 5000)
        sub.connect(store.events_endpoint)
        received: list = []
        # a SUB socket only sees messages after its subscription reaches the PUB: retry a probe until one arrives
        for attempt in range(50):
            client.put({store_key(layout, bytes([attempt]) * 16): b"probe"})
            try:
                received.append(decode_batch(sub.recv_multipart(flags=zmq.NOBLOCK if attempt < 49 else 0)))
                break
            except zmq.Again:
                zmq.select([sub], [], [], 0.05)
        client.put_blocks(layout, {k: b"kv" * 100 for k in keys})
        client.remove([store_key(layout, keys[0])])
        stored, removed = set(), set()
        while len(stored) < 3 or not removed:
            batch = decode_batch(sub.recv_multipart())
            assert batch.topic == "kvstore" and batch.seq > received[-1].seq
            received.append(batch)
            for event in batch.events:
                if isinstance(event, BlockStored):
                    assert event.medium == "store"
                    stored.update(event.keys)
                elif isinstance(event, BlockRemoved):
                    removed.update(event.keys)
        assert set(keys) <= stored and removed == {keys[0]}
        seq, snapshot = request_snapshot(store.snapshot_endpoint)
        assert seq >= received[-1].seq
        assert set(keys[1:]) <= set(snapshot["store"]) and keys[0] not in snapshot["store"]
        sub.close()


def test_a_same_host_read_that_outlives_its_lease_is_verified_and_a_changed_object_is_a_miss():
    from kvstore.master_config import MasterConfig

    # lease 0 s: every read outlives its lease, so the client must check the bytes it copied
    with EmbeddedStore(8 << 20, master=MasterConfig(events_port=None, lease_ttl_s=0.0)) as s:
        with KVStoreClient(s.address, use_shm=True) as client:
            data = os.urandom(64 << 10)
            assert client.put({"obj": data})["obj"].ok
            out = bytearray(len(data))
            assert client.get_into(["obj"], [out]) == [True] and out == data

            segment = s.node.segment.array  # bytes changed behind the store's back
            start = segment.tobytes().find(data[:4096])
            segment[start + 100] ^= 0xFF
            assert client.get_into(["obj"], [bytearray(len(data))]) == [False]


def test_a_starting_node_removes_segments_of_killed_nodes_and_keeps_live_ones(tmp_path):
    import subprocess
    import sys

    from kvstore.segment import SEGMENT_PREFIX, SHM_DIR

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    orphan = os.path.join(SHM_DIR, f"{SEGMENT_PREFIX}-{gone.pid}-testorphan")
    live = os.path.join(SHM_DIR, f"{SEGMENT_PREFIX}-{alive.pid}-testlive")
    try:
        for path in (orphan, live):
            with open(path, "wb") as f:
                f.truncate(1 << 20)
        with EmbeddedStore(1 << 20):
            assert not os.path.exists(orphan)  # a SIGKILLed node's memory is given back to tmpfs
            assert os.path.exists(live)  # a running node's segment is never touched
    finally:
        alive.kill()
        alive.wait()
        for path in (orphan, live):
            if os.path.exists(path):
                os.unlink(path)
