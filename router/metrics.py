"""Prometheus metrics of the router (names as docs/interfaces.md lists them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from router.worker_backend import UNARY_MAX_TOKENS

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class RouterMetrics:
    """One registry per app, so that several apps (tests, replicas) never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        p, r = "splitserve_router_", self.registry
        self.requests = Counter(p + "requests_total", "HTTP requests by route and status", ["route", "status"], registry=r)
        # A short non-streamed request (decoded in one unary call) has neither: its tokens arrive together.
        self.ttft = Histogram(
            p + "time_to_first_token_seconds",
            f"Time to first token (not counted: non-streamed requests of <= {UNARY_MAX_TOKENS} output tokens, answered whole)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            p + "inter_token_latency_seconds", "Time between streamed tokens", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.e2e = Histogram(p + "e2e_request_latency_seconds", "Request latency", buckets=_LATENCY_BUCKETS, registry=r)
        self.scheduling = Histogram(
            p + "scheduling_latency_seconds", "Time to decide placement", buckets=_FAST_BUCKETS, registry=r
        )
        self.prompt_tokens = Counter(p + "prompt_tokens_total", "Prompt tokens", registry=r)
        self.generation_tokens = Counter(p + "generation_tokens_total", "Generated tokens", registry=r)
        self.predicted_hits = Counter(
            p + "predicted_prefix_hit_tokens_total", "Prefix-hit tokens the scheduler expected", registry=r
        )
        self.realised_hits = Counter(p + "realised_prefix_hit_tokens_total", "Prefix-hit tokens the workers reported", registry=r)
        self.decisions = Counter(p + "decisions_total", "Placement decisions", ["role", "worker", "mode"], registry=r)
        self._decision_series: dict[tuple[str, str, str], Counter] = {}
        self.index_blocks = Gauge(p + "index_blocks", "Distinct KV blocks in the prefix index", registry=r)
        self.store_tier_blocks = Gauge(
            p + "index_store_tier_blocks",
            "KV blocks the prefix index files under the store tier (a hint with Mooncake)",
            registry=r,
        )
        self.ready_workers = Gauge(p + "ready_workers", "Workers in the pool", ["role"], registry=r)
        self.pool_saturation = Gauge(
            p + "pool_saturation_ratio",
            "Mean worker saturation per pool; 1 = at capacity (router/saturation.py)",
            ["role"],
            registry=r,
        )

    def count_decision(self, role: str, worker: str, mode: str) -> None:
        """decisions_total += 1, its labelled series looked up once (``labels()`` costs microseconds a call)."""
        key = (role, worker, mode)
        series = self._decision_series.get(key)
        if series is None:
            series = self._decision_series[key] = self.decisions.labels(*key)
        series.inc()
