"""The router's one config object."""

from __future__ import annotations

from dataclasses import dataclass, field

from router.scheduler import SchedulerConfig


@dataclass(slots=True)
class RouterConfig:
    model_dir: str
    served_model_name: str | None = None  # default: the model directory's name
    prefill: list[str] = field(default_factory=list)
    decode: list[str] = field(default_factory=list)
    discovery: str | None = None  # "k8s:namespace=NS,prefill-selector=SEL,decode-selector=SEL"
    kvstore_events: str | None = None  # the kvstore master's KV-event PUB endpoint, tcp://HOST:PORT
    kvstore_snapshot: str | None = None  # its snapshot REP endpoint (default: the events port + 1)
    api_keys: list[str] = field(default_factory=list)
    salt_per_api_key: bool = False  # each API key gets its own prefix cache (router/tenancy.py)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    model_fingerprint: str | None = None  # default: what the workers report
    block_size: int = 16
    max_n: int = 16
    max_body_bytes: int = 8 << 20
    body_timeout_s: float = 30.0  # the whole request body must arrive within this
    allow_client_chat_template: bool = False  # chat_template_kwargs.chat_template from clients (runs their Jinja)
    chat_template_timeout_s: float = 5.0
    health_interval_s: float = 1.0
    prefill_timeout_s: float = 120.0
    chunk_timeout_s: float = 60.0
    stall_timeout_s: float = 5.0  # silence tolerated from a worker that fails its health checks
    request_timeout_s: float = 600.0  # whole request, retries included; the workers' gRPC deadline
