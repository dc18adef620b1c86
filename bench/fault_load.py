"""A `splitserve up` stack, a steady load against it, and the process tree under it.

Shared by the fault-injection tests (tests/reliability) and bench/fault_bench.py: start a stack, run
requests at a fixed concurrency in threads, inject a fault, and read back per-request
outcomes (ok / error, latency) and per-component recovery times.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from contracts.ports import free_port

CLI = [sys.executable, "-m", "splitserve.cli"]
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def make_tiny_model(path: Path) -> str:
    subprocess.run(CLI + ["make-model", "--arch", "llama", "--size", "tiny", str(path)], check=True, env=ENV,
                   capture_output=True)  # fmt: skip
    return str(path)


@dataclass(slots=True)
class UpStack:
    process: subprocess.Popen
    state_file: Path
    log: Path
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.state["url"]

    def reload(self) -> dict[str, Any]:
        self.state = json.loads(self.state_file.read_text())
        return self.state

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    def stop(self, grace_s: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def start_up(model: str, log_dir: Path, *flags: str, timeout_s: float = 240.0) -> UpStack:
    """`splitserve up` until it wrote its state file."""
    log_dir.mkdir(parents=True, exist_ok=True)
    state_file, log = log_dir / "state.json", log_dir / "up.log"
    argv = ["up", "--model", model, "--port", str(free_port()), "--state-file", str(state_file),
            "--log-dir", str(log_dir / "components"), "--kv-cache-bytes", "32MiB", *flags]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(CLI + argv, stdout=out, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
    stack = UpStack(process, state_file, log)
    deadline = time.monotonic() + timeout_s
    while not state_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            stack.stop(5)
            raise RuntimeError(f"`splitserve up` did not become ready:\n{stack.tail()}")
        time.sleep(0.3)
    stack.reload()
    return stack


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc), at this moment."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its exit status is left to collect


@dataclass(slots=True)
class Outcome:
    start: float
    seconds: float
    status: int  # HTTP status, 0 for a transport error
    error: str = ""


class Load:
    """``concurrency`` threads sending greedy chat completions until ``stop``; every outcome is kept."""

    def __init__(self, url: str, concurrency: int = 2, max_tokens: int = 8, timeout_s: float = 60.0) -> None:
        self.url, self.concurrency, self.max_tokens, self.timeout_s = url, concurrency, max_tokens, timeout_s
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> Load:
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.concurrency)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s + 5)
        return list(self.outcomes)

    def _run(self, lane: int) -> None:
        n = 0
        with httpx.Client(timeout=self.timeout_s) as client:
            while not self._stop.is_set():
                n += 1
                # a long prompt (over the colocate threshold) goes disaggregated, through the store
                words = " ".join(f"w{lane}x{n}y{i}" for i in range(20))
                body = {"model": "default", "messages": [{"role": "user", "content": words}],
                        "max_tokens": self.max_tokens, "temperature": 0}  # fmt: skip
                start = time.monotonic()
                try:
                    reply = client.post(f"{self.url}/v1/chat/completions", json=body)
                    outcome = Outcome(start, time.monotonic() - start, reply.status_code,
                                      "" if reply.status_code == 200 else reply.text[:300])  # fmt: skip
                except httpx.HTTPError as exc:
                    outcome = Outcome(start, time.monotonic() - start, 0, f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self.outcomes.append(outcome)
                if outcome.status == 0:
                    time.sleep(0.2)  # the router is down: a client backs off rather than spin

    def ok_since(self, t: float) -> int:
        with self._lock:
            return sum(1 for o in self.outcomes if o.start >= t and o.status == 200)


def metric(address: str, name: str) -> float:
    """Sum of a Prometheus metric's samples on ``address`` (0 when absent or unreachable)."""
    try:
        text = httpx.get(f"http://{address}/metrics", timeout=2.0).text
    except httpx.HTTPError:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(condition: Any, timeout_s: float, what: str) -> float:
    """Seconds until ``condition()`` held; TimeoutError after ``timeout_s``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f}s")
        time.sleep(0.2)
    return time.monotonic() - start
