"""Worker metrics (docs/interfaces.md, `splitserve_worker_*`, label role = prefill | decode)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from contracts.core_messages import EngineLoad

_P = "splitserve_worker_"
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

RUNNING = Gauge(_P + "running_requests", "Requests in the running batch", ["role"])
WAITING = Gauge(_P + "waiting_requests", "Requests waiting for admission (or their KV)", ["role"])
KV_USAGE = Gauge(_P + "kv_usage_ratio", "Used KV blocks / total KV blocks", ["role"])
QUEUED_PREFILL = Gauge(_P + "queued_prefill_tokens", "Prompt tokens not yet computed", ["role"])
PREFIX_QUERIES = Counter(_P + "prefix_cache_queries", "Prompt tokens looked up in the local prefix cache", ["role"])
PREFIX_HITS = Counter(_P + "prefix_cache_hits", "Prompt tokens found in the local prefix cache", ["role"])
PROMPT_TOKENS = Counter(_P + "prompt_tokens", "Prompt tokens of finished requests", ["role"])
GENERATION_TOKENS = Counter(_P + "generation_tokens", "Tokens generated", ["role"])
TTFT = Histogram(_P + "time_to_first_token_seconds", "Request arrival to first token", ["role"], buckets=_LATENCY)
ITL = Histogram(_P + "inter_token_latency_seconds", "Time between streamed tokens", ["role"], buckets=_LATENCY)
STEP = Histogram(_P + "step_duration_seconds", "Engine step duration", ["role"], buckets=_LATENCY)
BATCH = Histogram(_P + "batch_size", "Requests scheduled per engine step", ["role"], buckets=_BATCH)
QUEUE = Histogram(
    _P + "queue_seconds",
    "Arrival at the engine core to the start of the first step that computes the request",
    ["role"],
    buckets=_LATENCY,
)
PREFILL = Histogram(_P + "prefill_seconds", "Prefill RPC duration (compute and KV write-out)", ["role"], buckets=_LATENCY)
KV_TRANSFER = Histogram(
    _P + "kv_transfer_seconds", "One batched KV move (transport = store | direct)", ["role", "transport"], buckets=_LATENCY
)
KV_HANDOFF = Histogram(
    _P + "kv_handoff_seconds",
    "A prefilled request's import reaching the decode engine -> its KV in the pool (transport = store | direct)",
    ["role", "transport"],
    buckets=_LATENCY,
)
KV_TRANSFER_BYTES = Counter(
    _P + "kv_transfer_bytes", "KV bytes moved out of (out) or into (in) this engine", ["role", "direction", "transport"]
)


class WorkerMetrics:
    """The metrics of one worker process, bound to its role."""

    def __init__(self, role: str) -> None:
        self.role = role
        self._last_queries = 0
        self._last_hits = 0

    def serve(self, port: int | None) -> None:
        if port is not None and port > 0:
            start_http_server(port)

    def step(self, seconds: float, batch_size: int) -> None:
        STEP.labels(self.role).observe(seconds)
        BATCH.labels(self.role).observe(batch_size)

    def transfer(self, transport: str, direction: str, nbytes: int, seconds: float) -> None:
        KV_TRANSFER.labels(self.role, transport).observe(seconds)
        KV_TRANSFER_BYTES.labels(self.role, direction, transport).inc(nbytes)

    def handoff(self, transport: str, seconds: float) -> None:
        KV_HANDOFF.labels(self.role, transport).observe(seconds)

    def load(self, load: EngineLoad) -> None:
        RUNNING.labels(self.role).set(load.running)
        WAITING.labels(self.role).set(load.waiting)
        KV_USAGE.labels(self.role).set(load.kv_usage)
        QUEUED_PREFILL.labels(self.role).set(load.queued_prefill_tokens)
        # the engine counts cumulatively; export the increase since the last report
        PREFIX_QUERIES.labels(self.role).inc(max(0, load.prefix_cache_queries - self._last_queries))
        PREFIX_HITS.labels(self.role).inc(max(0, load.prefix_cache_hits - self._last_hits))
        self._last_queries, self._last_hits = load.prefix_cache_queries, load.prefix_cache_hits

    def first_token(self, seconds: float) -> None:
        TTFT.labels(self.role).observe(seconds)

    def inter_token(self, seconds: float) -> None:
        ITL.labels(self.role).observe(seconds)

    def queued(self, seconds: float) -> None:
        QUEUE.labels(self.role).observe(seconds)

    def prefill(self, seconds: float) -> None:
        PREFILL.labels(self.role).observe(seconds)

    def finished(self, prompt_tokens: int, generated_tokens: int) -> None:
        PROMPT_TOKENS.labels(self.role).inc(prompt_tokens)
        GENERATION_TOKENS.labels(self.role).inc(generated_tokens)
