"""The node's copy-light codec speaks exactly the proto's wire format, both ways."""

from __future__ import annotations

import os

from contracts.rpc import kvstore_pb2 as pb
from kvstore import wire


def test_bulk_messages_round_trip_through_the_generated_protobuf_classes():
    data = os.urandom(70_000)
    chunk = pb.WriteChunk.FromString(wire.encode_write_chunk(wire.WriteChunkView(memoryview(data), 7, 70_000, 2**64 - 1)))
    assert (chunk.data, chunk.offset, chunk.size, chunk.checksum, chunk.chunk_checksum) == (data, 7, 70_000, 2**64 - 1, 0)
    view = wire.decode_write_chunk(pb.WriteChunk(data=data, size=3, chunk_checksum=9).SerializeToString())
    assert (bytes(view.data), view.offset, view.size, view.chunk_checksum) == (data, 0, 3, 9)

    items = [wire.WriteItemView(i * 512, i, memoryview(os.urandom(i * 100))) for i in range(4)]
    request = pb.BatchWriteRequest.FromString(wire.encode_batch_write(items))
    assert [(i.offset, i.checksum, i.data) for i in request.items] == [(i.offset, i.checksum, bytes(i.data)) for i in items]
    back = wire.decode_batch_write(request.SerializeToString())
    assert [(i.offset, i.checksum, bytes(i.data)) for i in back] == [(i.offset, i.checksum, bytes(i.data)) for i in items]

    blobs = [b"", b"x", os.urandom(300)]
    assert list(pb.BatchReadReply.FromString(wire.encode_batch_read([memoryview(b) for b in blobs])).data) == blobs
    assert [bytes(v) for v in wire.decode_batch_read(pb.BatchReadReply(data=blobs).SerializeToString())] == blobs
    assert bytes(wire.decode_read_chunk(pb.ReadChunk(data=data).SerializeToString())) == data


def test_truncated_message_is_rejected_not_misread():
    message = wire.encode_read_chunk(memoryview(b"abcdef"))
    try:
        wire.decode_read_chunk(message[:-2])
    except wire.WireError as exc:
        assert "remain" in str(exc)
    else:
        raise AssertionError("a truncated message decoded")
