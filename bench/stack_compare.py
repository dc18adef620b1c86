"""`splitserve bench compare` over stacks this script starts: one `splitserve up` per target.

Each target is NAME=FLAGS (flags of `splitserve up`, e.g. "--prefill 0 --decode 1"); every
stack gets the same model, its own port and fresh caches. All stacks run side by side (an
idle stack sleeps), the workload runs against them one after the other, ratios are to the
first target, and the stacks are stopped at the end.

    python -m bench.stack_compare --model DIR --stack colocated="--prefill 0" \\
        --stack disaggregated="--prefill 1" --out DIR -- --workload trace --trace FILE ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.cli import _add_common, _config, _finish
from bench.serve.runner import run_compare
from contracts.ports import free_port


def start_stack(name: str, model: str, flags: list[str], log_dir: Path) -> tuple[subprocess.Popen, str]:
    port, state = free_port(), log_dir / f"{name}.json"
    argv = [sys.executable, "-m", "splitserve.cli", "up", "--model", model, "--port", str(port),
            "--state-file", str(state), "--log-dir", str(log_dir / name), *flags]  # fmt: skip
    with (log_dir / f"{name}.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, str(state)


def wait_ready(procs: dict[str, tuple[subprocess.Popen, str]], timeout_s: float = 300.0) -> dict[str, str]:
    deadline, urls = time.monotonic() + timeout_s, dict[str, str]()
    while len(urls) < len(procs):
        for name, (proc, state) in procs.items():
            if proc.poll() is not None:
                raise SystemExit(f"stack {name} exited with {proc.returncode}; see its log")
            if name not in urls and Path(state).exists():
                urls[name] = json.loads(Path(state).read_text())["url"]
        if time.monotonic() > deadline:
            raise SystemExit(f"stacks not ready after {timeout_s:.0f}s")
        time.sleep(0.5)
    return urls


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    own, bench_args = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint directory for every stack")
    parser.add_argument("--stack", action="append", required=True, metavar="NAME=FLAGS", help="repeatable; first = baseline")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait once all stacks are ready")
    args = parser.parse_args(own)
    bench = argparse.ArgumentParser(prog="bench options")
    _add_common(bench)
    options = bench.parse_args(bench_args)
    log_dir = Path(options.out or tempfile.mkdtemp(prefix="stack-compare-")) / "stacks"
    log_dir.mkdir(parents=True, exist_ok=True)
    stacks = [item.partition("=")[::2] for item in args.stack]
    procs = {name: start_stack(name, args.model, shlex.split(flags), log_dir) for name, flags in stacks}
    try:
        urls = wait_ready(procs)
        time.sleep(args.settle)  # start-up work (warm-up steps, first polls) out of the measurement
        targets = [(name, urls[name]) for name, _ in stacks]
        results = asyncio.run(run_compare(_config(options, targets[0][1]), targets))
        for name, flags in stacks:
            print(f"{name}: splitserve up {flags}")
        return _finish(results, [name for name, _ in stacks], options, ratios=True, sweep=False)
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, _ in procs.values():
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    raise SystemExit(main())
