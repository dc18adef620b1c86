"""Real processes for the end-to-end tests: `splitserve up`, extra workers, extra routers.

Everything binds 127.0.0.1 on free ports and logs into the test's temporary directory.
Each process gets its own process group so that a stop reaches its children too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from contracts.ports import free_port, free_port_pair

CLI = [sys.executable, "-m", "splitserve.cli"]
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


@dataclass(slots=True)
class Proc:
    name: str
    process: subprocess.Popen
    log: Path

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    def stop(self, grace_s: float = 20.0) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def spawn(name: str, argv: list[str], log_dir: Path) -> Proc:
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(CLI + argv, stdout=out, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
    return Proc(name, process, log)


def wait_until(condition: Any, timeout_s: float, what: str, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc is not None and proc.process.poll() is not None:
            raise RuntimeError(f"{what}: {proc.name} exited with {proc.process.returncode}\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout_s:.0f}s\n{proc.tail() if proc else ''}")
        time.sleep(0.3)


def start_up(model: str, log_dir: Path, *flags: str, timeout_s: float = 240.0) -> tuple[Proc, dict[str, Any]]:
    """`splitserve up` until it wrote its state file; returns the process and the state."""
    state_file = log_dir / "state.json"
    argv = ["up", "--model", model, "--port", str(free_port()), "--state-file", str(state_file),
            "--log-dir", str(log_dir / "components"), "--kv-cache-bytes", "32MiB", *flags]  # fmt: skip
    proc = spawn("up", argv, log_dir)
    wait_until(state_file.exists, timeout_s, "splitserve up ready", proc)
    state = json.loads(state_file.read_text())
    ENV["SPLITSERVE_INTERNAL_SECRET_FILE"] = state["internal_secret_file"]  # extra workers and routers join the stack
    return proc, state


def start_worker(role: str, model: str, kvstore: str, worker_id: str, log_dir: Path) -> tuple[Proc, str, str]:
    """One more `splitserve prefill|decode` on the stack's kvstore; returns it, its gRPC and its metrics address."""
    port, metrics = free_port(), free_port()
    argv = [role, "--model", model, "--kvstore", kvstore, "--host", "127.0.0.1", "--port", str(port),
            "--metrics-port", str(metrics), "--kv-events-port", str(free_port_pair()), "--worker-id", worker_id,
            "--kv-cache-bytes", "32MiB", "--drain-timeout", "5"]  # fmt: skip
    return spawn(worker_id, argv, log_dir), f"127.0.0.1:{port}", f"127.0.0.1:{metrics}"


def start_router(name: str, model: str, prefill: list[str], decode: list[str], log_dir: Path, *flags: str) -> tuple[Proc, str]:
    """A `splitserve router` over the given workers; returns once it sees them all ready."""
    port = free_port()
    argv = ["router", "--model", model, "--served-model-name", "default", "--host", "127.0.0.1", "--port", str(port),
            "--prefill", ",".join(prefill), "--decode", ",".join(decode), *flags]  # fmt: skip
    proc = spawn(name, argv, log_dir)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            workers = httpx.get(f"{url}/health", timeout=1).json()["ready_workers"]
        except (httpx.HTTPError, ValueError, KeyError):
            return False
        return workers.get("prefill", 0) >= len(prefill) and workers.get("decode", 0) >= len(decode)

    wait_until(ready, 180, f"{name} sees its workers", proc)
    return proc, url
