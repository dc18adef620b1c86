"""Router benchmarks: prefix-index lookups, per-request overhead and saturation.

    .venv/bin/python bench/router_bench.py --workers 64 --keys 1000000 --holders 8

1. Prefix-index lookup latency: a 64-block chain against many workers and many keys.
   Every worker holds the request's whole chain (the worst case for the walk); the index
   also holds `--keys` other blocks, each on `--holders` random workers.
2. Router overhead (unless --no-stack): starts `splitserve up --prefill 0 --decode 1`
   and sends the same small request (`--prompt-len` token ids, max_tokens=1, greedy)
   `--requests` times, alternating (a) straight to the decode worker over gRPC (GenerateUnary,
   as the router sends it) and (b) through the router's /v1/completions; reports p50/p99
   each way and the difference.
3. Saturation: through the router, max_tokens=1, closed-loop clients at each of
   `--concurrency` for `--duration` seconds; reports requests/s and the CPU% (100 = one
   core; /proc utime+stime, process plus descendants) of the router, the decode worker
   (incl. its engine-core child) and this client.
The stack is always stopped (SIGTERM to `up`). Prints tables, writes JSON (--out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from contracts.ports import free_port
from kvstore.block_key import block_keys
from router.prefix_index import PrefixIndex


def index_bench(args: argparse.Namespace) -> dict:
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
    report = {
        "workers": args.workers,
        "keys": args.keys,
        "holders": args.holders,
        "chain": args.chain,
        "index_blocks": index.num_blocks(),
        "build_s": build_s,
        **results,
        **decision_bench(index, workers, args),
    }
    return report


def decision_bench(index: PrefixIndex, worker_ids: list[str], args: argparse.Namespace) -> dict:
    """A whole kv-aware decision (index walk, scorers of every worker, picker, charge) as the
    router makes it, half the workers prefill and half decode, in four cases: a prompt the
    workers hold (colocated: two profiles scored), a new prompt (disaggregated: all three
    profiles), a 16k-token held prompt, and the held prompt while --in-flight placed requests
    that share its first 3/4 still compute (a busy app's system prompt); and the request's
    block hashing, which the router does before deciding. Wall and thread-CPU percentiles: on a
    shared machine the wall p99 also counts the time other processes held the core."""
    from router.scheduler import Scheduler, ScheduleRequest
    from router.scheduler_config import load_policy
    from router.workers import Role, Worker, WorkerLoad

    rng = random.Random(1)
    half = len(worker_ids) // 2
    pools = {
        role: [
            Worker(
                w,
                role,
                WorkerLoad(
                    worker_id=w,
                    role=role.value,
                    total_kv_blocks=54_345,
                    running_requests=rng.randrange(32),
                    active_kv_blocks=rng.randrange(40_000),
                    queued_prefill_tokens=rng.randrange(20_000),
                ),
            )
            for w in ids
        ]
        for role, ids in ((Role.PREFILL, worker_ids[:half]), (Role.DECODE, worker_ids[half:]))
    }
    scheduler = Scheduler(load_policy("kv-aware"), index)
    out = {}
    cases: list[tuple[str, int, bool, int]] = [
        ("held", args.chain, True, 0),
        ("new", args.chain, False, 0),
        ("held", 1024, True, 0),
        ("busy", args.chain, True, args.in_flight),
    ]
    for name, blocks, held, in_flight in cases:
        tokens = list(range(blocks * 16)) if held else list(range(7, 7 + blocks * 16))
        chain = block_keys(tokens, "bench", 16)
        if held:
            for i, w in enumerate(worker_ids):
                index.store(w, chain[: blocks - (i % 8)])
        # busy: requests in flight (placed, first token not out) that share the prompt's first 3/4
        shared = tokens[: blocks * 12]
        busy = [
            scheduler.decide(ScheduleRequest(len(t), block_keys(t, "bench", 16), 16), pools[Role.PREFILL], pools[Role.DECODE])
            for t in (shared + [10_000 + i] * (blocks * 4) for i in range(in_flight))
        ]
        walls, cpus, hashing, modes = [], [], [], set()
        for _ in range(args.lookups):
            c, t = time.thread_time(), time.perf_counter()
            decision = scheduler.decide(ScheduleRequest(len(tokens), chain, 16), pools[Role.PREFILL], pools[Role.DECODE])
            walls.append(time.perf_counter() - t)
            cpus.append(time.thread_time() - c)
            if decision.charge is not None:
                decision.charge.release()
            modes.add(decision.mode.value)
        for _ in range(max(20, args.lookups // 20)):
            t = time.perf_counter()
            block_keys(tokens, "bench", 16)
            hashing.append(time.perf_counter() - t)
        for decision in busy:
            if decision.charge is not None:
                decision.charge.release()
        out[f"decide_{name}_{blocks}"] = {
            "p50_us": statistics.median(walls) * 1e6,
            "p99_us": pct(walls, 0.99) * 1e6,
            "cpu_p50_us": statistics.median(cpus) * 1e6,
            "cpu_p99_us": pct(cpus, 0.99) * 1e6,
            "mode": "/".join(sorted(modes)),
            "hash_p50_us": statistics.median(hashing) * 1e6,
        }
    return out


# ---------------------------------------------------------------- live stack

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (the decode worker runs its engine core in a child process)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def tree_cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for p in pids:
        try:
            total += cpu_seconds(p)
        except OSError:
            pass
    return total


def pct(times: list[float], q: float) -> float:
    times = sorted(times)
    return times[min(len(times) - 1, int(len(times) * q))]


def start_stack(log_dir: Path, timeout_s: float) -> tuple[subprocess.Popen, dict]:
    state_file = log_dir / "state.json"
    argv = [sys.executable, "-m", "splitserve.cli", "up", "--prefill", "0", "--decode", "1",
            "--port", str(free_port()), "--state-file", str(state_file), "--log-dir", str(log_dir / "components"),
            "--kv-cache-bytes", "32MiB"]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    with (log_dir / "up.log").open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while not state_file.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"splitserve up exited with {proc.returncode}; see {log_dir / 'up.log'}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"splitserve up not ready after {timeout_s:.0f}s; see {log_dir / 'up.log'}")
        time.sleep(0.3)
    return proc, json.loads(state_file.read_text())


def start_sim_stack(log_dir: Path, args: argparse.Namespace) -> tuple:
    """Simulated workers in this process (their compute made negligible: speed-up 1000) and a
    real router process on its own core; `state` has the same shape as `up`'s. The "worker"
    CPU column then counts this process: simulated workers and the client together."""
    from simulator.cluster import ClusterConfig
    from simulator.launch import ClusterThread, start_router
    from simulator.model_dir import write_sim_model_dir
    from simulator.profile import load_profile

    cluster = ClusterThread.start(
        ClusterConfig(load_profile("h200-llama-3.1-8b"), args.sim // 2, args.sim - args.sim // 2, speedup=1000.0)
    )
    router = start_router(write_sim_model_dir(log_dir / "model"), cluster.cluster, log_dir / "router.log",
                          ["--policy", "kv-aware"], timeout_s=args.ready_timeout, cpu=args.router_cpu)  # fmt: skip
    state = {"url": router.url, "decode": cluster.cluster.addresses("decode"), "served_model_name": "model",
             "pids": {"router": router.process.pid, "decode-0": os.getpid()}}  # fmt: skip
    return (cluster, router), state


def stop_stack(proc) -> None:
    if isinstance(proc, tuple):  # a simulated stack
        cluster, router = proc
        router.stop()
        cluster.stop()
        return
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # `up` stops its components itself
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def overhead_bench(state: dict, args: argparse.Namespace) -> dict:
    import grpc

    from bench.raw_http import BlockingClient, encode_post
    from contracts.internal_auth import METADATA_KEY
    from contracts.rpc import worker_pb2, worker_pb2_grpc

    prompt = list(range(100, 100 + args.prompt_len))
    channel = grpc.insecure_channel(state["decode"][0])
    stub = worker_pb2_grpc.DecodeServiceStub(channel)
    body = {"model": state["served_model_name"], "prompt": prompt, "max_tokens": 1, "temperature": 0}
    host, port, raw = encode_post(state["url"], "/v1/completions", json.dumps(body).encode())
    client = BlockingClient(host, port)  # ~30 us of client CPU a request, like the gRPC stub's on the direct path
    secret_file = state.get("internal_secret_file")  # `up` guards its workers with an internal token
    metadata = [(METADATA_KEY, Path(secret_file).read_text().strip())] if secret_file else []

    def direct(i: int) -> None:
        req = worker_pb2.GenerateRequest(
            request_id=f"direct-{i}",
            prompt_token_ids=prompt,
            sampling=worker_pb2.SamplingParams(temperature=0, top_p=1.0, max_tokens=1, repetition_penalty=1.0),
        )
        # what the router sends for a short non-streamed request
        reply = stub.GenerateUnary(req, timeout=30, metadata=metadata)
        assert reply.finish_reason, reply

    def routed(i: int) -> None:
        reply = json.loads(client.post(raw))
        assert reply["choices"][0]["finish_reason"], reply

    try:
        for i in range(args.warmup):
            direct(-i - 1)
            routed(-i - 1)
        times: dict[str, list[float]] = {"direct": [], "router": []}
        for i in range(args.requests):  # alternate, so drift on the shared VM hits both alike
            for name, fn in (("direct", direct), ("router", routed)):
                t = time.perf_counter()
                fn(i)
                times[name].append(time.perf_counter() - t)
    finally:
        client.close()
        channel.close()
    out = {
        name: {"p50_ms": statistics.median(ts) * 1e3, "p99_ms": pct(ts, 0.99) * 1e3, "mean_ms": statistics.fmean(ts) * 1e3}
        for name, ts in times.items()
    }
    out["added"] = {k: out["router"][k] - out["direct"][k] for k in ("p50_ms", "p99_ms", "mean_ms")}
    out["requests"] = args.requests
    out["prompt_len"] = args.prompt_len
    return out


async def saturation_level(state: dict, concurrency: int, duration_s: float) -> dict:
    """Closed loop: ``concurrency`` keep-alive connections each send the next request as soon as
    the last one is answered. ``router_cpu_ms_per_req`` is the router's CPU time over the level
    divided by the requests it served: the rate one core would sustain is 1000 / that figure,
    whatever share of its core the router got on a shared machine."""
    from bench.raw_http import AsyncClient, HTTPStatusError, encode_post

    prompt = list(range(100, 100 + 16))
    body = {"model": state["served_model_name"], "prompt": prompt, "max_tokens": 1, "temperature": 0}
    host, port, raw = encode_post(state["url"], "/v1/completions", json.dumps(body).encode())
    router = process_tree(state["pids"]["router"])
    # with --sim the "worker" is this process (simulated workers and the client), the router its child
    pids = {
        "router": router,
        "worker": [p for p in process_tree(state["pids"]["decode-0"]) if p not in router],
        "client": [os.getpid()],
    }
    latencies: list[float] = []
    errors = 0
    clients = [await AsyncClient.connect(host, port) for _ in range(concurrency)]
    for client in clients:  # warm every connection before the clock starts
        await client.post(raw)

    async def loop(client: AsyncClient, deadline: float) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            try:
                await client.post(raw)
            except HTTPStatusError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t)

    cpu0 = {k: tree_cpu_seconds(p) for k, p in pids.items()}
    t0 = time.perf_counter()
    await asyncio.gather(*(loop(c, t0 + duration_s) for c in clients))
    wall = time.perf_counter() - t0
    cpu1 = {k: tree_cpu_seconds(p) for k, p in pids.items()}
    for client in clients:
        await client.close()
    served = len(latencies) + errors
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "wall_s": wall,
        "rps": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": pct(latencies, 0.99) * 1e3,
        "load_avg": os.getloadavg()[0],
        "router_cpu_ms_per_req": (cpu1["router"] - cpu0["router"]) / max(served, 1) * 1e3,
        "processes": {k: len(p) for k, p in pids.items()},
        **{f"{k}_cpu_pct": (cpu1[k] - cpu0[k]) / wall * 100 for k in pids},
    }


def print_tables(report: dict) -> None:
    idx = report["index"]
    print(f"{'lookup':<8}{'p50 (us)':>12}{'p99 (us)':>12}   index {idx['index_blocks']:,} blocks, {idx['workers']} workers")
    for name in ("hit", "miss"):
        print(f"{name:<8}{idx[name]['p50_us']:>12.1f}{idx[name]['p99_us']:>12.1f}")
    print(f"\n{'decision':<20}{'p50 us':>9}{'p99 us':>9}{'cpu p50':>9}{'cpu p99':>9}  mode           hashing the prompt")
    for name in [k for k in idx if k.startswith("decide_")]:
        d = idx[name]
        print(f"{name:<20}{d['p50_us']:>9.1f}{d['p99_us']:>9.1f}{d['cpu_p50_us']:>9.1f}{d['cpu_p99_us']:>9.1f}  {d['mode']:<14} "
              f"{d['hash_p50_us']:.0f} us")  # fmt: skip
    print(f"(load average {os.getloadavg()[0]:.1f})")
    if "overhead" in report:
        ov = report["overhead"]
        print(
            f"\n{'path':<8}{'p50 (ms)':>12}{'p99 (ms)':>12}{'mean (ms)':>12}   {ov['requests']} reqs, "
            f"{ov['prompt_len']} prompt tokens, max_tokens=1"
        )
        for name in ("direct", "router", "added"):
            print(f"{name:<8}{ov[name]['p50_ms']:>12.2f}{ov[name]['p99_ms']:>12.2f}{ov[name]['mean_ms']:>12.2f}")
    if "saturation" in report:
        print(
            f"\n{'conc':>5}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'router %':>10}{'router ms/req':>14}{'1-core req/s':>13}"
            f"{'worker %':>10}{'client %':>10}{'errors':>8}{'load':>6}"
        )
        for r in report["saturation"]:
            ms = r["router_cpu_ms_per_req"]
            print(
                f"{r['concurrency']:>5}{r['rps']:>9.1f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['router_cpu_pct']:>10.0f}"
                f"{ms:>14.3f}{1000 / ms if ms else float('nan'):>13.0f}{r['worker_cpu_pct']:>10.0f}{r['client_cpu_pct']:>10.0f}"
                f"{r['errors']:>8}{r['load_avg']:>6.1f}"
            )
        print(f"\n{report['saturation_verdict']}")


def verdict(levels: list[dict]) -> str:
    top = max(levels, key=lambda r: r["rps"])
    router_sat = [r for r in levels if r["router_cpu_pct"] >= 90]
    worker_sat = [r for r in levels if r["worker_cpu_pct"] >= 90]
    if router_sat and (not worker_sat or router_sat[0]["concurrency"] <= worker_sat[0]["concurrency"]):
        r = router_sat[0]
        return (
            f"router saturates first: {r['router_cpu_pct']:.0f}% of a core at {r['rps']:.0f} req/s "
            f"(concurrency {r['concurrency']}); peak {top['rps']:.0f} req/s"
        )
    if worker_sat:
        r = worker_sat[0]
        return (
            f"decode worker saturates first: {r['worker_cpu_pct']:.0f}% of a core at {r['rps']:.0f} req/s "
            f"(concurrency {r['concurrency']}, router at {r['router_cpu_pct']:.0f}%); router saturation not reached"
        )
    total = sum(top[k] for k in ("router_cpu_pct", "worker_cpu_pct", "client_cpu_pct"))
    return (
        f"no process reached ~100% of a core, so the router's saturation rate was not reached; peak "
        f"{top['rps']:.0f} req/s at concurrency {top['concurrency']} (router {top['router_cpu_pct']:.0f}%, "
        f"worker {top['worker_cpu_pct']:.0f}%, client {top['client_cpu_pct']:.0f}%; together {total:.0f}% of "
        f"the machine's {(os.cpu_count() or 1) * 100}%, load avg {os.getloadavg()[0]:.1f}): the shared cores are the limit"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=64)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--holders", type=int, default=8)
    ap.add_argument("--chain", type=int, default=64)
    ap.add_argument(
        "--in-flight", type=int, default=200, help="decide_busy: placed requests still computing that share the prompt's head"
    )
    ap.add_argument("--lookups", type=int, default=2000)
    ap.add_argument("--no-stack", action="store_true", help="only the prefix-index part")
    ap.add_argument("--requests", type=int, default=200, help="overhead: requests per path")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--concurrency", default="1,4,16,32")
    ap.add_argument("--duration", type=float, default=6.0, help="saturation: seconds per concurrency level")
    ap.add_argument("--ready-timeout", type=float, default=240.0)
    ap.add_argument("--log-dir", default=None, help="stack logs (default: a temporary directory)")
    ap.add_argument("--out", default="router_bench.json")
    ap.add_argument("--sim", type=int, default=0, metavar="N",
                    help="stack = N simulated workers (half prefill, half decode; `splitserve sim`) and a router pinned "
                         "to --router-cpu, instead of `splitserve up` with a real engine")  # fmt: skip
    ap.add_argument("--router-cpu", type=int, default=0, help="--sim: the core the router runs on (taskset)")
    args = ap.parse_args()

    report: dict = {"index": index_bench(args)}
    if not args.no_stack:
        log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="router_bench-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        proc = None
        try:
            t = time.perf_counter()
            proc, state = start_sim_stack(log_dir, args) if args.sim else start_stack(log_dir, args.ready_timeout)
            print(f"[router_bench] stack up in {time.perf_counter() - t:.1f}s ({state['url']}, logs {log_dir})", flush=True)
            report["overhead"] = overhead_bench(state, args)
            report["saturation"] = [
                asyncio.run(saturation_level(state, int(c), args.duration)) for c in args.concurrency.split(",")
            ]
            report["saturation_verdict"] = verdict(report["saturation"])
        finally:
            if proc is not None:
                stop_stack(proc)
    print_tables(report)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
