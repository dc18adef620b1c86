"""KV store throughput and latency beside raw memcpy and a plain TCP copy.

Starts a master and one storage node as processes (python -m kvstore) on
127.0.0.1, then for each object size measures, side by side in one run:
- put / get as a client on another host would (use_shm=False: object bytes over the
  node's raw-TCP data plane, metadata over gRPC),
- put / get over the same-host shared-memory path (use_shm=True),
- numpy copy (memcpy bandwidth) and a TCP socket copy over loopback.
Two tables:
- single object per call (``--sizes-kib``): throughput from ``--batch``-object
  calls, latency p50/p99 from one-object calls through the synchronous client;
- batched (``--batches``, N x KiB, e.g. 32 x 2048 = one request's KV blocks): one
  put / get / get_into call carries the whole batch, as kv_transfer/store.py
  does; median of ``--repeats`` calls after a warm-up call, and each figure as a
  fraction of memcpy moving the same batch (N distinct buffers, best call) in the
  same run.
A third table puts the two store backends side by side through the calls the
workers make (kvstore.backend: put_blocks / get_blocks_into of a request's blocks):
ours with bytes in gRPC messages, over the raw-TCP data plane and over shared memory,
and Mooncake Store over TCP (mooncake_master
plus one memory node from the mooncake wheel, kvstore/mooncake_processes.py), each as
a fraction of memcpy and of a raw TCP socket moving the same batch in the same run, the
socket measured between two threads and between two processes (the store's client and
node are two processes) (``--skip-mooncake`` leaves Mooncake out; ``--tables`` picks tables).
A fourth table, only with ``--tables hashing``, moves the same batches over a bare socket to
another process hashed as the data plane does it (not at all / inline / on a hash lane,
kvstore/hashed_io.py) and gives each socket thread's CPU time per call.
Prints the tables and writes JSON (--out).

    python bench/kvstore_bench.py --total-mib 64 --out kvstore_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.kvstore_baselines import (  # noqa: E402
    bench_hashing,
    bench_memcpy,
    bench_memcpy_batch,
    bench_tcp,
    bench_tcp_batch,
    bench_tcp_batch_processes,
    pct,
)
from contracts.sizes import parse_size  # noqa: E402
from kvstore import mooncake_processes  # noqa: E402
from kvstore.backend import StoreBackend, open_store  # noqa: E402
from kvstore.block_key import KVLayout, block_keys  # noqa: E402
from kvstore.cli import HASH_LANE  # noqa: E402
from kvstore.hashed_io import lane_by_default  # noqa: E402
from kvstore.sync_client import KVStoreClient  # noqa: E402


def start(args: list[str]) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "kvstore", *args, "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None  # stdout=PIPE
    return proc, proc.stdout.readline().rsplit(" ", 1)[-1].strip()


def bench_store(client: KVStoreClient, size: int, total: int, batch: int, latency_ops: int) -> dict:
    run = uuid.uuid4().hex[:8]
    payloads = [np.random.randint(0, 255, size, dtype=np.uint8) for _ in range(batch)]
    n_batches = max(1, total // (size * batch))
    keys_all: list[list[str]] = []
    t0 = time.perf_counter()
    for b in range(n_batches):
        keys = [f"{run}/t{b}/{i}" for i in range(batch)]
        client.put(dict(zip(keys, payloads)))
        keys_all.append(keys)
    put_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for keys in keys_all:
        got = client.get(keys)
    get_s = time.perf_counter() - t0
    assert all(v is not None for v in got.values())
    for keys in keys_all:
        client.remove(keys)
    put_lat, get_lat = [], []
    for i in range(latency_ops):
        key = f"{run}/l{i}"
        t = time.perf_counter()
        client.put({key: payloads[i % batch]})
        put_lat.append(time.perf_counter() - t)
        t = time.perf_counter()
        client.get([key])
        get_lat.append(time.perf_counter() - t)
        client.remove([key])
    moved = n_batches * batch * size
    return {
        "put_GBps": moved / put_s / 1e9,
        "get_GBps": moved / get_s / 1e9,
        "put_p50_ms": pct(put_lat, 50),
        "put_p99_ms": pct(put_lat, 99),
        "get_p50_ms": pct(get_lat, 50),
        "get_p99_ms": pct(get_lat, 99),
    }


def parse_batches(spec: str) -> list[tuple[int, int]]:
    """ "64x64,32x2048" -> [(64, 65536), (32, 2097152)]: (objects per call, bytes per object)."""
    out = []
    for item in spec.split(","):
        n, kib = item.lower().split("x")
        out.append((int(n), int(kib) * 1024))
    return out


def bench_store_batch(client: KVStoreClient, n: int, size: int, repeats: int) -> dict:
    """GB/s of one put / get / get_into call carrying n objects of ``size`` bytes (median call)."""
    run = uuid.uuid4().hex[:8]
    payloads = [np.random.randint(0, 255, size, dtype=np.uint8) for _ in range(n)]
    buffers = [np.empty(size, dtype=np.uint8) for _ in range(n)]
    times: dict[str, list[float]] = {"put": [], "get": [], "get_into": []}
    for r in range(repeats + 1):  # call 0 warms up (connections, segment mapping)
        keys = [f"{run}/b{r}/{i}" for i in range(n)]
        t = time.perf_counter()
        results = client.put(dict(zip(keys, payloads)))
        put_s = time.perf_counter() - t
        t = time.perf_counter()
        got = client.get(keys)
        get_s = time.perf_counter() - t
        t = time.perf_counter()
        found = client.get_into(keys, buffers)
        into_s = time.perf_counter() - t
        assert all(res.ok for res in results.values()) and all(found) and all(v is not None for v in got.values())
        assert np.array_equal(buffers[-1], payloads[-1])
        client.remove(keys)
        if r:
            times["put"].append(put_s)
            times["get"].append(get_s)
            times["get_into"].append(into_s)
    return {f"{op}_GBps": n * size / float(np.median(ts)) / 1e9 for op, ts in times.items()}


def bench_backend_batch(store: StoreBackend, n: int, size: int, repeats: int) -> dict:
    """GB/s of one put_blocks / get_blocks_into call carrying n blocks of ``size`` bytes (median call)."""
    layout = KVLayout(f"bench-{uuid.uuid4().hex[:8]}", "uint8", 16)
    rows = np.random.randint(0, 255, (n, size), dtype=np.uint8)  # a request's rows, one array as in kv_transfer
    out = np.empty_like(rows)
    times: dict[str, list[float]] = {"put": [], "get_into": []}
    for r in range(repeats + 1):  # call 0 warms up
        keys = block_keys(list(range(r * n * 16, (r + 1) * n * 16)), layout.model_fingerprint)
        t = time.perf_counter()
        results = store.put_blocks(layout, {k: rows[i] for i, k in enumerate(keys)})
        put_s = time.perf_counter() - t
        t = time.perf_counter()
        found = store.get_blocks_into(layout, keys, [out[i] for i in range(n)])
        into_s = time.perf_counter() - t
        failed = [res.error for res in results.values() if not res.ok]
        assert not failed, f"{type(store).__name__}: {len(failed)} of {n} puts failed: {failed[0]}"
        assert all(found), f"{type(store).__name__}: {found.count(False)} of {n} blocks not found right after their put"
        assert np.array_equal(out, rows), f"{type(store).__name__}: get_into returned other bytes"
        store.remove_blocks(layout, keys)
        if r:
            times["put"].append(put_s)
            times["get_into"].append(into_s)
    return {f"{op}_GBps": n * size / float(np.median(ts)) / 1e9 for op, ts in times.items()}


def bench_backends(
    master_addr: str, mooncake_url: str | None, batches: list[tuple[int, int]], repeats: int, hash_lane: bool | None
) -> list[dict]:
    """Both store backends through the worker calls, beside memcpy and raw TCP of the same batch."""
    stores: dict[str, StoreBackend] = {
        "ours grpc": open_store(master_addr, use_shm=False, use_data_plane=False),
        "ours tcp": open_store(master_addr, use_shm=False, hash_lane=hash_lane),
        "ours shm": open_store(master_addr, use_shm=True),
    }
    if mooncake_url:
        stores["mooncake tcp"] = open_store(mooncake_url)
    rows = []
    try:
        for n, size in batches:
            # references before and after the stores, best kept: on a shared machine a dip in
            # one measurement would otherwise flatter the stores
            memcpy, tcp = bench_memcpy_batch(n, size, repeats), bench_tcp_batch(n, size, repeats)
            tcp_procs = bench_tcp_batch_processes(n, size, repeats)
            results = {name: bench_backend_batch(store, n, size, repeats) for name, store in stores.items()}
            memcpy, tcp = max(memcpy, bench_memcpy_batch(n, size, repeats)), max(tcp, bench_tcp_batch(n, size, repeats))
            tcp_procs = max(tcp_procs, bench_tcp_batch_processes(n, size, repeats))
            for name, result in results.items():
                rows.append(
                    {
                        "path": name,
                        "n": n,
                        "size": size,
                        **result,
                        "memcpy_GBps": memcpy,
                        "tcp_GBps": tcp,
                        "tcp_procs_GBps": tcp_procs,
                    }
                )
    finally:
        for store in stores.values():
            store.close()
    return rows


def size_name(size: int) -> str:
    return f"{size // 1024} KiB" if size < 1 << 20 else f"{size >> 20} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-kib", default="64,2048")
    parser.add_argument("--total-mib", type=int, default=64, help="bytes moved per throughput measurement")
    parser.add_argument("--batch", type=int, default=16, help="objects per put/get call for throughput")
    parser.add_argument("--latency-ops", type=int, default=100)
    parser.add_argument("--batches", default="64x64,32x2048", help="batched case: objects x KiB per call, comma-separated")
    parser.add_argument("--repeats", type=int, default=9, help="timed calls per batched measurement (median reported)")
    parser.add_argument("--capacity", default="1GiB")
    parser.add_argument("--skip-mooncake", action="store_true", help="leave the Mooncake Store backend out")
    parser.add_argument(
        "--tables",
        default="single,batched,backends",
        help="which tables to measure, comma-separated (single, batched, backends; hashing: asked for only)",
    )
    parser.add_argument(
        "--hash-lane",
        choices=sorted(HASH_LANE),
        default="auto",
        help="ours tcp: node and client hash beside their socket threads",
    )
    parser.add_argument("--out", default="kvstore_bench.json")
    args = parser.parse_args()

    # a removed object's space returns when its read lease ends: a short lease keeps back-to-back
    # 64 MiB calls from filling the node with removed-but-leased objects
    master, master_addr = start(["kvstore-master", "--events-port", "0", "--lease-ttl", "0.5"])
    node, _ = start(["kvstore-node", "--master", master_addr, "--capacity", args.capacity, "--hash-lane", args.hash_lane])
    hash_lane = HASH_LANE[args.hash_lane]
    lane = lane_by_default() if hash_lane is None else hash_lane
    mooncake = None if args.skip_mooncake else mooncake_processes.start_cluster(1, parse_size(args.capacity))
    rows: list[dict[str, Any]] = []
    batch_rows: list[dict[str, Any]] = []
    backend_rows: list[dict[str, Any]] = []
    hashing_rows: list[dict[str, Any]] = []
    try:
        time.sleep(0.5)
        remote = KVStoreClient(master_addr, use_shm=False, hash_lane=hash_lane)
        clients = {"remote": remote, "shm": KVStoreClient(master_addr, use_shm=True)}
        tables = set(args.tables.split(","))
        for size in [int(s) * 1024 for s in args.sizes_kib.split(",")] if "single" in tables else []:
            total = args.total_mib << 20
            rows.append({"path": "memcpy (numpy)", "size": size, **bench_memcpy(size, total, args.latency_ops)})
            rows.append({"path": "tcp socket", "size": size, **bench_tcp(size, total, args.latency_ops)})
            for name, client in clients.items():
                result = bench_store(client, size, total, args.batch, args.latency_ops)
                rows.append({"path": f"kvstore {name}", "size": size, **result})
        for n, size in parse_batches(args.batches) if "batched" in tables else []:
            memcpy = bench_memcpy_batch(n, size, args.repeats)
            batch_rows.append(
                {
                    "path": "memcpy (numpy)",
                    "n": n,
                    "size": size,
                    "put_GBps": memcpy,
                    "get_GBps": memcpy,
                    "get_into_GBps": memcpy,
                    "memcpy_GBps": memcpy,
                }
            )
            for name, client in clients.items():
                result = bench_store_batch(client, n, size, args.repeats)
                batch_rows.append({"path": f"kvstore {name}", "n": n, "size": size, **result, "memcpy_GBps": memcpy})
        for client in clients.values():
            client.close()
        for n, size in parse_batches(args.batches) if "hashing" in tables else []:
            hashing_rows += bench_hashing(n, size, args.repeats)
        if "backends" in tables:
            backend_rows = bench_backends(
                master_addr, mooncake.url if mooncake else None, parse_batches(args.batches), args.repeats, hash_lane
            )
    finally:
        if mooncake is not None:
            mooncake.stop()
        for proc in (node, master):
            proc.terminate()
            proc.wait(timeout=10)

    print(f"single object per call (throughput from {args.batch}-object calls)")
    print("| path | object | put GB/s | get GB/s | put p50 ms | put p99 ms | get p50 ms | get p99 ms |")
    print("|" + " --- |" * 8)
    for r in rows:
        size_label = size_name(r["size"])
        print(
            f"| {r['path']} | {size_label} | {r['put_GBps']:.2f} | {r['get_GBps']:.2f} | {r['put_p50_ms']:.3f} | "
            f"{r['put_p99_ms']:.3f} | {r['get_p50_ms']:.3f} | {r['get_p99_ms']:.3f} |"
        )
    print("\nbatched: one call per batch (median GB/s; % of the best memcpy of the same batch)")
    print("| path | batch | put GB/s | get GB/s | get_into GB/s | put % | get % | get_into % |")
    print("|" + " --- |" * 8)
    for r in batch_rows:
        frac = [100 * r[f"{op}_GBps"] / r["memcpy_GBps"] for op in ("put", "get", "get_into")]
        print(
            f"| {r['path']} | {r['n']} x {size_name(r['size'])} | {r['put_GBps']:.2f} | {r['get_GBps']:.2f} | "
            f"{r['get_into_GBps']:.2f} | "
            f"{frac[0]:.0f}% | {frac[1]:.0f}% | {frac[2]:.0f}% |"
        )
    print(
        "\nbackends side by side: put_blocks / get_blocks_into of one batch (median GB/s; % of memcpy and of raw TCP, same batch;"
    )
    print("tcp: sender and receiver threads of one process; tcp 2p: the receiver in another process, as a storage node is)")
    hashing = "on a hash lane beside each socket thread" if lane else "inline, by the socket threads"
    print(f"ours tcp hashes {hashing} (--hash-lane {args.hash_lane}, {len(os.sched_getaffinity(0))} usable cores)")
    print(
        "| path | batch | put GB/s | get_into GB/s | memcpy GB/s | tcp GB/s | tcp 2p GB/s | put % memcpy | get_into % memcpy "
        "| put % tcp | get_into % tcp | put % tcp 2p | get_into % tcp 2p |"
    )
    print("|" + " --- |" * 13)
    for r in backend_rows:
        m, t, t2 = r["memcpy_GBps"], r["tcp_GBps"], r["tcp_procs_GBps"]
        put, into = r["put_GBps"], r["get_into_GBps"]
        print(
            f"| {r['path']} | {r['n']} x {size_name(r['size'])} | {put:.2f} | {into:.2f} | {m:.2f} | {t:.2f} | {t2:.2f} | "
            f"{100 * put / m:.0f}% | {100 * into / m:.0f}% | {100 * put / t:.0f}% | {100 * into / t:.0f}% | "
            f"{100 * put / t2:.0f}% | {100 * into / t2:.0f}% |"
        )
    if hashing_rows:
        print("\ndata-plane hashing: a batch to another process (median call; CPU ms per call of each socket thread)")
        print("| hashing | batch | GB/s | sender thread CPU ms | receiver thread CPU ms |")
        print("|" + " --- |" * 5)
        for r in hashing_rows:
            print(
                f"| {r['hashing']} | {r['n']} x {size_name(r['size'])} | {r['GBps']:.2f} | {r['sender_cpu_ms']:.1f} | "
                f"{r['receiver_cpu_ms']:.1f} |"
            )
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "hash_lane": lane, "args": vars(args)}
    with open(args.out, "w") as f:
        out = {"meta": meta, "rows": rows, "batched": batch_rows, "backends": backend_rows, "hashing": hashing_rows}
        json.dump(out, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
