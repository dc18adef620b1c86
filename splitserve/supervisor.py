"""The processes of a `splitserve up` stack: start, health, restart with back-off, ordered stop.

What Kubernetes does for the chart's pods, on one machine:
- every child is tied to `up` (contracts/lifeline.py): if `up` dies, the kernel kills them;
- a component that exits while the stack runs is restarted on the same ports after a
  back-off that doubles per crash (``RestartPolicy``) and resets once it has run for a while;
- SIGTERM stops the stack in tiers (router, then workers, then the store), each tier in
  parallel, the whole stop bounded by one grace period, after which stragglers are killed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from contracts.lifeline import preexec_for


@dataclass(slots=True)
class Component:
    name: str
    argv: list[str]
    grpc_port: int | None = None  # health-checked with grpc.health.v1
    http_port: int | None = None  # health-checked with GET /health
    tcp_port: int | None = None  # ready once it accepts a connection (programs with no health service: Mooncake's)
    metrics_port: int | None = None
    expect_workers: dict[str, int] | None = None  # router: ready only once it sees this many ready workers
    env: dict[str, str] = field(default_factory=dict)  # on top of the stack's environment, this component only
    process: subprocess.Popen | None = field(default=None, repr=False)
    started_at: float = 0.0
    restarts: int = 0
    crashes_in_a_row: int = 0
    restart_at: float | None = None  # when a crashed component is due to start again


@dataclass(slots=True, frozen=True)
class RestartPolicy:
    """CrashLoopBackOff, scaled to one machine: 0.5 s, 1 s, 2 s ... up to ``max_backoff_s``."""

    enabled: bool = True
    first_backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    stable_after_s: float = 30.0  # a component that ran this long starts its back-off from the beginning again

    def backoff(self, crashes_in_a_row: int) -> float:
        return min(self.max_backoff_s, self.first_backoff_s * 2 ** max(0, crashes_in_a_row - 1))


class StopRequested:
    """Set by SIGTERM or Ctrl-C; the launch loops poll it and then stop the stack in order."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.requested = True


def grpc_healthy(port: int) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def http_healthy(port: int, expect_workers: dict[str, int] | None) -> bool:
    import httpx

    try:
        reply = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0)
    except httpx.HTTPError:
        return False
    if reply.status_code != 200:
        return False
    ready = reply.json().get("ready_workers", {})
    return all(ready.get(role, 0) >= count for role, count in (expect_workers or {}).items())


def tcp_accepting(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    except OSError:
        return False
    return True


def healthy(comp: Component) -> bool:
    if comp.grpc_port is not None:
        return grpc_healthy(comp.grpc_port)
    if comp.tcp_port is not None:
        return tcp_accepting(comp.tcp_port)
    return comp.http_port is not None and http_healthy(comp.http_port, comp.expect_workers)


def stop_tier(name: str) -> int:
    """Shutdown order: the router stops taking traffic, workers drain, then the store goes."""
    if name == "router":
        return 0
    if name.startswith(("prefill-", "decode-")):
        return 1
    return 2 if name == "kvstore-node" else 3


class Stack:
    def __init__(self, comps: list[Component], log_dir: Path, policy: RestartPolicy | None = None,
                 say: Callable[[str], None] = lambda line: print(f"[up] {line}", flush=True)) -> None:  # fmt: skip
        self.comps = comps
        self.log_dir = log_dir
        self.policy = policy or RestartPolicy()
        self.say = say
        self.env: dict[str, str] = {}

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        # every worker runs torch: without a cap each one starts a thread per core and they thrash
        workers = sum(1 for c in self.comps if c.name.startswith(("prefill-", "decode-")))
        self.env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(workers, 1))))
        for comp in self.comps:
            self._launch(comp)

    def _launch(self, comp: Component) -> None:
        # append: a restarted component's log follows its previous life's
        with open(self.log_dir / f"{comp.name}.log", "ab") as log:
            # own process group: Ctrl-C in the terminal reaches `up`, which stops children in order;
            # the parent-death signal kills the child if `up` itself is killed
            comp.process = subprocess.Popen(comp.argv, stdout=log, stderr=subprocess.STDOUT, env={**self.env, **comp.env},
                                            start_new_session=True, preexec_fn=preexec_for(os.getpid()))  # fmt: skip
        comp.started_at = time.monotonic()
        comp.restart_at = None

    def wait_ready(self, timeout_s: float, stop: StopRequested | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(self.comps)
        while pending:
            if stop is not None and stop.requested:
                raise KeyboardInterrupt("stop requested while starting")
            for comp in list(pending):
                proc = comp.process
                if proc is None or proc.poll() is not None:
                    tail = (self.log_dir / f"{comp.name}.log").read_text(errors="replace")[-2000:]
                    code = None if proc is None else proc.returncode
                    raise RuntimeError(f"{comp.name} exited with code {code}:\n{tail}")
                if healthy(comp):
                    pending.remove(comp)
                    self.say(f"{comp.name:<15} ready")
            if pending and time.monotonic() > deadline:
                names = ", ".join(c.name for c in pending)
                raise TimeoutError(f"not ready after {timeout_s:.0f}s: {names} (logs in {self.log_dir})")
            if pending:
                time.sleep(0.3)

    def exited(self) -> list[Component]:
        return [c for c in self.comps if c.process and c.process.poll() is not None]

    def supervise(self) -> bool:
        """One pass: schedule crashed components for a restart, start those that are due.

        Returns True when a component was started again (its pid changed).
        """
        now, restarted = time.monotonic(), False
        for comp in self.comps:
            if comp.process is None or comp.process.poll() is None:
                continue
            if comp.restart_at is None:
                ran = now - comp.started_at
                comp.crashes_in_a_row = 1 if ran >= self.policy.stable_after_s else comp.crashes_in_a_row + 1
                if not self.policy.enabled:
                    continue
                wait = self.policy.backoff(comp.crashes_in_a_row)
                comp.restart_at = now + wait
                self.say(f"{comp.name} exited with code {comp.process.returncode} after {ran:.1f}s; "
                         f"restarting in {wait:.1f}s")  # fmt: skip
            elif now >= comp.restart_at:
                comp.restarts += 1
                self._launch(comp)
                restarted = True
                self.say(f"{comp.name} restarted (pid {comp.process.pid}, restart {comp.restarts})")
        return restarted

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM tier by tier (see ``stop_tier``); whatever still runs at the deadline is killed."""
        deadline = time.monotonic() + grace_s
        for tier in sorted({stop_tier(c.name) for c in self.comps}):
            running = [
                (c.name, c.process) for c in self.comps if stop_tier(c.name) == tier and c.process and c.process.poll() is None
            ]
            for _, proc in running:
                proc.send_signal(signal.SIGTERM)
            for name, proc in running:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.say(f"{name} did not stop within the grace period; killing it")
                    proc.kill()
                    proc.wait()
