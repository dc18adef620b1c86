"""Configuration of a kvstore storage node."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class NodeConfig:
    master: str
    capacity: int
    host: str = "0.0.0.0"
    port: int = 50061
    advertise_host: str | None = None  # what clients dial; defaults to host (or 127.0.0.1 for 0.0.0.0)
    metrics_port: int | None = 9101
    read_chunk_size: int = 1 << 20
    data_port: int | None = 0  # raw-TCP data plane (kvstore/data_plane.py); 0: any free port, None: off
    hash_lane: bool | None = None  # data plane hashes beside its socket threads (kvstore/hashed_io.py); None: by core count
