"""Start a Mooncake Store cluster on one machine: ``mooncake_master`` plus memory nodes.

Both programs come with the mooncake wheel (kvstore/mooncake_store.py). A memory node
is Mooncake's standalone client (``mooncake_client``): it mounts ``segment`` bytes of
its memory into the cluster and holds the blocks; the workers join as pure clients
(segment=0) and move bytes to and from the nodes. ``splitserve up --kvstore-backend
mooncake``, the tests and bench/kvstore_bench.py use these argv builders; the Helm chart
runs the same programs in pods.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TypedDict, Unpack

from contracts.ports import free_port
from kvstore.mooncake_store import INSTALL_HINT
from kvstore.mooncake_url import SCHEME

MIN_SEGMENT_BYTES = 16 << 20  # mooncake_client refuses (and aborts on) anything smaller


def program(name: str) -> str:
    """Path of a program the mooncake wheel installs next to this interpreter (or on PATH)."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    path = beside if os.access(beside, os.X_OK) else shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} or on PATH: {INSTALL_HINT}")
    return path


class MasterOptions(TypedDict, total=False):
    """The keyword options of master_argv, passed through by start_cluster."""

    lease_ttl_ms: int
    client_ttl_s: int
    eviction_high_watermark: float
    etcd_endpoints: str


def master_argv(
    host: str,
    port: int,
    metrics_port: int,
    *,
    lease_ttl_ms: int = 5000,
    client_ttl_s: int = 10,
    eviction_high_watermark: float = 0.9,
    etcd_endpoints: str = "",
) -> list[str]:
    """mooncake_master serving RPC on host:port; with ``etcd_endpoints`` it runs in HA mode."""
    argv = [
        program("mooncake_master"),
        f"--rpc_address={host}",
        f"--rpc_port={port}",
        f"--metrics_host={host}",
        f"--metrics_port={metrics_port}",
        f"--default_kv_lease_ttl={lease_ttl_ms}",
        f"--client_ttl={client_ttl_s}",
        f"--eviction_high_watermark_ratio={eviction_high_watermark}",
        "--rpc_thread_num=2",
        "--enable_metric_reporting=false",
    ]
    if etcd_endpoints:
        argv += ["--enable_ha=true", f"--etcd_endpoints={etcd_endpoints}"]
    return argv


def node_argv(
    host: str, port: int, master: str, segment_bytes: int, protocol: str = "tcp", metadata: str = "P2PHANDSHAKE"
) -> list[str]:
    """mooncake_client adding ``segment_bytes`` of its memory to the cluster of ``master``."""
    return [
        program("mooncake_client"),
        f"--host={host}",
        f"--port={port}",
        f"--master_server_address={master}",
        f"--metadata_server={metadata}",
        f"--global_segment_size={segment_bytes}",
        f"--protocol={protocol}",
    ]


def wait_for_port(proc: subprocess.Popen, host: str, port: int, timeout_s: float = 20.0) -> None:
    """Until ``host:port`` accepts connections; RuntimeError if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{_program(proc)} exited with {proc.returncode} before serving on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{_program(proc)} did not serve on {host}:{port} within {timeout_s:g} s")


def _program(proc: subprocess.Popen) -> str:
    """The program a child runs (this module starts each from an argv list)."""
    args = proc.args
    return os.fsdecode(args if isinstance(args, str | bytes | os.PathLike) else args[0])


@dataclass(slots=True)
class MooncakeCluster:
    """A master and its memory nodes as child processes; ``url`` is what workers open."""

    host: str
    master_port: int
    master: subprocess.Popen
    nodes: list[subprocess.Popen] = field(default_factory=list)
    log_dir: str | None = None

    @property
    def master_address(self) -> str:
        return f"{self.host}:{self.master_port}"

    @property
    def url(self) -> str:
        return f"{SCHEME}://{self.master_address}?metadata=p2p&protocol=tcp"

    def add_node(self, segment_bytes: int) -> subprocess.Popen:
        if segment_bytes < MIN_SEGMENT_BYTES:
            raise ValueError(f"a Mooncake memory node needs at least 16 MiB, got {segment_bytes} bytes")
        port = free_port(self.host)
        proc = _spawn(node_argv(self.host, port, self.master_address, segment_bytes), self.log_dir, f"node{len(self.nodes)}")
        wait_for_port(proc, self.host, port)
        self.nodes.append(proc)
        return proc

    def stop(self) -> None:
        for proc in [*self.nodes, self.master]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.nodes, self.master]:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass(frozen=True, slots=True)
class LocalPlan:
    """argv and ports of a one-machine Mooncake cluster, for a launcher that supervises its own processes."""

    master_argv: list[str]
    master_port: int
    master_metrics_port: int  # mooncake_master's Prometheus /metrics
    node_argv: list[str]
    node_port: int
    url: str  # what workers pass to --kvstore


def plan_local(segment_bytes: int, host: str = "127.0.0.1") -> LocalPlan:
    """A master and one memory node of ``segment_bytes`` on ``host`` (free ports picked now)."""
    if segment_bytes < MIN_SEGMENT_BYTES:
        raise ValueError(f"a Mooncake memory node needs at least 16 MiB, got {segment_bytes} bytes")
    master_port, metrics_port, node_port = free_port(host), free_port(host), free_port(host)
    master = f"{host}:{master_port}"
    return LocalPlan(
        master_argv=master_argv(host, master_port, metrics_port),
        master_port=master_port,
        master_metrics_port=metrics_port,
        node_argv=node_argv(host, node_port, master, segment_bytes),
        node_port=node_port,
        url=f"{SCHEME}://{master}?metadata=p2p&protocol=tcp",
    )


def _spawn(argv: list[str], log_dir: str | None, name: str) -> subprocess.Popen:
    # Mooncake logs (glog) to stderr at INFO; keep it in a file when asked, else drop it.
    if not log_dir:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    with open(os.path.join(log_dir, f"mooncake-{name}.log"), "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def start_cluster(
    n_nodes: int = 1,
    segment_bytes: int = 256 << 20,
    host: str = "127.0.0.1",
    log_dir: str | None = None,
    **master_options: Unpack[MasterOptions],
) -> MooncakeCluster:
    """Start a master and ``n_nodes`` memory nodes on ``host``; call ``stop()`` when done."""
    port = free_port(host)
    master = _spawn(master_argv(host, port, free_port(host), **master_options), log_dir, "master")
    cluster = MooncakeCluster(host, port, master, log_dir=log_dir)
    try:
        wait_for_port(master, host, port)
        for _ in range(n_nodes):
            cluster.add_node(segment_bytes)
    except BaseException:
        cluster.stop()
        raise
    return cluster
