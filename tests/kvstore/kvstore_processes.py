"""Real store processes for tests: a master and storage nodes on 127.0.0.1."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import grpc

from contracts.ports import free_port
from contracts.rpc import kvstore_pb2 as pb
from contracts.rpc import kvstore_pb2_grpc as pb_grpc

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(slots=True)
class StoreProcess:
    proc: subprocess.Popen
    address: str
    metrics_port: int

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=15)
        for path in glob.glob(f"/dev/shm/splitserve-kv-{self.proc.pid}-*"):
            os.unlink(path)  # a SIGKILLed node cannot remove its own segment
        return code


def start(args: list[str]) -> StoreProcess:
    metrics_port = free_port()
    cmd = [sys.executable, "-m", "kvstore", *args, "--host", "127.0.0.1", "--port", "0", "--metrics-port", str(metrics_port)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"{args[0]} did not start: {line!r}")
    return StoreProcess(proc, line.rsplit(" ", 1)[-1].strip(), metrics_port)


@dataclass(slots=True)
class Cluster:
    master: StoreProcess
    nodes: list[StoreProcess] = field(default_factory=list)

    def stats(self) -> pb.StatsReply:
        with grpc.insecure_channel(self.master.address) as channel:
            return pb_grpc.MasterStub(channel).Stats(pb.StatsRequest(), timeout=5)

    def wait_for_nodes(self, n: int, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.stats().nodes) != n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"expected {n} registered nodes, have {len(self.stats().nodes)}")
            time.sleep(0.05)

    def stop(self) -> list[int]:
        return [p.stop() for p in [*self.nodes, self.master]]


def start_cluster(n_nodes: int, capacity: str = "32MiB", heartbeat_timeout: str = "1.5s", put_timeout: str = "30s") -> Cluster:
    master = start(
        ["kvstore-master", "--events-port", "0", "--heartbeat-timeout", heartbeat_timeout, "--put-timeout", put_timeout]
    )
    cluster = Cluster(master)
    for _ in range(n_nodes):
        cluster.nodes.append(start(["kvstore-node", "--master", master.address, "--capacity", capacity]))
    cluster.wait_for_nodes(n_nodes)
    return cluster
