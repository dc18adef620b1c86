"""'Done with transfer X': the decode engine tells the prefill engine it may free the blocks.

The prefill core binds a ZMQ PULL socket (ipc://, since the direct transport is same-host)
and names it in each direct offer; the decode core keeps one PUSH socket per peer. A lost
message costs only time: the prefill side frees the blocks anyway when the lease ends.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections import OrderedDict

import msgspec
import zmq

from contracts.kv_handle import Release

MAX_PEERS = 64  # PUSH sockets kept open; the least recently used goes first


_decoder = msgspec.msgpack.Decoder(Release)


class ReleaseInbox:
    """Prefill side: receives (transfer_id, epoch) pairs."""

    def __init__(self, ctx: zmq.Context) -> None:
        path = os.path.join(tempfile.gettempdir(), f"splitserve-release-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.endpoint = f"ipc://{path}"
        self.socket = ctx.socket(zmq.PULL)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(self.endpoint)

    def take(self) -> list[tuple[str, str]]:
        got: list[tuple[str, str]] = []
        while True:
            try:
                frame = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return got
            try:
                release = _decoder.decode(frame)
            except msgspec.DecodeError:
                continue  # not ours: a stray or garbled frame must not stop the core
            got.append((release.transfer_id, release.epoch))

    def close(self) -> None:
        self.socket.close(linger=0)
        try:
            os.unlink(self.endpoint.removeprefix("ipc://"))
        except FileNotFoundError:
            pass


class ReleaseSender:
    """Decode side: one PUSH socket per prefill peer, sent without blocking."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.ctx = ctx
        self._sockets: OrderedDict[str, zmq.Socket] = OrderedDict()

    def send(self, endpoint: str, transfer_id: str, epoch: str) -> bool:
        if not endpoint.startswith("ipc://"):
            return False  # the direct transport's release channel is always same-host ipc://
        sock = self._sockets.get(endpoint)
        if sock is None:
            sock = self.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 1000)
            sock.connect(endpoint)
            self._sockets[endpoint] = sock
            if len(self._sockets) > MAX_PEERS:
                self._sockets.popitem(last=False)[1].close(linger=0)
        self._sockets.move_to_end(endpoint)
        try:
            sock.send(msgspec.msgpack.encode(Release(transfer_id, epoch)), zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False  # the peer is gone or flooded: its lease frees the blocks

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._sockets.clear()
