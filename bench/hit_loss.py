"""Where a policy's prefix hits go missing against the oracle (simulator/oracle.py), on virtual time.

    python -m bench.hit_loss --prefill 8 --decode 8 --time-scale 0.5 --policy kv-aware

For every request, at the moment the scheduler decides, in prompt tokens (each capped at
prompt - 1, as hits are):

    seen     leading blocks some earlier request had: what an unbounded cache could hit
    stored   leading blocks some worker had announced at some time before (not: still computing)
    held     leading blocks the best worker, prefill or decode, holds now (prefix index)
    chosen   the hit the scheduler predicted for the placement it chose; realised: what the worker had

so seen - stored is lost to timing, stored - held to eviction, held - chosen to the choice.
Also prints how many distinct blocks each pool holds during the run (a pool holding what the
other holds adds no hits), and, for scale, pooled LRU caches (one cache of N workers' capacity,
the workers' own eviction order) beside the oracle's pooled Belady. Prints, writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from pathlib import Path
from typing import Self

from bench.sim_replay import DEFAULT_TRACE
from router import scheduler as scheduler_module
from router.prefix_index import PrefixIndex
from router.scheduler_config import load_policy, load_scheduler_config
from simulator.oracle import oracle_hit_rate
from simulator.profile import load_profile
from simulator.replay import ReplayConfig, replay
from simulator.workloads import ReplayRequest, mooncake_trace


def lead(chain: list[bytes], held: set | dict) -> int:
    n = 0
    while n < len(chain) and chain[n] in held:
        n += 1
    return n


def pooled_lru_hit_rate(requests: list[ReplayRequest], capacity_blocks: int, block_size: int = 16) -> float:
    cache: OrderedDict[bytes, None] = OrderedDict()
    hits = prompt = 0
    for r in sorted(requests, key=lambda r: (r.arrival_s, r.index)):
        hits += min(lead(r.chain, cache) * block_size, r.prompt_len - 1)
        prompt += r.prompt_len
        for key in reversed(r.chain):  # as BlockCache releases: the tail older than the root
            cache.pop(key, None)
            cache[key] = None
        while len(cache) > capacity_blocks:
            cache.popitem(last=False)
    return hits / prompt


class Recorder:
    """Wraps PrefixIndex.store and Scheduler.decide for the length of one replay."""

    def __init__(self) -> None:
        self.stored: set[bytes] = set()
        self.seen: set[bytes] = set()
        self.rows: dict[int, dict] = {}  # id(chain) -> figures at decision time
        self.pools: list[dict] = []

    def __enter__(self) -> Self:
        self._store, self._decide = PrefixIndex.store, scheduler_module.Scheduler.decide
        rec = self

        def store(index, publisher, keys, medium="gpu"):
            keys = list(keys)
            rec.stored.update(keys)
            return rec._store(index, publisher, keys, medium)

        def decide(sched, request, prefill, decode, exclude=frozenset()):
            chain, matches = request.block_keys, sched.index.match(request.block_keys)
            best = max([matches.get(w.worker_id, 0) for w in [*prefill, *decode]] + [0])
            decision = rec._decide(sched, request, prefill, decode, exclude)
            rec.rows[id(chain)] = {"seen": lead(chain, rec.seen), "stored": lead(chain, rec.stored), "held": best,
                                   "chosen": decision.predicted_hit_tokens}  # fmt: skip
            rec.seen.update(chain)
            if len(rec.rows) % 500 == 0:
                rec.pools.append(pool_occupancy(sched.index, prefill, decode, len(rec.rows)))
            return decision

        PrefixIndex.store, scheduler_module.Scheduler.decide = store, decide  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        PrefixIndex.store, scheduler_module.Scheduler.decide = self._store, self._decide  # type: ignore[method-assign]


def pool_occupancy(index: PrefixIndex, prefill: list, decode: list, decided: int) -> dict:
    p = set().union(*(index.keys_of(w.worker_id) for w in prefill))
    d = set().union(*(index.keys_of(w.worker_id) for w in decode))
    return {"decided": decided, "prefill_distinct": len(p), "decode_distinct": len(d), "union": len(p | d)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trace", default=DEFAULT_TRACE)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--time-scale", type=float, default=0.5)
    ap.add_argument("--prefill", type=int, default=8)
    ap.add_argument("--decode", type=int, default=8)
    ap.add_argument("--policy", default="kv-aware", help="shipped policy name or scheduler config file")
    ap.add_argument("--decode-keeps-imports", action="store_true", help="the what-if of bench/sim_replay.py")
    ap.add_argument("--evict-shared-first", action="store_true", help="the what-if of bench/sim_replay.py")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    requests = mooncake_trace(args.trace, args.limit, args.time_scale)
    profile = load_profile("h200-llama-3.1-8b")
    capacity = profile.kv_capacity_blocks(16)
    workers = args.prefill + args.decode
    oracle = oracle_hit_rate(requests, capacity * workers)
    config = load_scheduler_config(args.policy) if args.policy.endswith((".yaml", ".yml", ".json")) else load_policy(args.policy)
    with Recorder() as rec:
        summary = replay(ReplayConfig(profile, config, args.prefill, args.decode,
                                      decode_keeps_imports=args.decode_keeps_imports,
                                      evict_shared_first=args.evict_shared_first), requests)  # fmt: skip
    by_index = {r.index: r for r in requests}
    totals = dict.fromkeys(("seen", "stored", "held", "chosen", "realised", "prompt"), 0)
    for outcome in summary.outcomes:
        r = by_index[outcome.index]
        row = rec.rows[id(r.chain)]
        for k in ("seen", "stored", "held"):
            totals[k] += min(row[k] * 16, r.prompt_len - 1)
        totals["chosen"] += row["chosen"]
        totals["realised"] += outcome.hit_tokens
        totals["prompt"] += r.prompt_len
    rates = {k: v / totals["prompt"] for k, v in totals.items() if k != "prompt"}
    lru = {n: pooled_lru_hit_rate(requests, capacity * n) for n in sorted({args.prefill, workers})}
    print(f"{len(requests)} requests, {args.prefill}+{args.decode} workers, {args.policy}; oracle (pooled Belady, "
          f"{workers} workers' capacity) {oracle.hit_rate:.4f}")  # fmt: skip
    for k, v in rates.items():
        print(f"{k:<9}{v:.4f}  {v / oracle.hit_rate:.3f} of the oracle")
    for n, v in lru.items():
        print(f"pooled LRU, {n} workers' capacity: {v:.4f} ({v / oracle.hit_rate:.3f} of the oracle)")
    for row in rec.pools:
        print(f"after {row['decided']} decisions: distinct blocks held by the prefill pool {row['prefill_distinct']:,}, "
              f"decode pool {row['decode_distinct']:,}, both {row['union']:,} (capacity {capacity * workers:,})")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "oracle": oracle.hit_rate, "rates": rates,
                                              "pooled_lru": lru, "pools": rec.pools}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
