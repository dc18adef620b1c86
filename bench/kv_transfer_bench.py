"""Device-direct KV transfer bandwidth: a decode-side process pulls blocks out of a prefill-side
process's KV pool (CUDA IPC on GPU, a shared-memory pool on CPU), against a plain device copy of
the same bytes in the same process and run.

Llama-3.1-8B KV shapes by default (32 layers, 8 KV heads, head_dim 128, bf16 on GPU; 16-token
blocks = 2 MiB per block). Block ids are shuffled on both sides, as in a long-running pool.
Prints a table and writes JSON.

    python -m bench.kv_transfer_bench --tokens 1024,4096,32768
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from contracts.kv_handle import PoolDescriptor
from engine.block_copy import COPY_CHUNK, COPY_ORDER, COPY_WARPS, _copy_triton, _launch, _staged_ids, copy_blocks
from engine.kv_cache import KVCache, KVCacheSpec
from kv_transfer.peer_pool import describe_pool, open_pool


def owner(spec_args: tuple, num_blocks: int, pool_file: str, conn) -> None:
    """The 'prefill' process: a pool with random KV, shared; waits until told to stop."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = KVCacheSpec(*spec_args)
    kv = KVCache(spec, num_blocks, device, shared_file=None if device.type == "cuda" else pool_file)
    kv.pool.normal_()
    if device.type == "cuda":
        torch.cuda.synchronize()
    conn.send(describe_pool(kv.pool, None if device.type == "cuda" else pool_file).encode())
    conn.recv()  # keep the pool alive until the reader is done


def timed(fn, device: torch.device, reps: int) -> float:
    """Median seconds of ``fn`` (device events on GPU)."""
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def pipelined(fn, reps: int) -> float:
    """Seconds per call of ``fn`` called ``reps`` times back to back on the GPU (host launch cost
    hidden behind the device work, as when a copy is launched while a step runs)."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def device_timed(fn, reps: int) -> float:
    """Median device seconds of ``fn``: the GPU is kept busy (a sleep kernel) while the host
    launches it, so host launch cost is not in the interval, only the work on the device."""
    fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(2_000_000)  # ~1 ms of spinning, longer than any launch below
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", default="1024,2048,4096,8192,16384,32768", help="prompt lengths (tokens)")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument(
        "--variants",
        default="",
        help="GPU: extra kernel configs CHUNKxWARPS[xORDER[xs]] to time (s: pairs sorted by source id), e.g. 16384x8,4096x4x0xs",
    )
    p.add_argument(
        "--breakdown", action="store_true", help="GPU: also time the kernel alone (ids already on the device) per size"
    )
    p.add_argument(
        "--device-time",
        action="store_true",
        help="GPU: also time each path on the device alone (launched while the GPU is busy, so host cost is hidden)",
    )
    p.add_argument("--out", default="kv_transfer_bench.json")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    spec = KVCacheSpec(args.layers, args.block_size, args.kv_heads, args.head_dim, dtype)
    tokens = [int(t) for t in args.tokens.split(",")]
    most = -(-max(tokens) // args.block_size)
    num_blocks = most + 64
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    pool_file = str(Path(tempfile.gettempdir() if device.type == "cuda" else "/dev/shm") / f"kvbench-{time.time_ns()}")
    proc = ctx.Process(
        target=owner,
        args=((spec.num_layers, spec.block_size, spec.num_kv_heads, spec.head_dim, dtype), num_blocks, pool_file, there),
    )
    proc.start()
    rows = []
    try:
        peer = open_pool(PoolDescriptor.decode(here.recv()), device)
        mine = KVCache(spec, num_blocks, device)
        rng = random.Random(0)
        for n_tok in tokens:
            n = -(-n_tok // args.block_size)
            src, dst = rng.sample(range(num_blocks), n), rng.sample(range(num_blocks), n)
            nbytes = n * spec.bytes_per_block
            direct = timed(functools.partial(copy_blocks, peer, src, mine.pool, dst), device, args.reps)
            for v in filter(None, args.variants.split(",")):
                chunk, warps, *rest = v.split("x")
                order, sort = int(rest[0]) if rest else COPY_ORDER, rest[1:] == ["s"]
                call = functools.partial(_copy_triton, peer, src, mine.pool, dst, int(chunk), int(warps), order, sort)
                t = timed(call, device, args.reps)
                print(f"variant {v}: {n_tok} tokens {nbytes / t / 1e9:.1f} GB/s")
            launched = None
            if device.type == "cuda":  # the path before captured copies: stage the ids, launch from Python

                def launch(src=src, dst=dst, n=n):
                    _launch(peer, mine.pool, _staged_ids(src, dst, device), n, COPY_CHUNK, COPY_WARPS, COPY_ORDER)

                launched = timed(launch, device, args.reps)
            kernel_only = None
            if args.breakdown and device.type == "cuda":
                ids = _staged_ids(src, dst, device)
                kernel_only = timed(
                    functools.partial(_launch, peer, mine.pool, ids, n, COPY_CHUNK, COPY_WARPS, COPY_ORDER), device, args.reps
                )
                print(
                    f"breakdown: {n_tok} tokens: whole copy {direct * 1e6:.1f} us (uncaptured {1e6 * (launched or 0):.1f} us), "
                    f"kernel alone {kernel_only * 1e6:.1f} us"
                )
            a = torch.empty(nbytes // dtype.itemsize, dtype=dtype, device=device)
            b = torch.empty_like(a)
            plain = timed(functools.partial(b.copy_, a), device, args.reps)
            streamed = plain_streamed = None
            if device.type == "cuda":
                streamed = pipelined(functools.partial(copy_blocks, peer, src, mine.pool, dst), args.reps)
                plain_streamed = pipelined(functools.partial(b.copy_, a), args.reps)
                print(
                    f"back to back: {n_tok} tokens: direct {nbytes / streamed / 1e9:.1f} GB/s, "
                    f"device copy {nbytes / plain_streamed / 1e9:.1f} GB/s, ratio {plain_streamed / streamed:.2f}"
                )
            dev_times = None
            if args.device_time and device.type == "cuda":
                ids = _staged_ids(src, dst, device)
                dev_times = {
                    "captured_copy_us": 1e6 * device_timed(functools.partial(copy_blocks, peer, src, mine.pool, dst), args.reps),
                    "kernel_us": 1e6
                    * device_timed(
                        functools.partial(_launch, peer, mine.pool, ids, n, COPY_CHUNK, COPY_WARPS, COPY_ORDER), args.reps
                    ),
                    "device_copy_us": 1e6 * device_timed(functools.partial(b.copy_, a), args.reps),
                }
                for v in filter(None, args.variants.split(",")):
                    chunk, warps, *rest = v.split("x")
                    order = int(rest[0]) if rest else COPY_ORDER
                    call = functools.partial(_launch, peer, mine.pool, ids, n, int(chunk), int(warps), order)
                    dev_times[f"kernel_{v}_us"] = 1e6 * device_timed(call, args.reps)
                print(
                    f"device time: {n_tok} tokens: "
                    + ", ".join(f"{k} {v:.1f}" for k, v in dev_times.items())
                    + f"; captured/device copy {dev_times['device_copy_us'] / dev_times['captured_copy_us']:.2f}"
                )
            del a, b
            rows.append(
                {
                    "tokens": n_tok,
                    "blocks": n,
                    "mib": nbytes / 2**20,
                    "direct_gb_s": nbytes / direct / 1e9,
                    "device_copy_gb_s": nbytes / plain / 1e9,
                    "ratio": plain / direct,
                    "direct_us_per_token": 1e6 * direct / n_tok,
                    "kernel_alone_us": None if kernel_only is None else 1e6 * kernel_only,
                    "uncaptured_ratio": None if launched is None else plain / launched,
                    "back_to_back_ratio": None if streamed is None or plain_streamed is None else plain_streamed / streamed,
                    "device_time": dev_times,
                }
            )
            assert torch.equal(mine.pool[:, :, dst[-1]], peer[:, :, src[-1]]), "the copy moved the wrong bytes"
    finally:
        here.send("done")
        proc.join(30)
        Path(pool_file).unlink(missing_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device: {name}; KV {spec.num_layers} layers x {spec.num_kv_heads} heads x {spec.head_dim}, {dtype}, "
        f"{spec.bytes_per_block / 2**20:.2f} MiB per block"
    )
    print(
        f"{'tokens':>7} {'MiB':>8} {'direct GB/s':>12} {'device copy GB/s':>17} {'direct/copy':>12} {'us/token':>9} "
        f"{'uncaptured/copy':>16}"
    )
    for r in rows:
        print(
            f"{r['tokens']:>7} {r['mib']:>8.0f} {r['direct_gb_s']:>12.1f} {r['device_copy_gb_s']:>17.1f} "
            f"{r['ratio']:>12.2f} {r['direct_us_per_token']:>9.4f} "
            + (f"{r['uncaptured_ratio']:>16.2f}" if r["uncaptured_ratio"] is not None else f"{'-':>16}")
        )
    Path(args.out).write_text(json.dumps({"device": name, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
