"""`splitserve bench` against a real `splitserve up` stack: a scaled Mooncake trace replay."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.serve.config import SLO, BenchConfig, WorkloadConfig, WorkloadKind
from bench.serve.runner import run_benchmark

# The first 40 requests of ../shared/data/traces/mooncake_synthetic_trace.jsonl (Apache-2.0, Mooncake FAST'25).
TRACE = Path(__file__).resolve().parents[1] / "data" / "mooncake_trace_head40.jsonl"


def test_trace_replay_against_the_stack_measures_every_request(stack):
    workload = WorkloadConfig(
        kind=WorkloadKind.TRACE,
        num_requests=16,
        seed=3,
        vocab_size=384,
        min_token_id=10,
        trace_path=str(TRACE),
        trace_time_scale=0.05,
        trace_length_scale=1 / 256,
        trace_output_scale=0.02,
    )
    config = BenchConfig(
        base_url=stack["url"],
        model=stack["served_model_name"],
        workload=workload,
        slo=SLO(ttft_s=30.0),
        progress=False,
        request_timeout_s=120,
    )
    result = asyncio.run(run_benchmark(config))
    s = result.summary
    assert (s.completed, s.failed) == (16, 0), [r.error for r in result.records if r.error]
    assert s.ttft_s.count == 16 and 0 < s.ttft_s.p50 <= s.e2e_s.p50
    assert s.total_output_tokens == sum(r.output_tokens for r in result.records) > 16
    assert s.goodput is not None and 0 < s.goodput <= s.request_throughput
    # read from the router's /metrics before and after the run
    assert s.prefix_hit_rate is not None and 0 <= s.prefix_hit_rate <= 1


def test_bench_serve_cli_needs_only_the_base_url(stack, tmp_path):
    """The README's `splitserve bench serve --base-url URL --workload random ...`: model name and vocab
    size come from the router's /v1/models (only the lengths are shrunk for the tiny model and CI time)."""
    import json
    import subprocess

    from e2e_stack import CLI, ENV

    argv = ["bench", "serve", "--base-url", stack["url"], "--workload", "random", "--num-requests", "4",
            "--max-concurrency", "2", "--min-token-id", "10", "--input-len", "16:32", "--output-len", "4:8",
            "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(CLI + argv, env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "bench.json").read_text())[0]["summary"]
    assert (summary["completed"], summary["failed"]) == (4, 0)
