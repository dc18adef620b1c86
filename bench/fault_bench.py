"""Faults under load on a `splitserve up` stack: requests failed, longest request, recovery.

One stack (tiny random model, CPU), a steady load of greedy chat completions at a fixed
concurrency, and one fault after another: SIGKILL of the kvstore node, the master, a
prefill worker, a decode worker and the router, then SIGSTOP of a decode worker for
``--stop-s`` seconds, then SIGKILL of `up` itself. Per fault: requests started from the
fault until recovery + ``--settle-s``, how many failed, the longest one, and the recovery
time (fault -> the component serves again: restarted and healthy; for the store, the
store receives KV blocks again). Prints a table and writes JSON.

    python -m bench.fault_bench --out fault_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
from pathlib import Path

import httpx

from bench.fault_load import Load, alive, descendants, make_tiny_model, metric, start_up, wait_for
from splitserve.supervisor import grpc_healthy

RECEIVED = "splitserve_kvstore_received_bytes_total"


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _recovered(stack, name: str, old_pid: int, since_bytes: float) -> bool:
    state = stack.reload()
    if state["pids"][name] == old_pid:
        return False
    if name.startswith("kvstore"):
        return metric(state["metrics"]["kvstore-master"], RECEIVED) > since_bytes
    if name == "router":
        try:
            return httpx.get(f"{stack.url}/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False
    role, index = name.split("-")
    return grpc_healthy(_port(state[role][int(index)]))


def run_fault(stack, load: Load, name: str, kind: str, stop_s: float, settle_s: float) -> dict:
    state = stack.reload()
    pid, start = state["pids"][name], time.monotonic()
    written = metric(state["metrics"]["kvstore-master"], RECEIVED) if name == "kvstore-node" else 0.0
    if kind == "SIGSTOP":
        os.killpg(pid, signal.SIGSTOP)
        time.sleep(stop_s)
        os.killpg(pid, signal.SIGCONT)
        recovery = time.monotonic() - start
    else:
        os.kill(pid, signal.SIGKILL)
        recovery = wait_for(lambda: _recovered(stack, name, pid, written), 120, f"{name} recovered")
    time.sleep(settle_s)
    window = [o for o in load.outcomes if o.start >= start - 1.0]  # in flight at the fault, or started after it
    return {"fault": f"{kind} {name}", "requests": len(window), "failed": sum(1 for o in window if o.status != 200),
            "longest_s": round(max((o.seconds for o in window), default=0.0), 2), "recovery_s": round(recovery, 2),
            "errors": sorted({o.error[:160] for o in window if o.status != 200})[:3]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--stop-s", type=float, default=10.0, help="how long the decode worker stays stopped")
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument("--out", default="fault_bench.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fault-bench-"))
    model = make_tiny_model(work / "model")
    stack = start_up(model, work / "stack", "--prefill", "1", "--decode", "2", "--colocate-threshold", "16")
    rows: list[dict] = []
    load = Load(stack.url, concurrency=args.concurrency).start()
    try:
        wait_for(lambda: load.ok_since(0) >= 6, 120, "warm-up requests")
        for name, kind in [("kvstore-node", "SIGKILL"), ("kvstore-master", "SIGKILL"), ("prefill-0", "SIGKILL"),
                           ("decode-0", "SIGKILL"), ("router", "SIGKILL"), ("decode-1", "SIGSTOP")]:  # fmt: skip
            rows.append(run_fault(stack, load, name, kind, args.stop_s, args.settle_s))
            print(rows[-1], flush=True)
    finally:
        load.stop()
    tree = descendants(stack.process.pid)
    os.kill(stack.process.pid, signal.SIGKILL)
    stack.process.wait()
    start = time.monotonic()
    gone = wait_for(lambda: not any(alive(p) for p in tree), 30, "the stack's processes exit")
    rows.append(
        {
            "fault": "SIGKILL up",
            "requests": 0,
            "failed": 0,
            "longest_s": 0.0,
            "recovery_s": round(gone, 2),
            "errors": [f"{len(tree)} processes, {sum(alive(p) for p in tree)} left after {time.monotonic() - start:.1f}s"],
        }
    )
    print(f"\n{'fault':<22}{'requests':>9}{'failed':>8}{'longest s':>11}{'recovery s':>12}")
    for r in rows:
        print(f"{r['fault']:<22}{r['requests']:>9}{r['failed']:>8}{r['longest_s']:>11.2f}{r['recovery_s']:>12.2f}")
    Path(args.out).write_text(json.dumps({"concurrency": args.concurrency, "faults": rows}, indent=2))


if __name__ == "__main__":
    main()
