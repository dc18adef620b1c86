"""Serving metrics from request records: pure functions, no I/O.

Definitions (as in vLLM's benchmark_serving / SGLang's bench_serving):
- TTFT = first output chunk time - send time.
- E2E = end of stream - send time.
- TPOT = (E2E - TTFT) / (output_tokens - 1); requests with one output token have none.
- ITL = gaps between consecutive output chunks (a chunk may carry several tokens).
- Percentiles use linear interpolation between closest ranks, exactly numpy's
  default (`method="linear"`): rank = q/100 * (n - 1).
- Goodput = requests per second that meet every given SLO (DistServe); SLO
  attainment = those requests / all measured requests (failures count as misses).
- Duration = first send to last end among the measured requests.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from bench.serve.client import RequestRecord
from bench.serve.config import SLO

PERCENTILES = (50, 90, 99)


def percentile(values: list[float], q: float) -> float:
    """q-th percentile with linear interpolation (numpy's default); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = q / 100.0 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(slots=True)
class Distribution:
    count: int
    mean: float
    p50: float
    p90: float
    p99: float


def distribution(values: list[float]) -> Distribution:
    mean = sum(values) / len(values) if values else math.nan
    p50, p90, p99 = (percentile(values, q) for q in PERCENTILES)
    return Distribution(len(values), mean, p50, p90, p99)


def ttft(record: RequestRecord) -> float | None:
    return None if record.first_token_time is None else record.first_token_time - record.send_time


def e2e(record: RequestRecord) -> float | None:
    return None if record.end_time is None else record.end_time - record.send_time


def tpot(record: RequestRecord) -> float | None:
    first, total = ttft(record), e2e(record)
    if first is None or total is None or record.output_tokens < 2:
        return None
    return (total - first) / (record.output_tokens - 1)


def itls(record: RequestRecord) -> list[float]:
    times = record.chunk_times
    return [b - a for a, b in zip(times, times[1:])]


def meets_slo(record: RequestRecord, slo: SLO) -> bool:
    """True when the request succeeded and is within every objective that is set."""
    if not record.success:
        return False
    checks = ((slo.ttft_s, ttft(record)), (slo.tpot_s, tpot(record)), (slo.e2e_s, e2e(record)))
    # A missing value (TPOT of a one-token answer) cannot break its objective.
    return all(limit is None or value is None or value <= limit for limit, value in checks)


@dataclass(slots=True)
class Summary:
    completed: int
    failed: int
    duration_s: float
    request_throughput: float  # completed requests / s
    output_throughput: float  # output tokens / s
    input_throughput: float  # prompt tokens / s
    total_output_tokens: int
    ttft_s: Distribution
    tpot_s: Distribution
    itl_s: Distribution
    e2e_s: Distribution
    goodput: float | None  # requests / s meeting every SLO; None without SLOs
    slo_attainment: float | None
    prefix_hit_rate: float | None = None  # filled from server metrics when available

    def to_dict(self) -> dict:
        return asdict(self)


def measured_duration(records: list[RequestRecord]) -> float:
    ends = [r.end_time for r in records if r.end_time is not None]
    if not records or not ends:
        return 0.0
    return max(ends) - min(r.send_time for r in records)


def summarize(records: list[RequestRecord], slo: SLO, duration_s: float | None = None) -> Summary:
    done = [r for r in records if r.success]
    duration = measured_duration(records) if duration_s is None else duration_s

    def rate(x: float) -> float:
        return x / duration if duration > 0 else math.nan

    out_tokens = sum(r.output_tokens for r in done)
    good = sum(meets_slo(r, slo) for r in records)
    return Summary(
        completed=len(done),
        failed=len(records) - len(done),
        duration_s=duration,
        request_throughput=rate(len(done)),
        output_throughput=rate(out_tokens),
        input_throughput=rate(sum(r.prompt_len for r in done)),
        total_output_tokens=out_tokens,
        ttft_s=distribution([v for r in done if (v := ttft(r)) is not None]),
        tpot_s=distribution([v for r in done if (v := tpot(r)) is not None]),
        itl_s=distribution([gap for r in done for gap in itls(r)]),
        e2e_s=distribution([v for r in done if (v := e2e(r)) is not None]),
        goodput=None if slo.is_empty() else rate(good),
        slo_attainment=None if slo.is_empty() or not records else good / len(records),
    )


def prefix_hit_rate(hit_tokens_delta: float, query_tokens_delta: float) -> float | None:
    """Fraction of prompt tokens served from cache over the run; None if nothing was queried."""
    return hit_tokens_delta / query_tokens_delta if query_tokens_delta > 0 else None
