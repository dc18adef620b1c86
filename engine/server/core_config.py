"""CoreConfig: what the engine-core process needs (picklable for multiprocessing spawn)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.config import EngineConfig


@dataclass(slots=True)
class CoreConfig:
    engine: EngineConfig
    role: str  # "prefill" | "decode"
    worker_id: str
    kvstore: str  # kvstore master host:port ("" = no store: colocated only)
    input_endpoint: str  # server -> core pipe (the server binds, the core connects)
    output_endpoint: str  # core -> server pipe
    kv_events_bind: str  # ZMQ PUB bind address, e.g. tcp://0.0.0.0:5557
    kv_snapshot_bind: str  # ZMQ REP bind address
    advertise_host: str  # replaces a wildcard host in the endpoints reported by GetLoad
    tp_size: int = 1
    kv_transport: str = "direct"  # prefill: offer a device-direct pull of its pool; "p2p": a send; "store": the store only
    kv_lease_s: float = 30.0  # prefill: longest hold of a request's blocks for a direct reader
    store_write_budget: int | None = None  # prefill with direct: store writes in flight beyond this are skipped
