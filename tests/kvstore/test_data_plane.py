"""The storage node's raw-TCP data plane: same bytes as gRPC, and bad requests refused, not served."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import xxhash

from contracts.rpc import kvstore_pb2 as pb
from contracts.rpc import kvstore_pb2_grpc as pb_grpc
from kvstore import hashed_io
from kvstore.data_plane import BAD_CHECKSUM, BAD_RANGE, OK, READ, WRITE, DataPlaneClient, DataPlaneServer, Item
from kvstore.embedded import EmbeddedStore
from kvstore.hashed_io import HashLane
from kvstore.segment import SharedSegment
from kvstore.sync_client import KVStoreClient

LANE = pytest.mark.parametrize("lane", [False, True], ids=["hashed-inline", "hash-lane"])


@LANE
def test_remote_clients_read_over_the_data_plane_what_grpc_clients_read(lane, monkeypatch):
    monkeypatch.setattr(hashed_io, "LANE_MIN_CPUS", 1 if lane else 1 << 20)  # node and client decide alike
    with EmbeddedStore(64 << 20) as store:
        assert store.node is not None and store.node.data_address
        objects = {f"obj{i}": os.urandom(1 + i * 7919) for i in range(40)} | {"big": os.urandom(9 << 20)}
        with (
            KVStoreClient(store.address, use_shm=False) as raw,
            KVStoreClient(store.address, use_shm=False, use_data_plane=False) as grpc_only,
        ):
            assert all(r.ok for r in raw.put(objects).values())
            assert grpc_only.get(list(objects)) == objects
            assert raw.get(list(objects)) == objects
            buffers = [bytearray(len(v)) for v in objects.values()]
            assert raw.get_into(list(objects), buffers) == [True] * len(objects)
            assert [bytes(b) for b in buffers] == list(objects.values())


def test_readers_check_the_checksum_declared_at_commit_and_miss_bytes_that_do_not_match_it():
    with (
        EmbeddedStore(16 << 20) as store,
        KVStoreClient(store.address, use_shm=False) as reader,
        grpc.insecure_channel(store.address) as channel,
    ):
        master = pb_grpc.MasterStub(channel)
        data = memoryview(os.urandom(1 << 20))
        for key, declared in (("honest", None), ("lying", 12345)):
            started = master.PutStart(pb.PutStartItem(key=key, size=len(data)))  # no checksum at start
            item = Item(started.replicas[0].offset, len(data), data)
            assert DataPlaneClient().request_blocking(started.replicas[0].data_address, WRITE, [item]) == [OK]
            checksum = item.checksum if declared is None else declared
            assert checksum is not None
            master.BatchPutCommit(pb.PutCommitRequest(put_ids=[started.put_id], checksums=[checksum]))
        assert reader.get(["honest", "lying"]) == {"honest": bytes(data), "lying": None}


@pytest.fixture(params=[False, True], ids=["hashed-inline", "hash-lane"])
async def server(request):
    segment = SharedSegment.create(4 << 20)
    plane = DataPlaneServer(segment, hash_lane=request.param)
    port = await plane.start("127.0.0.1", 0)
    yield f"127.0.0.1:{port}", segment
    await plane.stop()
    segment.close()


@LANE
async def test_a_write_learns_its_checksum_as_it_sends_and_reads_back_the_same_bytes(server, lane):
    address, _ = server
    client = DataPlaneClient(hash_lane=lane)
    data = memoryview(os.urandom(3 << 20))  # several hashed pieces
    write = Item(0, len(data), data)
    assert await client.request(address, WRITE, [write]) == [OK]
    assert write.checksum == xxhash.xxh3_64_intdigest(data)
    back = Item(0, len(data), None)
    assert await client.request(address, READ, [back]) == [OK]
    assert back.view is not None and bytes(back.view) == bytes(data)
    assert back.checksum == write.checksum  # hashed while it arrived
    client.close()


async def test_concurrent_requests_through_one_client_lane_each_get_the_checksums_of_their_own_bytes(server):
    address, _ = server
    client = DataPlaneClient(hash_lane=True)  # one helper thread shared by every request of this client
    blobs = [os.urandom((1 << 20) + 4096 * i) for i in range(3)]
    writes = [Item(i * (5 << 20) // 4, len(b), memoryview(b)) for i, b in enumerate(blobs)]
    statuses = await asyncio.gather(*(client.request(address, WRITE, [w]) for w in writes))
    assert statuses == [[OK]] * 3
    assert [w.checksum for w in writes] == [xxhash.xxh3_64_intdigest(b) for b in blobs]
    reads = [Item(w.offset, w.size, None) for w in writes]
    assert await asyncio.gather(*(client.request(address, READ, [r]) for r in reads)) == [[OK]] * 3
    assert [r.checksum for r in reads] == [w.checksum for w in writes]
    assert [bytes(r.view) for r in reads if r.view is not None] == blobs
    client.close()


def test_the_hash_lane_gives_every_object_the_checksum_of_its_own_bytes():
    # small objects share a hand-over, big ones span several: each digest must see exactly its bytes, in order
    objects = [os.urandom(n) for n in (1, 4096, 700_000, 3 << 20, 17, (1 << 20) + 1, 65_537, 2 << 20)]
    landing = [memoryview(bytearray(len(o))) for o in objects]
    left, right = socket.socketpair()
    sender, receiver = HashLane("test-send"), HashLane("test-receive")
    try:
        with ThreadPoolExecutor(1) as pool:
            received = pool.submit(receiver.recv_all, right, landing)
            sent = sender.send_all(left, [memoryview(o) for o in objects])
            got = received.result(timeout=30)
    finally:
        for closing in (sender, receiver, left, right):
            closing.close()
    assert sent == got == [xxhash.xxh3_64_intdigest(o) for o in objects]
    assert [bytes(v) for v in landing] == objects


async def test_bytes_that_arrive_unlike_their_checksum_are_refused_and_the_rest_acknowledged(server):
    address, _ = server
    data = os.urandom(4096)
    good = xxhash.xxh3_64_intdigest(data)
    # what a transfer corrupted on the way looks like to the node: payload and trailing checksum disagree
    request = struct.pack("<BI", WRITE, 2) + struct.pack("<QQ", 0, 4096) + struct.pack("<QQ", 8192, 4096)
    request += data + data + struct.pack("<QQ", good, good ^ 1)
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        assert sock.recv(2, socket.MSG_WAITALL) == bytes([OK, BAD_CHECKSUM])


async def test_a_range_outside_the_segment_is_refused_and_the_node_keeps_serving(server):
    address, segment = server
    client = DataPlaneClient()
    assert await client.request(address, READ, [Item(segment.capacity - 10, 100, None)]) == [BAD_RANGE]
    assert await client.request(address, READ, [Item(0, 0, None)]) == [BAD_RANGE]  # empty ranges too
    assert await client.request(address, READ, [Item(0, 100, None)]) == [OK]
    client.close()


async def test_garbage_on_the_socket_closes_that_connection_only(server):
    address, _ = server
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"\xff" * 64)
    await writer.drain()
    try:
        answer = await asyncio.wait_for(reader.read(), timeout=5)
    except ConnectionResetError:  # closed with our unread garbage still queued
        answer = b""
    assert answer == b""  # closed without an answer
    writer.close()
    client = DataPlaneClient()
    assert await client.request(address, READ, [Item(0, 16, None)]) == [OK]
    client.close()


async def test_an_unreachable_node_is_an_os_error_not_a_hang():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening
        with pytest.raises(OSError):
            await asyncio.wait_for(DataPlaneClient().request(f"127.0.0.1:{port}", READ, [Item(0, 1, None)]), timeout=5)
