"""Prometheus metrics of the KV store (names from docs/interfaces.md).

Master and node may share one process (embedded mode), so every metric carries a
``component`` label instead of being registered twice.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_P = "splitserve_kvstore_"
CAPACITY = Gauge(_P + "capacity_bytes", "Bytes of storage capacity", ["component"])
USED = Gauge(_P + "used_bytes", "Bytes allocated to objects (committed or in flight)", ["component"])
OBJECTS = Gauge(_P + "objects", "Committed objects", ["component"])
HITS = Counter(_P + "hits_total", "Keys found by get", ["component"])
MISSES = Counter(_P + "misses_total", "Keys not found by get", ["component"])
EVICTIONS = Counter(_P + "evictions_total", "Objects evicted to stay under the watermark", ["component"])
RECEIVED = Counter(
    _P + "received_bytes_total",
    "Object bytes stored: component=master counts every commit (gRPC and shared memory), node the bytes that crossed "
    "its network paths (gRPC and the raw-TCP data plane)",
    ["component"],
)
SENT = Counter(
    _P + "sent_bytes_total",
    "Object bytes served to readers: component=master counts every read (gRPC and shared memory), node the bytes that "
    "crossed its network paths (gRPC and the raw-TCP data plane)",
    ["component"],
)
OPERATION_SECONDS = Histogram(
    _P + "operation_seconds",
    "Latency of one store operation (a batch counts once)",
    ["component", "op"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
