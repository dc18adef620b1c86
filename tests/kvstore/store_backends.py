"""Both store backends as real processes on 127.0.0.1, for tests that run against each.

``start_backend`` gives a private ``BackendCluster`` (whose ``address`` opens either backend)
for tests that kill a node (``kill_node``) or fill the memory; the shared fixtures
``backend_cluster`` and ``mooncake_url`` are in conftest.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass

from kvstore_processes import Cluster, start_cluster

from kvstore import mooncake_processes

BACKENDS = ("ours", "mooncake")


@dataclass(slots=True)
class BackendCluster:
    backend: str
    address: str  # what open_store takes
    ours: Cluster | None = None
    mooncake: mooncake_processes.MooncakeCluster | None = None

    def node_pids(self) -> list[int]:
        if self.ours is not None:
            return [n.proc.pid for n in self.ours.nodes]
        assert self.mooncake is not None
        return [n.pid for n in self.mooncake.nodes]

    def kill_node(self, index: int) -> None:
        """SIGKILL one storage node: its blocks are gone without a goodbye."""
        procs: list[subprocess.Popen] = [n.proc for n in self.ours.nodes] if self.ours else self.mooncake.nodes  # type: ignore[union-attr]
        os.kill(procs[index].pid, signal.SIGKILL)
        procs[index].wait()

    def wait_until_node_dropped(self, n_left: int, timeout_s: float = 10.0) -> None:
        """Until the master stops placing blocks on the killed node."""
        if self.ours is not None:
            self.ours.wait_for_nodes(n_left, timeout_s)
        else:
            time.sleep(MOONCAKE_CLIENT_TTL_S)  # the master drops a silent node after client_ttl (callers poll further)

    def stop(self) -> None:
        if self.ours is not None:
            self.ours.stop()
        if self.mooncake is not None:
            self.mooncake.stop()


MOONCAKE_CLIENT_TTL_S = 2


def start_backend(backend: str, n_nodes: int = 2, node_bytes: int = 32 << 20) -> BackendCluster:
    if backend == "ours":
        cluster = start_cluster(n_nodes, capacity=str(node_bytes), heartbeat_timeout="1.5s")
        return BackendCluster(backend, cluster.master.address, ours=cluster)
    mc = mooncake_processes.start_cluster(n_nodes, node_bytes, client_ttl_s=MOONCAKE_CLIENT_TTL_S, lease_ttl_ms=500)
    return BackendCluster(backend, mc.url, mooncake=mc)
