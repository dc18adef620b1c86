"""Many simulated workers in one process: one grpc.aio server and one engine task per worker."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from simulator.clock import SimClock
from simulator.decode import SimDecodeWorker
from simulator.node import SimNode
from simulator.prefill import SimPrefillWorker
from simulator.profile import Profile
from simulator.service import SimWorker, add_services


@dataclass(slots=True)
class ClusterConfig:
    profile: Profile
    prefill: int = 8
    decode: int = 8
    speedup: float = 1.0
    block_size: int = 16
    fingerprint: str = "sim-llama-3.1-8b"
    host: str = "127.0.0.1"
    capacity_blocks: int | None = None  # default: the profile's KV capacity
    tick_s: float = 0.01  # longest wall time a decode worker runs steps without looking at arrivals
    flush_s: float = 0.25  # wall time between streamed chunks of one request


@dataclass(slots=True)
class SimWorkerHandle:
    node: SimNode
    worker: SimWorker
    address: str
    server: grpc.aio.Server
    task: asyncio.Task


@dataclass(slots=True)
class SimCluster:
    config: ClusterConfig
    clock: SimClock
    workers: list[SimWorkerHandle] = field(default_factory=list)

    @classmethod
    async def start(cls, config: ClusterConfig) -> SimCluster:
        cluster = cls(config, SimClock(config.speedup))
        for role, count in (("prefill", config.prefill), ("decode", config.decode)):
            for i in range(count):
                cluster.workers.append(await cluster._start_worker(f"sim-{role}-{i}", role))
        return cluster

    async def _start_worker(self, worker_id: str, role: str) -> SimWorkerHandle:
        c = self.config
        node = SimNode.create(worker_id, role, c.profile, self.clock, c.fingerprint, c.block_size, c.host, c.capacity_blocks)
        worker: SimWorker = SimPrefillWorker(node) if role == "prefill" else SimDecodeWorker(node, c.tick_s, c.flush_s)
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 64 << 20)])
        add_services(server, node, worker)
        port = server.add_insecure_port(f"{c.host}:0")
        await server.start()
        task = asyncio.create_task(worker.run(), name=f"{worker_id}-engine")
        return SimWorkerHandle(node, worker, f"{c.host}:{port}", server, task)

    def addresses(self, role: str) -> list[str]:
        return [w.address for w in self.workers if w.node.role == role]

    def describe(self) -> dict:
        return {"prefill": self.addresses("prefill"), "decode": self.addresses("decode"), "speedup": self.config.speedup,
                "profile": self.config.profile.name, "fingerprint": self.config.fingerprint}  # fmt: skip

    def write_state(self, path: Path) -> None:
        path.write_text(json.dumps(self.describe(), indent=2) + "\n")

    async def stop(self) -> None:
        for w in self.workers:
            w.task.cancel()
        await asyncio.gather(*(w.server.stop(grace=None) for w in self.workers), return_exceptions=True)
        await asyncio.gather(*(w.task for w in self.workers), return_exceptions=True)
        for w in self.workers:
            w.node.close()
        self.workers.clear()
