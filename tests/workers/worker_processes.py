"""Start real worker processes (`splitserve prefill|decode`) on loopback for tests and benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contracts.ports import free_port, free_port_pair
from contracts.rpc import worker_pb2 as pb
from contracts.rpc import worker_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from contracts.sampling import SamplingParams
    from engine.llm_engine import LLMEngine

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


KV_WAIT_S = 5.0  # the decode worker's --kv-wait-timeout in the test stack (test_pending_kv.py)


@dataclass(slots=True)
class WorkerProcess:
    role: str
    worker_id: str
    address: str
    metrics_port: int
    proc: subprocess.Popen

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def stub(self, channel: grpc.Channel):
        return (pb_grpc.PrefillServiceStub if self.role == "prefill" else pb_grpc.DecodeServiceStub)(channel)

    def health(self) -> int | None:
        with self.channel() as ch:
            try:
                return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2).status
            except grpc.RpcError:
                return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_worker(role: str, model: str, kvstore: str, worker_id: str, *extra: str) -> WorkerProcess:
    port, metrics, events = free_port(), free_port(), free_port_pair()  # KV events on P, snapshots on P + 1
    argv = [
        sys.executable,
        "-m",
        "splitserve.cli",
        role,
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-port",
        str(metrics),
        "--kv-events-port",
        str(events),
        "--worker-id",
        worker_id,
        "--kv-cache-bytes",
        "16MiB",
        "--drain-timeout",
        "10",
        *extra,
    ]
    if kvstore:
        argv += ["--kvstore", kvstore]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(argv, cwd=REPO, env=env)
    return WorkerProcess(role, worker_id, f"127.0.0.1:{port}", metrics, proc)


def wait_serving(workers: list[WorkerProcess], timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(workers)
    while pending:
        for w in list(pending):
            if w.proc.poll() is not None:
                raise RuntimeError(f"{w.worker_id} exited with {w.proc.returncode} before serving")
            if w.health() == health_pb2.HealthCheckResponse.SERVING:
                pending.remove(w)
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"workers never became SERVING: {[w.worker_id for w in pending]}")
        time.sleep(0.3)


def colocated(engine: LLMEngine, requests: list[tuple[str, list[int], SamplingParams]]) -> dict[str, list[int]]:
    """Output tokens of each request, run to completion on the in-process reference engine."""
    for rid, prompt, params in requests:
        engine.add_request(rid, prompt, params)
    done: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = list(out.output_token_ids)
    return done


def active_blocks(worker: WorkerProcess) -> int:
    """KV blocks the worker's engine holds (GetLoad)."""
    with worker.channel() as ch:
        return worker.stub(ch).GetLoad(pb.LoadRequest(), timeout=10).active_kv_blocks


def wait_for(predicate, timeout_s: float) -> float:
    """Seconds until ``predicate()`` held; fails the test after ``timeout_s``."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout_s, "condition not reached in time"
        time.sleep(0.05)
    return time.monotonic() - start
