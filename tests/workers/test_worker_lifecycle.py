"""Readiness, a crashed engine core, a SIGKILLed worker mid-stream, SIGTERM drain; KV events and metrics."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
import zmq
from grpc_health.v1 import health_pb2
from worker_processes import WorkerProcess, start_worker, wait_serving

from contracts.kv_events import BlockRemoved, BlockStored, decode_batch
from contracts.rpc import worker_pb2 as pb
from kvstore.event_publisher import request_snapshot

LONG = pb.SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def children(pid: int) -> list[int]:
    """Engine-core processes (multiprocessing spawn children) of a worker."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) != pid:
                        continue
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"spawn_main" in f.read():
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def spare(model_dir, store) -> Iterator[dict[str, WorkerProcess]]:
    """Decode workers this module may break: one per failure scenario."""
    workers = {name: start_worker("decode", model_dir, store.address, f"spare-{name}") for name in ("crash", "kill", "drain")}
    first_status = None
    deadline = time.monotonic() + 60
    while first_status is None and time.monotonic() < deadline:
        first_status = workers["crash"].health()
        time.sleep(0.05)
    workers["first_status"] = first_status
    wait_serving([w for k, w in workers.items() if k != "first_status"])
    yield workers
    for k, w in workers.items():
        if k != "first_status":
            w.stop()


def test_health_is_not_serving_until_the_model_is_loaded(spare) -> None:
    assert spare["first_status"] == NOT_SERVING


def test_engine_core_crash_fails_streams_promptly_and_marks_worker_unhealthy(spare) -> None:
    w = spare["crash"]
    with w.channel() as ch:
        stream = w.stub(ch).Generate(
            pb.GenerateRequest(request_id="c", prompt_token_ids=list(range(3, 40)), sampling=LONG), timeout=30
        )
        next(stream)
        (core,) = children(w.proc.pid)
        os.kill(core, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            list(stream)
        assert time.monotonic() - start < 5
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "engine-core process exited" in info.value.details()
    time.sleep(0.5)
    assert w.health() == NOT_SERVING


def test_decode_worker_killed_mid_stream_gives_a_clear_error_and_the_rest_keeps_serving(stack, spare) -> None:
    w = spare["kill"]
    core = children(w.proc.pid)
    with stack["prefill_a"].channel() as pc, w.channel() as ch:
        prompt = list(range(10, 60))
        first = (
            stack["prefill_a"]
            .stub(pc)
            .Prefill(pb.PrefillRequest(request_id="k", prompt_token_ids=prompt, sampling=LONG), timeout=30)
        )
        stream = w.stub(ch).Generate(
            pb.GenerateRequest(
                request_id="k",
                prompt_token_ids=prompt,
                sampling=LONG,
                kv_handle=first.kv_handle,
                first_token_id=first.first_token_id,
            ),
            timeout=30,
        )
        next(stream)
        w.proc.kill()
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            list(stream)
        assert time.monotonic() - start < 5
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # the same handle still decodes elsewhere: prefill worker and store are fine
    with stack["decode"].channel() as dc:
        again = [
            c
            for c in stack["decode"]
            .stub(dc)
            .Generate(
                pb.GenerateRequest(
                    request_id="k2",
                    prompt_token_ids=prompt,
                    sampling=pb.SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True),
                    kv_handle=first.kv_handle,
                    first_token_id=first.first_token_id,
                ),
                timeout=30,
            )
        ]
        assert again[-1].finish_reason == "length"
    deadline = time.monotonic() + 5  # the orphaned engine core notices and exits
    while any(alive(p) for p in core) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in core)


def test_sigterm_drains_in_flight_streams_and_refuses_new_ones(spare) -> None:
    w = spare["drain"]
    with w.channel() as ch:
        stub = w.stub(ch)
        stream = stub.Generate(pb.GenerateRequest(request_id="d", prompt_token_ids=list(range(3, 40)), sampling=LONG), timeout=60)
        tokens = list(next(stream).token_ids)
        w.proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Generate(pb.GenerateRequest(prompt_token_ids=[5, 6, 7], sampling=LONG), timeout=10))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "draining" in info.value.details()
        chunks = list(stream)
        tokens += [t for c in chunks for t in c.token_ids]
        assert chunks[-1].finish_reason == "length" and len(tokens) == LONG.max_tokens
    assert w.proc.wait(30) == 0


def test_kv_events_and_snapshot_name_the_decode_workers_cached_blocks(stack) -> None:
    decode = stack["decode"]
    with decode.channel() as ch:
        stub = decode.stub(ch)
        load = stub.GetLoad(pb.LoadRequest(), timeout=10)
        sub: zmq.Socket = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"decode-0")
        sub.connect(load.kv_events_endpoint)
        time.sleep(0.5)  # slow joiner
        list(
            stub.Generate(
                pb.GenerateRequest(
                    prompt_token_ids=list(range(300, 340)), sampling=pb.SamplingParams(temperature=0.0, max_tokens=2)
                ),
                timeout=30,
            )
        )
        assert sub.poll(5000)
        batch = decode_batch(sub.recv_multipart())
        sub.close()
    stored = [k for e in batch.events if isinstance(e, BlockStored) for k in e.keys]
    assert batch.topic == "decode-0" and stored
    assert all(e.medium == "cpu" for e in batch.events if isinstance(e, (BlockStored, BlockRemoved)))
    _, snapshot = request_snapshot(load.kv_snapshot_endpoint)
    assert set(stored) <= set(snapshot["cpu"])


def test_metrics_endpoint_exports_the_documented_worker_metrics(stack) -> None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{stack['decode'].metrics_port}/metrics", timeout=10).read().decode()
    for name in (
        "running_requests",
        "waiting_requests",
        "kv_usage_ratio",
        "queued_prefill_tokens",
        "prefix_cache_queries_total",
        "prefix_cache_hits_total",
        "prompt_tokens_total",
        "generation_tokens_total",
        "time_to_first_token_seconds",
        "inter_token_latency_seconds",
        "step_duration_seconds",
        "batch_size",
        "queue_seconds",
        "prefill_seconds",
        "kv_transfer_seconds",
        "kv_handoff_seconds",
        "kv_transfer_bytes_total",
    ):
        assert f"splitserve_worker_{name}" in text and 'role="decode"' in text, name
