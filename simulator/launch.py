"""Start a simulated cluster on a background thread and real routers in front of it.

The cluster's event loop runs on its own thread so that tests and benchmarks keep
theirs (or none); the routers are `splitserve router` processes, unchanged.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from contracts.ports import free_port
from simulator.cluster import ClusterConfig, SimCluster


class SimLaunchError(RuntimeError):
    """A simulated cluster or its router did not come up (message says which and why)."""


@dataclass(slots=True)
class ClusterThread:
    cluster: SimCluster
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    @classmethod
    def start(cls, config: ClusterConfig, timeout_s: float = 60.0) -> ClusterThread:
        loop = asyncio.new_event_loop()
        started: list[SimCluster] = []
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            started.append(loop.run_until_complete(SimCluster.start(config)))
            ready.set()
            loop.run_forever()

        thread = threading.Thread(target=run, name="sim-cluster", daemon=True)
        thread.start()
        if not ready.wait(timeout_s):
            raise SimLaunchError(f"the simulated cluster did not start within {timeout_s} s")
        return cls(started[0], loop, thread)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.cluster.stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@dataclass(slots=True)
class RouterProcess:
    url: str
    process: subprocess.Popen
    log_path: Path
    extra: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_router(model_dir: Path, cluster: SimCluster, log_path: Path, router_args: list[str], port: int | None = None,
                 timeout_s: float = 120.0, cpu: int | None = None, wait: bool = True) -> RouterProcess:  # fmt: skip
    """A `splitserve router` process for ``cluster``; with ``wait``, returns once it sees every
    worker ready (else call ``wait_ready``: routers then start side by side)."""
    port = port or free_port()
    argv = [sys.executable, "-m", "splitserve.cli", "router", "--model", str(model_dir), "--host", "127.0.0.1",
            "--port", str(port), "--decode", ",".join(cluster.addresses("decode")), *router_args]  # fmt: skip
    if cluster.addresses("prefill"):
        argv += ["--prefill", ",".join(cluster.addresses("prefill"))]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    log = log_path.open("w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    router = RouterProcess(f"http://127.0.0.1:{port}", proc, log_path)
    if wait:
        wait_ready(router, cluster, timeout_s)
    return router


def wait_ready(router: RouterProcess, cluster: SimCluster, timeout_s: float = 120.0) -> None:
    expect = {"prefill": len(cluster.addresses("prefill")), "decode": len(cluster.addresses("decode"))}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if router.process.poll() is not None:
            raise SimLaunchError(f"the router exited with {router.process.returncode}; see {router.log_path}")
        try:
            ready = httpx.get(router.url + "/health", timeout=1.0).json().get("ready_workers", {})
            if all(ready.get(role, 0) >= n for role, n in expect.items()):
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    router.stop()
    raise SimLaunchError(f"the router did not see {expect} ready workers within {timeout_s} s; see {router.log_path}")
