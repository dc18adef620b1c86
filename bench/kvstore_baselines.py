"""Baselines beside the KV store in bench/kvstore_bench.py: what memcpy and a raw socket reach.

- numpy copies (memcpy bandwidth), one object at a time and a batch of distinct buffers;
- a loopback TCP socket copy, the receiver a thread of the same process or another process;
- the "data-plane hashing" table: a batch over a bare socket to another process, not hashed,
  hashed inline in the socket threads or on a hash lane (kvstore/hashed_io.py), with each
  socket thread's CPU time per call.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import numpy as np

from kvstore.hashed_io import HashLane, recv_exactly, recv_hashed, send_hashed


def pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples), q)) * 1e3  # ms


def bench_memcpy(size: int, total: int, latency_ops: int) -> dict:
    src, dst = np.random.randint(0, 255, size, dtype=np.uint8), np.empty(size, dtype=np.uint8)
    n = max(1, total // size)
    t0 = time.perf_counter()
    for _ in range(n):
        np.copyto(dst, src)
    gbps = n * size / (time.perf_counter() - t0) / 1e9
    lat = []
    for _ in range(latency_ops):
        t = time.perf_counter()
        np.copyto(dst, src)
        lat.append(time.perf_counter() - t)
    return {
        "put_GBps": gbps,
        "get_GBps": gbps,
        "put_p50_ms": pct(lat, 50),
        "put_p99_ms": pct(lat, 99),
        "get_p50_ms": pct(lat, 50),
        "get_p99_ms": pct(lat, 99),
    }


def bench_tcp(size: int, total: int, latency_ops: int) -> dict:
    """One-way copies of ``size`` bytes over a loopback TCP connection, acknowledged per message."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    n = max(1, total // size)

    def serve() -> None:
        conn, _ = server.accept()
        buf = bytearray(size)
        view = memoryview(buf)
        for _ in range(n + latency_ops):
            got = 0
            while got < size:
                got += conn.recv_into(view[got:], size - got)
            conn.sendall(b"k")
        conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = os.urandom(size)
    t0 = time.perf_counter()
    for _ in range(n):
        sock.sendall(data)
        sock.recv(1)
    gbps = n * size / (time.perf_counter() - t0) / 1e9
    lat = []
    for _ in range(latency_ops):
        t = time.perf_counter()
        sock.sendall(data)
        sock.recv(1)
        lat.append(time.perf_counter() - t)
    sock.close()
    thread.join()
    server.close()
    return {
        "put_GBps": gbps,
        "get_GBps": gbps,
        "put_p50_ms": pct(lat, 50),
        "put_p99_ms": pct(lat, 99),
        "get_p50_ms": pct(lat, 50),
        "get_p99_ms": pct(lat, 99),
    }


def bench_memcpy_batch(n: int, size: int, repeats: int) -> float:
    """GB/s of copying a batch of n distinct objects into n distinct buffers.

    Best call of 3 x ``repeats``: the ceiling the store is compared with, so that
    other jobs on a shared machine do not lower it.
    """
    src = [np.random.randint(0, 255, size, dtype=np.uint8) for _ in range(n)]
    dst = [np.empty(size, dtype=np.uint8) for _ in range(n)]
    times = []
    for _ in range(3 * repeats + 1):
        t = time.perf_counter()
        for d, s in zip(dst, src):
            np.copyto(d, s)
        times.append(time.perf_counter() - t)
    return n * size / min(times[1:]) / 1e9


def bench_tcp_batch(n: int, size: int, repeats: int) -> float:
    """GB/s of sending n objects of ``size`` bytes over one loopback TCP connection, one ack per batch (best call)."""
    server = socket.create_server(("127.0.0.1", 0))
    calls = 3 * repeats + 1

    def serve() -> None:
        conn, _ = server.accept()
        view = memoryview(bytearray(size))
        for _ in range(calls):
            for _ in range(n):
                got = 0
                while got < size:
                    got += conn.recv_into(view[got:], size - got)
            conn.sendall(b"k")
        conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    sock = socket.create_connection(server.getsockname())
    best = _send_batches(sock, n, size, calls)
    thread.join()
    server.close()
    return n * size / best / 1e9


def _send_batches(sock: socket.socket, n: int, size: int, calls: int) -> float:
    """Send ``calls`` batches of n objects, each answered by a one-byte ack; the best call's seconds
    (the first call is a warm-up). Closes ``sock``."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    objects = [np.random.randint(0, 255, size, dtype=np.uint8) for _ in range(n)]
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        for obj in objects:
            sock.sendall(obj.data)
        sock.recv(1)
        times.append(time.perf_counter() - t)
    sock.close()
    return min(times[1:])


def _receive_batches(conn_fd: int, n: int, size: int, calls: int) -> None:
    conn = socket.socket(fileno=conn_fd)
    view = memoryview(bytearray(n * size))  # one landing place per object, as a node's segment is
    for _ in range(calls):
        for i in range(n):
            got, target = 0, view[i * size : (i + 1) * size]
            while got < size:
                got += conn.recv_into(target[got:], size - got, socket.MSG_WAITALL)
        conn.sendall(b"k")
    conn.close()


def bench_tcp_batch_processes(n: int, size: int, repeats: int) -> float:
    """As bench_tcp_batch, but the receiver is another process, as a storage node is (best call)."""
    import multiprocessing

    calls = 3 * repeats + 1
    server = socket.create_server(("127.0.0.1", 0))
    sock = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    receiver = multiprocessing.get_context("fork").Process(target=_receive_batches, args=(conn.fileno(), n, size, calls))
    receiver.start()
    conn.close()
    server.close()
    best = _send_batches(sock, n, size, calls)
    receiver.join()
    return n * size / best / 1e9


HASHINGS = ("none", "inline", "lane")  # a raw socket; the data plane hashing in its socket threads; beside them


def _receive_hashed(conn_fd: int, n: int, size: int, calls: int, results: Any) -> None:
    conn = socket.socket(fileno=conn_fd)
    view = memoryview(bytearray(n * size))  # one landing place per object, as a node's segment is
    targets = [view[i * size : (i + 1) * size] for i in range(n)]
    lane = HashLane("bench-receive")
    cpu: dict[str, list[float]] = {h: [] for h in HASHINGS}
    for _ in range(calls):
        for hashing in HASHINGS:
            t = time.thread_time()
            if hashing == "none":
                for target in targets:
                    recv_exactly(conn, target)
            elif hashing == "inline":
                for target in targets:
                    recv_hashed(conn, target)
            else:
                lane.recv_all(conn, targets)
            cpu[hashing].append(time.thread_time() - t)
            conn.sendall(b"k")
    lane.close()
    conn.close()
    results.put(cpu)


def bench_hashing(n: int, size: int, repeats: int) -> list[dict]:
    """One batch over a loopback socket to another process, hashed as the data plane hashes it: not at all
    (a raw socket), inline in the socket threads, or on a hash lane beside them (kvstore/hashed_io.py), the
    three alternating call by call. Per arrangement: GB/s (median call) and the CPU time of the sending and
    the receiving socket thread per call (median): a transfer's critical path when every thread has a core."""
    import multiprocessing

    fork = multiprocessing.get_context("fork")
    calls = 3 * repeats + 1
    server = socket.create_server(("127.0.0.1", 0))
    sock = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    results = fork.SimpleQueue()
    receiver = fork.Process(target=_receive_hashed, args=(conn.fileno(), n, size, calls, results))
    receiver.start()
    conn.close()
    server.close()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rows = np.random.randint(0, 255, (n, size), dtype=np.uint8)
    objects = [rows[i].data for i in range(n)]
    lane = HashLane("bench-send")
    wall: dict[str, list[float]] = {h: [] for h in HASHINGS}
    cpu: dict[str, list[float]] = {h: [] for h in HASHINGS}
    for _ in range(calls):
        for hashing in HASHINGS:
            t, c = time.perf_counter(), time.thread_time()
            if hashing == "none":
                for obj in objects:
                    sock.sendall(obj)
            elif hashing == "inline":
                for obj in objects:
                    send_hashed(sock, obj)
            else:
                lane.send_all(sock, objects)
            cpu[hashing].append(time.thread_time() - c)
            sock.recv(1)
            wall[hashing].append(time.perf_counter() - t)
    received = results.get()
    receiver.join()
    lane.close()
    sock.close()
    return [
        {
            "hashing": h,
            "n": n,
            "size": size,
            "GBps": n * size / float(np.median(wall[h][1:])) / 1e9,
            "sender_cpu_ms": float(np.median(cpu[h][1:])) * 1e3,
            "receiver_cpu_ms": float(np.median(received[h][1:])) * 1e3,
        }
        for h in HASHINGS
    ]
