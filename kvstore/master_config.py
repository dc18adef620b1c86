"""Configuration of the kvstore master (one config object per component)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class MasterConfig:
    host: str = "0.0.0.0"
    port: int = 50051
    metrics_port: int | None = 9100
    events_port: int | None = 5560  # ZMQ PUB; the snapshot REP socket is events_port + 1
    heartbeat_timeout_s: float = 10.0
    put_timeout_s: float = 30.0  # an uncommitted put is reclaimed after this long
    lease_ttl_s: float = 2.0  # a get keeps the object's bytes in place this long
    high_watermark: float = 0.95  # start evicting above this fraction of a node's capacity
    low_watermark: float = 0.85  # ... and stop here
    max_key_length: int = 1024
    tick_interval_s: float = 0.2
