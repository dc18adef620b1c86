"""Drain-safe scale-down: a decode worker gets SIGTERM under load and no request fails.

What Kubernetes does on scale-down, minus the cluster: the worker's main process gets
SIGTERM (as PID 1 of its container would) while clients keep streaming through a real
router. The worker turns NOT_SERVING, the router drops it from the candidate set at its
next health check, the requests it was running finish, and the process exits 0 within
its drain timeout. Own workers and router (colocated serving, no store): the shared
stack stays intact.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from e2e_stack import spawn, start_router, wait_until

from contracts.ports import free_port, free_port_pair

pytestmark = pytest.mark.slow

DRAIN_TIMEOUT_S = 30
CLIENTS = 4
REQUESTS = 32


def start_decode(model: str, name: str, logs: Path):
    port, metrics = free_port(), free_port()
    argv = ["decode", "--model", model, "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics),
            "--kv-events-port", str(free_port_pair()), "--worker-id", name, "--kv-cache-bytes", "32MiB",
            "--drain-timeout", str(DRAIN_TIMEOUT_S)]  # fmt: skip
    return spawn(name, argv, logs), f"127.0.0.1:{port}", f"127.0.0.1:{metrics}"


def running_requests(metrics_address: str) -> float:
    text = httpx.get(f"http://{metrics_address}/metrics", timeout=2).text
    lines = [line for line in text.splitlines() if line.startswith("splitserve_worker_running_requests{")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def ready_decode_workers(url: str) -> int:
    return httpx.get(f"{url}/health", timeout=2).json()["ready_workers"].get("decode", 0)


def complete(url: str, i: int) -> tuple[int, str, float, float]:
    """One streamed completion; (status, finish_reason, start, end)."""
    body = {"model": "default", "prompt": f"request {i}: tell me about kv caches", "max_tokens": 48,
            "temperature": 0, "stream": True, "ignore_eos": True}  # fmt: skip
    start = time.monotonic()
    finish = ""
    with httpx.Client(base_url=url, timeout=120) as client, client.stream("POST", "/v1/completions", json=body) as reply:
        status = reply.status_code
        for line in reply.iter_lines():
            if line.startswith("data: {") and '"finish_reason":"' in line.replace(" ", ""):
                finish = line.replace(" ", "").split('"finish_reason":"', 1)[1].split('"', 1)[0]
            assert not line.startswith('data: {"error"'), line
    return status, finish, start, time.monotonic()


def test_sigterm_on_a_decode_worker_under_load_fails_no_request(model_dir: str, logs: Path) -> None:
    drained, drained_grpc, drained_metrics = start_decode(model_dir, "drain-a", logs)
    kept, kept_grpc, _ = start_decode(model_dir, "drain-b", logs)
    router = None
    try:
        router, url = start_router("router-drain", model_dir, [], [drained_grpc, kept_grpc], logs)
        sigterm_at: list[float] = []
        dropped_after: list[float] = []

        def sigterm_when_busy() -> None:
            # only a worker with requests in flight tests the drain
            wait_until(lambda: running_requests(drained_metrics) > 0, 60, "load reaches the worker", drained)
            sigterm_at.append(time.monotonic())
            os.kill(drained.process.pid, signal.SIGTERM)  # the main process only, as the kubelet does
            # NOT_SERVING alone takes it out: no run of failed checks is waited for
            wait_until(lambda: ready_decode_workers(url) == 1, 10, "router drops the draining worker", router)
            dropped_after.append(time.monotonic() - sigterm_at[0])

        killer = threading.Thread(target=sigterm_when_busy, daemon=True)
        killer.start()
        results: list[tuple[int, str, float, float]] = []
        with ThreadPoolExecutor(CLIENTS) as pool:
            # batches until one has run across the SIGTERM: the clients stay busy whenever it comes
            while not sigterm_at and len(results) < 8 * REQUESTS:
                results += pool.map(lambda i: complete(url, i), range(len(results), len(results) + REQUESTS))
        killer.join(timeout=15)

        assert sigterm_at, "the worker never had requests in flight"
        failed = [(i, r[:2]) for i, r in enumerate(results) if r[0] != 200 or r[1] != "length"]
        assert not failed, f"requests failed during the drain: {failed}\n{router.tail()}"
        # one health interval (1 s) plus slack for a loaded CI machine; within the chart's
        # default preStop sleep, and far below any drain timeout
        assert dropped_after and dropped_after[0] < 5.0, f"router dropped the draining worker after {dropped_after}s"
        spanning = [r for r in results if r[2] < sigterm_at[0] < r[3]]
        assert spanning, "no request was in flight across the SIGTERM"
        drained.process.wait(timeout=DRAIN_TIMEOUT_S + 10)
        assert drained.process.returncode == 0, drained.tail()
        assert time.monotonic() - sigterm_at[0] < DRAIN_TIMEOUT_S, "the drain ran into its timeout"
        assert ready_decode_workers(url) == 1  # the router dropped the stopped worker
        assert complete(url, REQUESTS)[:2] == (200, "length")  # and serves on with the other one
    finally:
        for proc in filter(None, (router, drained, kept)):
            proc.stop()
