"""Moving objects through a blocking socket while hashing them (xxh3_64), for the data plane.

Two arrangements, same checksums:
- inline: the socket's thread hashes each 1 MiB piece just before sending it / just after
  receiving it, so hashing time adds to the transfer time;
- on a hash lane: a helper thread hashes while the socket's thread only moves bytes, as a
  plain socket does. A sender hands over its whole batch at once (its source does not change
  while it is sent); a receiver hands over every 1 MiB that has arrived, still in cache. Both
  sides' hash calls and socket calls run without the GIL (python-xxhash releases it above
  64 KiB), so the two threads overlap when a core is free for the helper.

The lane pays only where a core is free for it: on the 2-core dev VM, with client and node
both moving bytes, a helper on each side only competed with the transfer (32 x 2 MiB over
loopback: 1.5-1.7 vs 1.8-2.1 GB/s inline, median of 15 calls). So a process uses it only with
at least ``LANE_MIN_CPUS`` usable cores (``lane_by_default``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import xxhash

HASH_PIECE = 1 << 20  # received and hashed in pieces of this size (64-256 KiB pieces ran slower: more wake-ups)
LANE_MIN_CPUS = 4  # client and node each keep a socket thread and a hash thread busy during a transfer


def lane_by_default() -> bool:
    """Whether this process has cores enough for a hash lane beside its socket threads."""
    return len(os.sched_getaffinity(0)) >= LANE_MIN_CPUS


def recv_exactly(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:], len(view) - got, socket.MSG_WAITALL)
        if n == 0:
            raise ConnectionError("peer closed the connection mid-message")
        got += n


def recv_hashed(sock: socket.socket, view: memoryview) -> int:
    """Receive exactly ``len(view)`` bytes and return their xxh3_64, each piece hashed as it arrives."""
    digest = xxhash.xxh3_64()
    for start in range(0, len(view), HASH_PIECE):
        piece = view[start : start + HASH_PIECE]
        recv_exactly(sock, piece)
        digest.update(piece)
    return digest.intdigest()


def send_hashed(sock: socket.socket, view: memoryview) -> int:
    """Send ``view`` and return its xxh3_64, each piece hashed just before it is sent."""
    digest = xxhash.xxh3_64()
    for start in range(0, len(view), HASH_PIECE):
        piece = view[start : start + HASH_PIECE]
        digest.update(piece)
        sock.sendall(piece)
    return digest.intdigest()


def _checksums(views: Sequence[memoryview]) -> list[int]:
    return [xxhash.xxh3_64_intdigest(view) for view in views]


def _update(pieces: list[tuple[xxhash.xxh3_64, memoryview]]) -> None:
    for digest, piece in pieces:
        digest.update(piece)


class HashLane:
    """One helper thread that hashes what a socket thread sends or receives.

    A single worker runs hand-overs in the order given, so the pieces of one object reach its
    digest in order even when several connections share the lane.
    """

    def __init__(self, name: str) -> None:
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=name)

    def send_all(self, sock: socket.socket, views: Sequence[memoryview]) -> list[int]:
        """Send every view whole while the lane hashes them; their xxh3_64 checksums."""
        checksums = self._worker.submit(_checksums, views)
        try:
            for view in views:
                sock.sendall(view)
        finally:
            sums = checksums.result()  # the lane still reads the views: wait for it even when the send failed
        return sums

    def recv_all(self, sock: socket.socket, views: Sequence[memoryview]) -> list[int]:
        """Receive every view in full while the lane hashes what has arrived; their xxh3_64 checksums."""
        digests = [xxhash.xxh3_64() for _ in views]
        handed: list[Future[None]] = []
        arrived: list[tuple[xxhash.xxh3_64, memoryview]] = []
        arrived_bytes = 0
        try:
            for digest, view in zip(digests, views):
                for start in range(0, len(view), HASH_PIECE):
                    piece = view[start : start + HASH_PIECE]
                    recv_exactly(sock, piece)
                    arrived.append((digest, piece))
                    arrived_bytes += len(piece)
                    if arrived_bytes >= HASH_PIECE:  # small objects go over together: one hand-over per MiB
                        handed.append(self._worker.submit(_update, arrived))
                        arrived, arrived_bytes = [], 0
            if arrived:
                handed.append(self._worker.submit(_update, arrived))
        finally:
            for future in handed:
                future.result()  # in order; after a failed receive too, so no hash outlives the call
        return [digest.intdigest() for digest in digests]

    def close(self) -> None:
        self._worker.shutdown(wait=True)
