"""Raw-TCP data plane of a storage node: object bytes without gRPC.

gRPC messages cost several copies and a fresh allocation each (kvstore/transfer.py),
which held remote puts and gets to ~10-20% of a plain socket. Here the bytes travel as
one stream per batch: the node receives straight into its segment (recv_into) and
sends straight out of it; the client sends from and receives into the caller's
buffers. Metadata (where to write, what to commit) stays on gRPC with the master.

One request per batch on a pooled connection, little-endian:

    request  = op:u8 (1 write, 2 read) | count:u32 | count x (offset:u64 size:u64 checksum:u64) | write payloads
    reply    = count x status:u8 (0 ok, 1 bad range, 2 checksum mismatch) | read payloads of the ok items

The node checks every range against its segment before it touches a byte and closes
the connection after a bad request; a write is acknowledged only once its bytes match
the checksum (xxh3_64), and the client verifies every read the same way.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import xxhash

from kvstore import metrics
from kvstore.segment import SharedSegment

log = logging.getLogger(__name__)

WRITE, READ = 1, 2
OK, BAD_RANGE, BAD_CHECKSUM = 0, 1, 2
_HEADER = struct.Struct("<BI")
_ITEM = struct.Struct("<QQQ")
MAX_ITEMS = 1 << 16


@dataclass(slots=True)
class Item:
    offset: int
    size: int
    checksum: int
    view: memoryview | None  # write: the bytes; read: where they land (None: a fresh buffer)


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = await loop.sock_recv_into(sock, view[got:])
        if n == 0:
            raise ConnectionError("peer closed the connection mid-message")
        got += n


class DataPlaneServer:
    """Serves one segment on a TCP port, beside the node's gRPC service."""

    def __init__(self, segment: SharedSegment) -> None:
        self.segment = segment
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self, host: str, port: int) -> int:
        listener = socket.create_server((host, port), backlog=128)
        listener.setblocking(False)
        self._listener = listener
        self._tasks.add(asyncio.create_task(self._accept(listener)))
        return listener.getsockname()[1]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(listener)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while await self._one_request(loop, conn):
                pass
        except (ConnectionError, OSError):
            pass  # the client went away; its puts expire at the master
        finally:
            conn.close()

    async def _one_request(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bool:
        """Serve one request; False when the connection must close."""
        header = bytearray(_HEADER.size)
        try:
            await _recv_exactly(loop, conn, memoryview(header))
        except ConnectionError:
            return False
        op, count = _HEADER.unpack(header)
        if op not in (WRITE, READ) or count > MAX_ITEMS:
            return False
        table = bytearray(_ITEM.size * count)
        await _recv_exactly(loop, conn, memoryview(table))
        items = [_ITEM.unpack_from(table, i * _ITEM.size) for i in range(count)]
        capacity = self.segment.capacity
        if any(size == 0 or offset + size > capacity for offset, size, _ in items):
            await loop.sock_sendall(conn, bytes([BAD_RANGE] * count))
            return False  # a write's payload would follow: the stream cannot be resynchronised
        segment = memoryview(self.segment.array)
        if op == WRITE:
            status = bytearray(count)
            for i, (offset, size, checksum) in enumerate(items):
                target = segment[offset : offset + size]
                await _recv_exactly(loop, conn, target)
                status[i] = OK if xxhash.xxh3_64_intdigest(target) == checksum else BAD_CHECKSUM
                metrics.RECEIVED.labels("node").inc(size)
            await loop.sock_sendall(conn, bytes(status))
        else:
            await loop.sock_sendall(conn, bytes(count))
            for offset, size, _ in items:
                await loop.sock_sendall(conn, segment[offset : offset + size])
                metrics.SENT.labels("node").inc(size)
        return True


class DataPlaneClient:
    """Batches to nodes' data planes over pooled connections (one request in flight per connection)."""

    def __init__(self) -> None:
        self._idle: dict[str, list[socket.socket]] = {}

    async def _connect(self, address: str) -> socket.socket:
        idle = self._idle.get(address)
        if idle:
            return idle.pop()
        host, port = address.rsplit(":", 1)
        sock = socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.get_running_loop().sock_connect(sock, (host.strip("[]"), int(port)))
        return sock

    async def request(self, address: str, op: int, items: Sequence[Item]) -> list[int]:
        """Send one batch; per-item status. Raises OSError / ConnectionError when the node is unreachable."""
        loop = asyncio.get_running_loop()
        sock = await self._connect(address)
        try:
            head = _HEADER.pack(op, len(items)) + b"".join(_ITEM.pack(i.offset, i.size, i.checksum) for i in items)
            await loop.sock_sendall(sock, head)
            if op == WRITE:
                for item in items:
                    assert item.view is not None
                    await loop.sock_sendall(sock, item.view)
            status = bytearray(len(items))
            await _recv_exactly(loop, sock, memoryview(status))
            if op == READ and all(s == OK for s in status):
                for item in items:
                    if item.view is None:
                        item.view = memoryview(bytearray(item.size))
                    await _recv_exactly(loop, sock, item.view[: item.size])
        except BaseException:
            sock.close()  # a half-read reply leaves the stream unusable
            raise
        if all(s == OK for s in status):
            self._idle.setdefault(address, []).append(sock)
        else:
            sock.close()  # the node closes after a bad request
        return list(status)

    def close(self) -> None:
        for socks in self._idle.values():
            for sock in socks:
                sock.close()
        self._idle.clear()
