"""The load generator against a real tiny OpenAI-compatible SSE server on 127.0.0.1.

The server stands in for a deployment: it waits FIRST_DELAY before the first chunk
and GAP between chunks, streams CHUNKS chunks of one token each, then usage.
"""

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web

from bench.serve.config import SLO, BenchConfig, WorkloadConfig, WorkloadKind
from bench.serve.runner import run_benchmark
from contracts.ports import free_port

FIRST_DELAY, GAP, CHUNKS = 0.10, 0.03, 5


def _sse(obj) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def make_app(state: dict) -> web.Application:
    async def stream(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        state["bodies"].append(body)
        if body.get("max_tokens") == 13:  # a request the test wants to fail
            return web.json_response({"error": {"message": "boom"}}, status=500)
        chunks = 1 if body.get("max_tokens") == 1 else CHUNKS  # one token without text of its own
        chat = request.path.endswith("chat/completions")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await asyncio.sleep(FIRST_DELAY)
        if chat:  # a role-only first chunk carries no token and must not count as one
            await response.write(_sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}))
        for i in range(chunks):
            if i:
                await asyncio.sleep(GAP)
            text = f" t{i}" if chunks > 1 else ""
            choice = {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}
            await response.write(_sse({"choices": [choice]}))
        prompt_tokens = len(body["prompt"]) if "prompt" in body else 7
        await response.write(_sse({"choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": chunks}}))
        await response.write(b"data: [DONE]\n\n")
        state["served"] += 1
        return response

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "tiny", "object": "model", "vocab_size": 4096}]})

    async def metrics(_: web.Request) -> web.Response:
        n = state["served"]  # every served request: 100 prompt tokens, 40 of them cached
        text = f"splitserve_router_prompt_tokens_total {100 * n}\nsplitserve_router_realised_prefix_hit_tokens_total {40 * n}\n"
        return web.Response(text=text)

    app = web.Application()
    app.router.add_post("/v1/completions", stream)
    app.router.add_post("/v1/chat/completions", stream)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/metrics", metrics)
    return app


@pytest.fixture
async def server():
    state = {"bodies": [], "served": 0}
    runner = web.AppRunner(make_app(state))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", state
    await runner.cleanup()


def _config(url: str, **kw) -> BenchConfig:
    workload = kw.pop("workload", WorkloadConfig(kind=WorkloadKind.RANDOM, num_requests=6, input_len=(8, 16), output_len=(5, 5)))
    return BenchConfig(base_url=url, workload=workload, progress=False, **kw)


async def test_records_and_latencies_match_the_server_delays(server):
    url, state = server
    result = await run_benchmark(_config(url, warmup=2, max_concurrency=3, slo=SLO(ttft_s=5.0)))
    assert result.model == "tiny"
    assert len(result.records) == 6  # warm-up left out
    assert len(state["bodies"]) == 8  # ... but sent
    body = state["bodies"][-1]
    assert body["stream"] and body["stream_options"] == {"include_usage": True}
    assert all(4096 > t >= 1000 for b in state["bodies"] for t in b["prompt"])  # vocab from /v1/models
    for r in result.records:
        assert r.success and r.output_tokens == CHUNKS and len(r.chunk_times) == CHUNKS
        assert r.send_time <= r.first_token_time <= r.chunk_times[-1] <= r.end_time
    s = result.summary
    assert FIRST_DELAY <= s.ttft_s.p50 < FIRST_DELAY + 0.08
    assert GAP * 0.9 <= s.itl_s.mean < GAP + 0.03
    assert s.itl_s.count == 6 * (CHUNKS - 1)
    assert GAP * 0.9 <= s.tpot_s.mean < GAP + 0.04
    assert s.slo_attainment == 1.0
    assert s.prefix_hit_rate == pytest.approx(0.4)  # from the /metrics deltas of the measured phase


async def test_max_concurrency_bounds_requests_in_flight(server):
    url, _ = server
    result = await run_benchmark(_config(url, max_concurrency=2))
    events = sorted([(r.send_time, 1) for r in result.records] + [(r.end_time, -1) for r in result.records])
    in_flight = peak = 0
    for _, step in events:
        in_flight += step
        peak = max(peak, in_flight)
    assert peak == 2
    # 6 requests, 2 at a time, each ~0.22 s: about three rounds
    assert result.summary.duration_s >= 3 * (FIRST_DELAY + (CHUNKS - 1) * GAP)


async def test_request_rate_spaces_out_sends(server):
    url, _ = server
    result = await run_benchmark(_config(url, request_rate=20.0))
    sends = sorted(r.send_time for r in result.records)
    assert sends[-1] - sends[0] > 0.05  # not all at once (expected 5 gaps x 50 ms)


async def test_server_errors_are_recorded_not_raised(server):
    url, _ = server
    workload = WorkloadConfig(kind=WorkloadKind.RANDOM, num_requests=3, input_len=(4, 4), output_len=(13, 13))
    result = await run_benchmark(_config(url, workload=workload, slo=SLO(ttft_s=1.0)))
    assert all(r.error and r.error.startswith("HTTP 500") for r in result.records)
    assert result.summary.failed == 3 and result.summary.slo_attainment == 0.0


async def test_a_one_token_answer_without_text_is_a_success_not_a_failure(server):
    url, _ = server
    workload = WorkloadConfig(kind=WorkloadKind.RANDOM, num_requests=2, input_len=(4, 4), output_len=(1, 1))
    result = await run_benchmark(_config(url, workload=workload))
    assert [(r.success, r.output_tokens) for r in result.records] == [(True, 1), (True, 1)]
    assert all(FIRST_DELAY <= r.first_token_time - r.send_time <= r.end_time - r.send_time for r in result.records)


async def test_multi_turn_sends_growing_history_with_the_answers(server):
    url, state = server
    workload = WorkloadConfig(kind=WorkloadKind.MULTI_TURN, num_requests=3, turns=3, turn_len=4, output_len=(5, 5))
    result = await run_benchmark(_config(url, workload=workload))
    assert [(r.index, r.turn) for r in result.records] == [(0, 0), (0, 1), (0, 2)]
    assert all(r.success and len(r.chunk_times) == CHUNKS for r in result.records)  # role chunk not a token
    last = state["bodies"][-1]["messages"]
    assert [m["role"] for m in last] == ["user", "assistant", "user", "assistant", "user"]
    assert last[1]["content"] == " t0 t1 t2 t3 t4"


def _wait_for_port(port: int, deadline_s: float = 20.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"fixture server did not listen on {port}")


def test_cli_sweep_prints_table_and_writes_json_and_plots(tmp_path):
    # The CLI runs its own event loop, so its server runs in a subprocess.
    port = free_port()
    script = (
        "import sys\n"
        "from aiohttp import web\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_serving_loadgen import make_app\n"
        "web.run_app(make_app({'bodies': [], 'served': 0}), host='127.0.0.1', port=int(sys.argv[2]), print=None)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(Path(__file__).parent), str(port)])
    try:
        _wait_for_port(port)
        out = tmp_path / "out"
        cmd = [
            sys.executable, "-m", "splitserve.cli", "bench", "serve", "--base-url", f"http://127.0.0.1:{port}",
            "--num-requests", "4", "--input-len", "8", "--output-len", "5", "--request-rate", "50,inf",
            "--slo", "ttft=1s", "--out", str(out), "--no-progress",
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "TTFT p99 (ms)" in done.stdout and "rate=50" in done.stdout and "rate=inf" in done.stdout
        data = json.loads((out / "bench.json").read_text())
        assert [d["summary"]["completed"] for d in data] == [4, 4]
        assert [d["summary"]["slo_attainment"] for d in data] == [1.0, 1.0]
        assert {p.name for p in out.glob("*.png")} == {"latency_cdf.png", "ttft_over_time.png", "throughput_vs_rate.png"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
