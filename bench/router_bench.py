"""Prefix-index lookup latency: a 64-block chain against many workers and many keys.

    .venv/bin/python bench/router_bench.py --workers 64 --keys 1000000 --holders 8

Every worker holds the request's whole chain (the worst case for the walk); the index
also holds `--keys` other blocks, each on `--holders` random workers. Prints a table,
writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time

from kvstore.block_key import block_keys
from router.prefix_index import PrefixIndex


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=64)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--holders", type=int, default=8)
    ap.add_argument("--chain", type=int, default=64)
    ap.add_argument("--lookups", type=int, default=2000)
    ap.add_argument("--out", default="router_bench.json")
    args = ap.parse_args()

    rng = random.Random(0)
    index = PrefixIndex()
    workers = [f"w{i}" for i in range(args.workers)]
    t0 = time.perf_counter()
    for w in workers:
        index.store(w, [])
    batch: dict[str, list[bytes]] = {w: [] for w in workers}
    for _ in range(args.keys):
        key = os.urandom(16)
        for w in rng.sample(workers, args.holders):
            batch[w].append(key)
    for w, keys in batch.items():
        index.store(w, keys)
    build_s = time.perf_counter() - t0

    chain = block_keys(list(range(args.chain * 16)), "bench", 16)
    for i, w in enumerate(workers):
        index.store(w, chain[: args.chain - (i % 8)])  # varied prefix lengths
    results = {}
    for name, keys in (("hit", chain), ("miss", block_keys(list(range(1, args.chain * 16 + 1)), "bench", 16))):
        times = []
        for _ in range(args.lookups):
            t = time.perf_counter()
            index.match(keys)
            times.append(time.perf_counter() - t)
        times.sort()
        results[name] = {"p50_us": statistics.median(times) * 1e6, "p99_us": times[int(len(times) * 0.99)] * 1e6}
    report = {"workers": args.workers, "keys": args.keys, "holders": args.holders, "chain": args.chain,
              "index_blocks": index.num_blocks(), "build_s": build_s, **results}
    print(f"{'lookup':<8}{'p50 (us)':>12}{'p99 (us)':>12}   index {index.num_blocks():,} blocks, {args.workers} workers")
    for name in ("hit", "miss"):
        print(f"{name:<8}{results[name]['p50_us']:>12.1f}{results[name]['p99_us']:>12.1f}")
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
