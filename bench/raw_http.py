"""A minimal HTTP/1.1 keep-alive JSON client for load generation (blocking and asyncio).

httpx spends ~0.5-1 ms of client CPU per request, as much as the router it measures; on a
2-core machine the client then caps the rate and inflates the latency it attributes to the
router. These clients send pre-encoded requests and read Content-Length bodies only (the
router answers non-streamed requests that way), ~20-50 us per request.
"""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlsplit


class HTTPStatusError(RuntimeError):
    pass


def encode_post(url: str, path: str, body: bytes) -> tuple[str, int, bytes]:
    """(host, port, request bytes) of a JSON POST to ``url`` + ``path``."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
    return host, port, head.encode() + body


def _parse_head(head: bytes) -> tuple[int, int]:
    """(status, content length) of a response head (without the blank line)."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return status, int(value)
    raise HTTPStatusError(f"response without Content-Length (status {status}): streamed answers are not supported")


class BlockingClient:
    """One keep-alive connection; ``post`` returns the body, raises on a non-2xx status."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def post(self, request: bytes) -> bytes:
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buf:
            self._read()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status, length = _parse_head(head)
        while len(self.buf) < length:
            self._read()
        body, self.buf = self.buf[:length], self.buf[length:]
        if not 200 <= status < 300:
            raise HTTPStatusError(f"HTTP {status}: {body[:200]!r}")
        return body

    def _read(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buf += data

    def close(self) -> None:
        self.sock.close()


class AsyncClient:
    """The asyncio twin of BlockingClient (one connection, one request at a time)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, host: str, port: int) -> AsyncClient:
        reader, writer = await asyncio.open_connection(host, port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def post(self, request: bytes) -> bytes:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status, length = _parse_head(head[:-4])
        body = await self.reader.readexactly(length)
        if not 200 <= status < 300:
            raise HTTPStatusError(f"HTTP {status}: {body[:200]!r}")
        return body

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()
