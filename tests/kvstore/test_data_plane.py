"""The storage node's raw-TCP data plane: same bytes as gRPC, and bad requests refused, not served."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
import xxhash

from kvstore.data_plane import BAD_CHECKSUM, BAD_RANGE, OK, READ, WRITE, DataPlaneClient, DataPlaneServer, Item
from kvstore.embedded import EmbeddedStore
from kvstore.segment import SharedSegment
from kvstore.sync_client import KVStoreClient


def test_remote_clients_read_over_the_data_plane_what_grpc_clients_read():
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


@pytest.fixture
async def server():
    segment = SharedSegment.create(1 << 20)
    plane = DataPlaneServer(segment)
    port = await plane.start("127.0.0.1", 0)
    yield f"127.0.0.1:{port}", segment
    await plane.stop()
    segment.close()


async def test_a_write_whose_bytes_do_not_match_its_checksum_is_refused(server):
    address, _ = server
    client = DataPlaneClient()
    data = memoryview(os.urandom(4096))
    good, bad = Item(0, 4096, xxhash.xxh3_64_intdigest(data), data), Item(8192, 4096, 12345, data)
    assert await client.request(address, WRITE, [good, bad]) == [OK, BAD_CHECKSUM]
    back = Item(0, 4096, 0, None)
    assert await client.request(address, READ, [back]) == [OK]
    assert back.view is not None and bytes(back.view) == bytes(data)
    client.close()


async def test_a_range_outside_the_segment_is_refused_and_the_node_keeps_serving(server):
    address, segment = server
    client = DataPlaneClient()
    assert await client.request(address, READ, [Item(segment.capacity - 10, 100, 0, None)]) == [BAD_RANGE]
    assert await client.request(address, READ, [Item(0, 0, 0, None)]) == [BAD_RANGE]  # empty ranges too
    assert await client.request(address, READ, [Item(0, 100, 0, None)]) == [OK]
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
    assert await client.request(address, READ, [Item(0, 16, 0, None)]) == [OK]
    client.close()


async def test_an_unreachable_node_is_an_os_error_not_a_hang():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening
        with pytest.raises(OSError):
            await asyncio.wait_for(DataPlaneClient().request(f"127.0.0.1:{port}", READ, [Item(0, 1, 0, None)]), timeout=5)
