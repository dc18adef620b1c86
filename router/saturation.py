"""Per-role saturation: the autoscaling signal of the prefill and the decode pool.

1.0 means "at the load the pool is sized for"; above 1.0 the pool needs more replicas,
well below it fewer. The router computes it from the same view its scheduler uses (the
polled load plus the work it has sent but not seen finish), so that the autoscaler and
the placement decisions never disagree about how busy a worker is.

- prefill worker: queued prompt tokens / ``prefill_saturation_tokens`` (the point where
  the scheduler stops sending it disaggregated work), or, with a TTFT SLO, predicted
  queueing time / SLO, whichever is larger.
- decode worker: KV usage, scaled up by the requests waiting for admission
  (``kv_usage * (1 + waiting / max(running, 1))``): KV is the decode pool's scarce
  resource, and a queue in front of a full batch is demand the pool cannot hold.

A pool's value is the mean over its available workers (the value a per-pod HPA target
averages to); None when no worker is available, so that no number is exported then.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from prometheus_client import Gauge

from router.scheduler import SchedulerConfig
from router.workers import Role, Worker


def prefill_saturation(worker: Worker, config: SchedulerConfig) -> float:
    queued = worker.queued_prefill_tokens
    by_tokens = queued / max(config.prefill_saturation_tokens, 1)
    if not config.ttft_slo_ms:
        return by_tokens
    rate = worker.prefill_rate_tps or config.default_prefill_rate_tps
    return max(by_tokens, (queued / rate) / (config.ttft_slo_ms / 1000))


def decode_saturation(worker: Worker) -> float:
    load = worker.load
    return load.kv_usage * (1 + load.waiting_requests / max(load.running_requests, 1))


def worker_saturation(worker: Worker, config: SchedulerConfig) -> float:
    return prefill_saturation(worker, config) if worker.role is Role.PREFILL else decode_saturation(worker)


def pool_saturation(workers: Sequence[Worker], config: SchedulerConfig) -> float | None:
    """Mean saturation of the available workers; None for a pool with none available."""
    values = [worker_saturation(w, config) for w in workers if w.available]
    return sum(values) / len(values) if values else None


def export_saturation(gauge: Gauge, role: Role, workers: Sequence[Worker], config: SchedulerConfig) -> None:
    """Set the pool's gauge, or drop its series while the pool has no available worker:
    an absent value lets an autoscaler hold (KEDA fallback) instead of reading "idle"."""
    value = pool_saturation(workers, config)
    if value is None:
        with contextlib.suppress(KeyError):
            gauge.remove(role.value)
    else:
        gauge.labels(role.value).set(value)
