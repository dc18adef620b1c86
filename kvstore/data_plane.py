"""Raw-TCP data plane of a storage node: object bytes without gRPC.

gRPC messages cost several copies and a fresh allocation each (kvstore/transfer.py),
which held remote puts and gets to ~10-20% of a plain socket. Here the bytes travel as
one stream per batch: the node receives straight into its segment (recv_into) and
sends straight out of it; the client sends from and receives into the caller's
buffers. Metadata (where to write, what to commit) stays on gRPC with the master.
Both sides use blocking sockets on threads (see DataPlaneServer).

One request per batch on a pooled connection, little-endian:

    request  = op:u8 (1 write, 2 read) | count:u32 | count x (offset:u64 size:u64)
               | writes: count x payload | count x checksum:u64
    reply    = count x status:u8 (0 ok, 1 bad range, 2 checksum mismatch) | read payloads of the ok items

Every payload is hashed (xxh3_64) as it passes through the socket, on both sides (by the
socket's thread, or beside it on a helper thread where cores allow: kvstore/hashed_io.py):
a writer learns its objects' checksums as it sends them (and declares them to the master at
commit; kvstore/client.py), so no side makes a pass of its own over the bytes.
The node checks every range against its segment before it touches a byte and closes the
connection after a bad request; a write is acknowledged only once the bytes that arrived
match the checksum sent after them, and the client checks every read against the
master's checksum the same way.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from kvstore import metrics
from kvstore.hashed_io import HashLane, lane_by_default, recv_exactly, recv_hashed, send_hashed
from kvstore.segment import SharedSegment

log = logging.getLogger(__name__)

WRITE, READ = 1, 2
OK, BAD_RANGE, BAD_CHECKSUM = 0, 1, 2
_HEADER = struct.Struct("<BI")
_ITEM = struct.Struct("<QQ")
_CHECKSUM = struct.Struct("<Q")
MAX_ITEMS = 1 << 16
CONNECT_TIMEOUT_S = 5.0
IO_TIMEOUT_S = 60.0  # a node that stops reading or sending mid-request: the caller tries another replica


@dataclass(slots=True)
class Item:
    offset: int
    size: int
    view: memoryview | None  # write: the bytes; read: where they land (None: a fresh buffer)
    checksum: int | None = None  # xxh3_64 of the bytes sent (write) or received (read), hashed as they passed


class DataPlaneServer:
    """Serves one segment on a TCP port, beside the node's gRPC service.

    A thread per connection with blocking sockets: a recv_into / sendall of a 2 MiB object is
    one system call that runs without the GIL, where an asyncio loop wakes up per socket
    buffer's worth (~5x fewer bytes per second on the dev VM). Clients keep few connections
    (one per request in flight), so the threads stay few.
    """

    def __init__(self, segment: SharedSegment, hash_lane: bool | None = None) -> None:
        self.segment = segment
        self.hash_lane = lane_by_default() if hash_lane is None else hash_lane  # kvstore/hashed_io.py
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    async def start(self, host: str, port: int) -> int:
        listener = socket.create_server((host, port), backlog=128)
        self._listener = listener
        thread = threading.Thread(target=self._accept, args=(listener,), name="kv-data-plane", daemon=True)
        thread.start()
        self._threads.append(thread)
        return listener.getsockname()[1]

    async def stop(self) -> None:
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept thread
            except OSError:
                pass
            self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes its thread out of recv
            except OSError:
                pass
        await asyncio.to_thread(self._join_threads)

    def _join_threads(self) -> None:
        for t in self._threads:
            t.join(5)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # stopped
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.add(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), name="kv-data-plane-conn", daemon=True)
            thread.start()
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _serve(self, conn: socket.socket) -> None:
        lane = HashLane("kv-data-plane-hash") if self.hash_lane else None
        try:
            while self._one_request(conn, lane):
                pass
        except (ConnectionError, OSError):
            pass  # the client went away; its puts expire at the master
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()
            if lane is not None:
                lane.close()

    def _one_request(self, conn: socket.socket, lane: HashLane | None) -> bool:
        """Serve one request; False when the connection must close."""
        header = bytearray(_HEADER.size)
        try:
            recv_exactly(conn, memoryview(header))
        except ConnectionError:
            return False
        op, count = _HEADER.unpack(header)
        if op not in (WRITE, READ) or count > MAX_ITEMS:
            return False
        table = bytearray(_ITEM.size * count)
        recv_exactly(conn, memoryview(table))
        items = [_ITEM.unpack_from(table, i * _ITEM.size) for i in range(count)]
        capacity = self.segment.capacity
        if any(size == 0 or offset + size > capacity for offset, size in items):
            conn.sendall(bytes([BAD_RANGE] * count))
            return False  # a write's payload would follow: the stream cannot be resynchronised
        segment = self.segment.array.data
        if op == WRITE:
            targets = [segment[offset : offset + size] for offset, size in items]
            arrived = lane.recv_all(conn, targets) if lane is not None else [recv_hashed(conn, t) for t in targets]
            sent = bytearray(_CHECKSUM.size * count)
            recv_exactly(conn, memoryview(sent))
            status = bytes(OK if a == s else BAD_CHECKSUM for a, (s,) in zip(arrived, _CHECKSUM.iter_unpack(sent)))
            metrics.RECEIVED.labels("node").inc(sum(size for _, size in items))
            conn.sendall(status)
        else:
            conn.sendall(bytes(count))
            for offset, size in items:
                conn.sendall(segment[offset : offset + size])
            metrics.SENT.labels("node").inc(sum(size for _, size in items))
        return True


class DataPlaneClient:
    """Batches to nodes' data planes over pooled blocking connections (one request in flight per
    connection), each request on a worker thread so the caller's event loop keeps running."""

    def __init__(self, hash_lane: bool | None = None) -> None:
        self._idle: dict[str, list[socket.socket]] = {}
        self._lock = threading.Lock()
        use_lane = lane_by_default() if hash_lane is None else hash_lane  # kvstore/hashed_io.py
        self._lane = HashLane("kv-data-plane-client-hash") if use_lane else None

    def _connect(self, address: str) -> socket.socket:
        with self._lock:
            idle = self._idle.get(address)
            if idle:
                return idle.pop()
        host, port = address.rsplit(":", 1)
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S)
        sock.settimeout(IO_TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    async def request(self, address: str, op: int, items: Sequence[Item]) -> list[int]:
        """Send one batch; per-item status. Raises OSError / ConnectionError when the node is unreachable."""
        return await asyncio.to_thread(self.request_blocking, address, op, items)

    def request_blocking(self, address: str, op: int, items: Sequence[Item]) -> list[int]:
        sock = self._connect(address)
        try:
            head = _HEADER.pack(op, len(items)) + b"".join(_ITEM.pack(i.offset, i.size) for i in items)
            sock.sendall(head)
            if op == WRITE:
                self._send(sock, items)
            status = bytearray(len(items))
            recv_exactly(sock, memoryview(status))
            if op == READ and all(s == OK for s in status):
                self._receive(sock, items)
        except BaseException:
            sock.close()  # a half-read reply leaves the stream unusable
            raise
        if all(s == OK for s in status):
            with self._lock:
                self._idle.setdefault(address, []).append(sock)
        else:
            sock.close()  # the node closes after a bad request
        return list(status)

    def _send(self, sock: socket.socket, items: Sequence[Item]) -> None:
        """A write's payloads, then their checksums (learnt while sending)."""
        views = [_payload(item) for item in items]
        checksums = self._lane.send_all(sock, views) if self._lane is not None else [send_hashed(sock, v) for v in views]
        for item, checksum in zip(items, checksums):
            item.checksum = checksum
        sock.sendall(b"".join(_CHECKSUM.pack(c) for c in checksums))

    def _receive(self, sock: socket.socket, items: Sequence[Item]) -> None:
        """A read's payloads, each into its item's view (a fresh buffer where it has none), hashed as they arrive."""
        for item in items:
            if item.view is None:
                item.view = memoryview(bytearray(item.size))
        views = [_payload(item) for item in items]
        checksums = self._lane.recv_all(sock, views) if self._lane is not None else [recv_hashed(sock, v) for v in views]
        for item, checksum in zip(items, checksums):
            item.checksum = checksum

    def close(self) -> None:
        with self._lock:
            for socks in self._idle.values():
                for sock in socks:
                    sock.close()
            self._idle.clear()
        if self._lane is not None:
            self._lane.close()


def _payload(item: Item) -> memoryview:
    assert item.view is not None  # a write's bytes, or a read's landing place
    return item.view[: item.size]
