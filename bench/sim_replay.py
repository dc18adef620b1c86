"""Routing policies compared on a simulated cluster, on virtual time (simulator/replay.py).

    python -m bench.sim_replay --workload trace --prefill 8 --decode 8 --time-scale 0.5
    python -m bench.sim_replay --workload tenants --prefill 32 --decode 32 --rate 40
    python -m bench.sim_replay --workload unique --prefill 8 --decode 8 --time-scale 0.5

Each policy replays the same requests on a fresh cluster (empty caches) with the real
scheduler; the oracle (simulator/oracle.py) bounds the hit rate at the cluster's total
KV capacity. Prints one table, writes JSON (--out). Times are simulated seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from router.scheduler_config import load_policy, load_scheduler_config
from simulator.oracle import oracle_hit_rate
from simulator.profile import load_profile
from simulator.replay import ReplayConfig, replay
from simulator.workloads import ReplayRequest, mooncake_trace, tenants, unique_prompts

DEFAULT_TRACE = "../shared/data/traces/mooncake_synthetic_trace.jsonl"  # relative to the repository root


def build(args: argparse.Namespace) -> list[ReplayRequest]:
    if args.workload == "tenants":
        return tenants(args.limit or 2000, args.tenants, args.prefix_len, args.question_len, args.output_len, args.rate)
    requests = mooncake_trace(args.trace, args.limit, args.time_scale, args.output_scale, skip=args.skip)
    return unique_prompts(requests) if args.workload == "unique" else requests


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", choices=["trace", "tenants", "unique"], default="trace")
    p.add_argument("--trace", default=DEFAULT_TRACE)
    p.add_argument("--limit", type=int, default=None, help="first N requests (tenants: how many)")
    p.add_argument("--skip", type=int, default=0, help="trace: start at request N (a second slice of the trace)")
    p.add_argument("--time-scale", type=float, default=1.0, help="multiplies trace timestamps (0.5 = twice the rate)")
    p.add_argument("--output-scale", type=float, default=1.0)
    p.add_argument("--tenants", type=int, default=150)
    p.add_argument("--prefix-len", type=int, default=6000)
    p.add_argument("--question-len", type=int, default=1200)
    p.add_argument("--output-len", type=int, default=100)
    p.add_argument("--rate", type=float, default=10.0, help="tenants: requests per second")
    p.add_argument("--prefill", type=int, default=8)
    p.add_argument("--decode", type=int, default=8)
    p.add_argument("--profile", default="h200-llama-3.1-8b")
    p.add_argument(
        "--policies",
        default="round-robin,least-loaded,kv-aware",
        help="shipped policy names or scheduler config files, comma-separated",
    )
    p.add_argument(
        "--kv-blocks",
        type=int,
        default=None,
        help="KV blocks per worker (default: the profile's capacity); fewer puts a short slice under pressure",
    )
    p.add_argument("--poll", type=float, default=1.0, help="GetLoad interval of the router (s)")
    p.add_argument("--decode-keeps-imports", action="store_true",
                   help="what-if: decode workers keep KV they imported for a disaggregated request as prefix cache like "
                        "any other (before: they evict it first, as the engine does)")  # fmt: skip
    p.add_argument("--demote-moved-copies", action="store_true",
                   help="what-if: a worker holding part of a request's prefix that another worker was chosen to "
                        "compute moves that copy to the front of its eviction order (no worker does this yet)")  # fmt: skip
    p.add_argument("--evict-shared-first", action="store_true",
                   help="what-if: workers evict blocks another worker also holds first, told by copy notices from "
                        "the router's prefix index (engine/block_manager.py can; no wire carries the notices yet)")  # fmt: skip
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    requests = build(args)
    profile = load_profile(args.profile)
    capacity = args.kv_blocks or profile.kv_capacity_blocks(16)
    oracle = oracle_hit_rate(requests, capacity * (args.prefill + args.decode))
    rows = []
    for name in args.policies.split(","):
        config = load_scheduler_config(name) if name.endswith((".yaml", ".yml", ".json")) else load_policy(name)
        start = time.perf_counter()
        s = replay(
            ReplayConfig(
                profile,
                config,
                args.prefill,
                args.decode,
                capacity_blocks=args.kv_blocks,
                poll_s=args.poll,
                decode_keeps_imports=args.decode_keeps_imports,
                demote_moved_copies=args.demote_moved_copies,
                evict_shared_first=args.evict_shared_first,
            ),
            requests,
        )
        row = {k: v for k, v in asdict(s).items() if k != "outcomes"}
        row.update(policy=name, of_oracle=s.hit_rate / oracle.hit_rate if oracle.hit_rate else float("nan"),
                   replay_wall_s=time.perf_counter() - start)  # fmt: skip
        rows.append(row)
        print(f"done {name} in {row['replay_wall_s']:.0f} s", flush=True)
    base = rows[0]
    print(f"\n{args.workload}: {len(requests)} requests, {args.prefill} prefill + {args.decode} decode workers, "
          f"{profile.name}; oracle hit rate {oracle.hit_rate:.3f} (unbounded {oracle.unbounded_hit_rate:.3f})")  # fmt: skip
    print(
        "| policy | TTFT p50 s | TTFT p90 s | TTFT p99 s | TTFT mean s | p90 vs first | TPOT p90 ms | hit rate | of "
        "oracle | colocated |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['policy']} | {r['ttft_p50_s']:.3f} | {r['ttft_p90_s']:.3f} | {r['ttft_p99_s']:.3f} | "
            f"{r['ttft_mean_s']:.3f} | "
            f"{base['ttft_p90_s'] / r['ttft_p90_s']:.2f}x | {r['tpot_p90_s'] * 1000:.1f} | {r['hit_rate']:.3f} | "
            f"{r['of_oracle']:.2f} | {r['colocated_fraction']:.2f} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "oracle": asdict(oracle), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
