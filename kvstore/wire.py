"""Copy-light protobuf codec for the node's bulk messages (object bytes on gRPC).

The generated (upb) messages copy a ``bytes`` field on construction, on
serialisation, on parsing and again on every attribute read: four or more copies of
each object per hop, plus a fresh allocation each time. The data-plane messages are
tiny schemas around one bytes field, so here they are encoded with one join straight
from the caller's buffer and decoded into memoryviews of the received message.
The wire format is exactly proto/contracts/rpc/kvstore.proto's, so stubs generated
from the proto talk to these handlers and vice versa.

Encoded: WriteChunk, BatchWriteRequest (client -> node), ReadChunk, BatchReadReply
(node -> client). Everything else stays on the generated classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class WireError(ValueError):
    """A data-plane message is not valid protobuf for its schema."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len_header(field: int, length: int) -> bytes:
    return bytes([(field << 3) | _LEN]) + _varint(length)


def _varint_field(field: int, n: int) -> bytes:
    return bytes([(field << 3) | _VARINT]) + _varint(n) if n else b""


def _fields(buf: memoryview) -> list[tuple[int, int | memoryview]]:
    """(field number, value) pairs: ints for varints, memoryviews for length-delimited fields."""
    out: list[tuple[int, int | memoryview]] = []
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _read_varint(buf, pos)
        field, kind = tag >> 3, tag & 7
        if kind == _VARINT:
            value, pos = _read_varint(buf, pos)
            out.append((field, value))
        elif kind == _LEN:
            length, pos = _read_varint(buf, pos)
            if pos + length > end:
                raise WireError(f"field {field} claims {length} bytes but only {end - pos} remain")
            out.append((field, buf[pos : pos + length]))
            pos += length
        elif kind == _I64:
            pos += 8
        elif kind == _I32:
            pos += 4
        else:
            raise WireError(f"unsupported wire type {kind} for field {field}")
    if pos != end:
        raise WireError("message ends inside a field")
    return out


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise WireError("message ends inside a varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint longer than 10 bytes")


# ---------------------------------------------------------------- client -> node


@dataclass(slots=True)
class WriteChunkView:
    """One chunk of a streamed Write; the header fields are set on the first chunk only."""

    data: memoryview
    offset: int = 0
    size: int = 0
    checksum: int = 0
    chunk_checksum: int = 0  # 0 = not checked per chunk (the whole object is, at the end)


def encode_write_chunk(chunk: WriteChunkView) -> bytes:
    head = _varint_field(1, chunk.offset) + _varint_field(2, chunk.size) + _varint_field(3, chunk.checksum)
    return b"".join((head, _len_header(4, len(chunk.data)), chunk.data, _varint_field(5, chunk.chunk_checksum)))


def decode_write_chunk(message: bytes) -> WriteChunkView:
    chunk = WriteChunkView(memoryview(b""))
    for field, value in _fields(memoryview(message)):
        if field == 1:
            chunk.offset = value  # type: ignore[assignment]
        elif field == 2:
            chunk.size = value  # type: ignore[assignment]
        elif field == 3:
            chunk.checksum = value  # type: ignore[assignment]
        elif field == 4:
            chunk.data = value  # type: ignore[assignment]
        elif field == 5:
            chunk.chunk_checksum = value  # type: ignore[assignment]
    return chunk


@dataclass(slots=True)
class WriteItemView:
    offset: int
    checksum: int
    data: memoryview


def encode_batch_write(items: Sequence[WriteItemView]) -> bytes:
    parts: list[bytes | memoryview] = []
    for item in items:
        head = _varint_field(1, item.offset) + _varint_field(2, item.checksum) + _len_header(3, len(item.data))
        parts += (_len_header(1, len(head) + len(item.data)), head, item.data)
    return b"".join(parts)


def decode_batch_write(message: bytes) -> list[WriteItemView]:
    items = []
    for field, value in _fields(memoryview(message)):
        if field != 1:
            continue
        item = WriteItemView(0, 0, memoryview(b""))
        for f, v in _fields(value):  # type: ignore[arg-type]
            if f == 1:
                item.offset = v  # type: ignore[assignment]
            elif f == 2:
                item.checksum = v  # type: ignore[assignment]
            elif f == 3:
                item.data = v  # type: ignore[assignment]
        items.append(item)
    return items


# ---------------------------------------------------------------- node -> client


def encode_read_chunk(data: memoryview) -> bytes:
    return b"".join((_len_header(1, len(data)), data))


def decode_read_chunk(message: bytes) -> memoryview:
    found = [v for f, v in _fields(memoryview(message)) if f == 1]
    return found[-1] if found else memoryview(b"")  # type: ignore[return-value]


def encode_batch_read(data: Sequence[memoryview]) -> bytes:
    parts: list[bytes | memoryview] = []
    for d in data:
        parts += (_len_header(1, len(d)), d)
    return b"".join(parts)


def decode_batch_read(message: bytes) -> list[memoryview]:
    return [v for f, v in _fields(memoryview(message)) if f == 1]  # type: ignore[misc]
