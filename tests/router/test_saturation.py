"""The per-role saturation the autoscalers scale on (router/saturation.py)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge

from router.saturation import export_saturation, pool_saturation, worker_saturation
from router.scheduler import SchedulerConfig
from router.workers import Role, Worker, WorkerLoad


def prefill(queued: int, rate: float | None = None, available: bool = True) -> Worker:
    worker = Worker("p:1", Role.PREFILL, WorkerLoad(queued_prefill_tokens=queued), healthy=available)
    worker.prefill_rate_tps = rate
    return worker


def decode(kv_usage: float, running: int = 0, waiting: int = 0) -> Worker:
    return Worker("d:1", Role.DECODE, WorkerLoad(kv_usage=kv_usage, running_requests=running, waiting_requests=waiting))


def test_prefill_saturation_is_queued_tokens_over_the_schedulers_saturation_point() -> None:
    config = SchedulerConfig(prefill_saturation_tokens=10_000)
    assert worker_saturation(prefill(0), config) == 0
    assert worker_saturation(prefill(5_000), config) == 0.5
    assert worker_saturation(prefill(20_000), config) == 2.0


def test_prefill_saturation_counts_work_the_router_sent_but_the_worker_has_not_reported() -> None:
    worker = prefill(0)
    worker.charge(10_000, 0)
    assert worker_saturation(worker, SchedulerConfig(prefill_saturation_tokens=10_000)) == 1.0


def test_with_a_ttft_slo_prefill_saturation_is_predicted_queueing_time_over_the_slo() -> None:
    config = SchedulerConfig(prefill_saturation_tokens=1_000_000, ttft_slo_ms=500)
    assert worker_saturation(prefill(4_000, rate=4_000), config) == 2.0  # 1 s of queued work against 0.5 s
    # before any rate is measured the scheduler's default rate stands in
    assert worker_saturation(prefill(8_000), config) == (8_000 / config.default_prefill_rate_tps) / 0.5


def test_decode_saturation_is_kv_usage_raised_by_the_waiting_queue() -> None:
    # kv_usage is a float32 in worker.proto
    assert worker_saturation(decode(0.5, running=4), SchedulerConfig()) == pytest.approx(0.5)
    assert worker_saturation(decode(0.9, running=4, waiting=4), SchedulerConfig()) == pytest.approx(1.8)


def test_pool_saturation_averages_available_workers_and_is_none_without_any() -> None:
    config = SchedulerConfig(prefill_saturation_tokens=100)
    assert pool_saturation([prefill(100), prefill(0), prefill(10_000, available=False)], config) == 0.5
    assert pool_saturation([prefill(100, available=False)], config) is None
    assert pool_saturation([], config) is None


def test_the_gauge_disappears_while_a_pool_has_no_available_worker() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("saturation", "test", ["role"], registry=registry)
    config = SchedulerConfig()
    export_saturation(gauge, Role.DECODE, [decode(0.25, running=1)], config)
    assert registry.get_sample_value("saturation", {"role": "decode"}) == 0.25
    export_saturation(gauge, Role.DECODE, [], config)
    assert registry.get_sample_value("saturation", {"role": "decode"}) is None
    export_saturation(gauge, Role.PREFILL, [], config)  # never set: removing it is not an error


def test_the_saturation_point_and_slo_are_router_flags(monkeypatch) -> None:
    import uvicorn

    import router.openai_api
    from splitserve.cli import build_parser

    seen: dict[str, Any] = {}
    monkeypatch.setattr(router.openai_api, "create_app", lambda config: seen.setdefault("config", config))
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: None)
    args = build_parser().parse_args(["router", "--model", "m", "--decode", "127.0.0.1:1",
                                      "--prefill-saturation-tokens", "4096", "--ttft-slo-ms", "800"])  # fmt: skip
    args.func(args)
    assert seen["config"].scheduler.prefill_saturation_tokens == 4096
    assert seen["config"].scheduler.ttft_slo_ms == 800
