"""Configuration of one serving benchmark run (one config object, see STYLE.md)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import Enum


class WorkloadKind(str, Enum):
    RANDOM = "random"
    SHARED_PREFIX = "shared-prefix"
    MULTI_TURN = "multi-turn"
    TRACE = "trace"


class PromptFormat(str, Enum):
    TOKENS = "tokens"  # `prompt` is a list of token ids (exact lengths)
    TEXT = "text"  # `prompt` is text of words (about one token per word)


@dataclass(slots=True)
class WorkloadConfig:
    kind: WorkloadKind = WorkloadKind.RANDOM
    num_requests: int = 100
    seed: int = 0
    # Token ids are drawn from [min_token_id, vocab_size); None: read from /v1/models.
    vocab_size: int | None = None
    min_token_id: int = 1000
    prompt_format: PromptFormat = PromptFormat.TOKENS
    # random: inclusive ranges
    input_len: tuple[int, int] = (128, 512)
    output_len: tuple[int, int] = (32, 128)
    # shared-prefix: num_groups x prefix_len shared tokens + question_len own tokens
    num_groups: int = 4
    prefix_len: int = 512
    question_len: int = 64
    # multi-turn: conversations of `turns` user turns of `turn_len` words each
    turns: int = 4
    turn_len: int = 64
    # trace replay (Mooncake format)
    trace_path: str | None = None
    trace_block_size: int = 512  # tokens per hash id in the trace file
    trace_time_scale: float = 1.0  # multiplies timestamps: 0.5 replays twice as fast
    trace_length_scale: float = 1.0  # multiplies input lengths and the block size
    trace_output_scale: float = 1.0  # multiplies output lengths


@dataclass(slots=True)
class SLO:
    """Per-request service-level objectives in seconds; None means no objective."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    def is_empty(self) -> bool:
        return self.ttft_s is None and self.tpot_s is None and self.e2e_s is None


@dataclass(slots=True)
class BenchConfig:
    base_url: str = "http://127.0.0.1:8000"
    model: str | None = None  # None: first model of /v1/models
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    # Arrivals: None = all at once for synthetic workloads, trace timestamps for a trace.
    request_rate: float | None = None
    burstiness: float = 1.0  # gamma shape; 1 = Poisson, <1 burstier, >1 smoother
    max_concurrency: int | None = None
    warmup: int = 0  # extra requests sent first and left out of every metric
    slo: SLO = field(default_factory=SLO)
    metrics_url: str | None = None  # router /metrics; default base_url + /metrics
    worker_metrics_urls: list[str] = field(default_factory=list)
    request_timeout_s: float = 600.0
    ignore_eos: bool = True  # exact output lengths; servers that do not know it ignore it
    progress: bool = True
    label: str = ""  # target name in comparisons


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s)?\s*$")


def parse_duration_s(text: str) -> float:
    """'500ms' -> 0.5, '2s' -> 2.0, '0.25' -> 0.25 (seconds)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"cannot read duration {text!r}: write e.g. 500ms or 1.5s")
    value = float(match.group(1))
    return value / 1000.0 if match.group(2) == "ms" else value


def parse_slo(text: str) -> SLO:
    """'ttft=500ms,tpot=50ms,e2e=10s' -> SLO (any subset of the three)."""
    slo = SLO()
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        name = name.strip().lower()
        if name not in ("ttft", "tpot", "e2e") or not value:
            raise ValueError(f"bad SLO term {part!r}: use ttft=, tpot= or e2e= with a duration")
        setattr(slo, f"{name}_s", parse_duration_s(value))
    return slo


def parse_range(text: str) -> tuple[int, int]:
    """'128' -> (128, 128); '128:512' -> (128, 512)."""
    low, _, high = text.partition(":")
    lo, hi = int(low), int(high or low)
    if lo < 1 or hi < lo:
        raise ValueError(f"bad length range {text!r}: want MIN[:MAX] with 1 <= MIN <= MAX")
    return lo, hi


def parse_rates(text: str) -> list[float | None]:
    """'1,2,4' -> [1.0, 2.0, 4.0]; 'inf' -> [None] (send everything at once)."""
    rates: list[float | None] = []
    for part in text.split(","):
        value = float(part)
        if value <= 0:
            raise ValueError(f"request rate must be > 0, got {part!r}")
        rates.append(None if math.isinf(value) else value)
    return rates
