"""The GAIE endpoint picker: a real Envoy ext_proc gRPC client gets the scheduler's choice."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from grpc_tools import protoc

from contracts.ports import free_port
from contracts.rpc.envoy import base_pb2
from contracts.rpc.envoy import external_processor_pb2 as ep
from contracts.rpc.envoy import external_processor_pb2_grpc as ep_grpc
from kvstore.block_key import block_keys
from router.config import RouterConfig
from router.discovery import Change, DiscoveryEvent
from router.ext_proc import DESTINATION, MODE_HEADER, PREFILL_HEADER, pick, start_picker
from router.openai_api import RouterState
from router.scheduler import SchedulerConfig
from router.workers import Role, WorkerLoad

REPO = pathlib.Path(__file__).resolve().parents[2]
TARGET_PORT = 8000
FINGERPRINT = "fp-test"
# addresses the pool only knows about: the picker never dials a worker
IDLE, BUSY, PREFILL = "127.0.0.2:50081", "127.0.0.3:50081", "127.0.0.4:50071"


def add_worker(state: RouterState, role: Role, address: str, **load: Any) -> None:
    state.pool.apply(DiscoveryEvent(Change.ADDED, role, address))
    state.pool.apply(DiscoveryEvent(Change.READY, role, address))
    worker = state.pool.workers[address]
    worker.healthy = True
    worker.update_load(WorkerLoad(worker_id=f"w-{address}", role=role.value, model_fingerprint=FINGERPRINT, **load))


@pytest.fixture
async def picker(model_dir: pathlib.Path) -> AsyncIterator[tuple[RouterState, ep_grpc.ExternalProcessorStub]]:
    config = RouterConfig(model_dir=str(model_dir), served_model_name="default", model_fingerprint=FINGERPRINT,
                          scheduler=SchedulerConfig(colocate_threshold_tokens=8))  # fmt: skip
    state = RouterState(config)
    server, port = await start_picker(state, "127.0.0.1", 0, target_port=TARGET_PORT)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield state, ep_grpc.ExternalProcessorStub(channel)
    finally:
        await channel.close()
        await server.stop(None)


def headers_message(end_of_stream: bool = False, subset: list[str] | None = None) -> ep.ProcessingRequest:
    request = ep.ProcessingRequest(request_headers=ep.HttpHeaders(
        headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=":path", raw_value=b"/v1/completions")]),
        end_of_stream=end_of_stream,
    ))  # fmt: skip
    if subset is not None:
        hint = struct_pb2.Struct()
        hint.update({"x-gateway-destination-endpoint-subset": subset})
        request.metadata_context.filter_metadata["envoy.lb.subset_hint"].CopyFrom(hint)
    return request


async def exchange(stub: ep_grpc.ExternalProcessorStub, *messages: ep.ProcessingRequest) -> list[ep.ProcessingResponse]:
    async def requests() -> AsyncIterator[ep.ProcessingRequest]:
        for message in messages:
            yield message

    return [reply async for reply in stub.Process(requests(), timeout=10)]


async def route(
    stub: ep_grpc.ExternalProcessorStub, body: dict | bytes, subset: list[str] | None = None
) -> ep.ProcessingResponse:
    """Headers then a buffered body, as Envoy sends them; returns the answer to the body."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    replies = await exchange(
        stub, headers_message(subset=subset), ep.ProcessingRequest(request_body=ep.HttpBody(body=raw, end_of_stream=True))
    )
    assert len(replies) == 2 and replies[0].WhichOneof("response") == "request_headers"
    assert replies[1].WhichOneof("response") in ("request_body", "immediate_response")
    return replies[1]


def set_headers(reply: ep.ProcessingResponse) -> dict[str, str]:
    common = getattr(reply, reply.WhichOneof("response")).response
    return {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}


def error_of(reply: ep.ProcessingResponse) -> tuple[int, dict]:
    assert reply.WhichOneof("response") == "immediate_response", reply
    return reply.immediate_response.status.code, json.loads(reply.immediate_response.body)


async def test_picker_answers_with_the_decode_worker_the_routers_scheduler_chooses(picker) -> None:
    state, stub = picker
    add_worker(state, Role.DECODE, BUSY, running_requests=12, kv_usage=0.9, active_kv_blocks=900, total_kv_blocks=1000)
    add_worker(state, Role.DECODE, IDLE, running_requests=0, kv_usage=0.0, total_kv_blocks=1000)
    body = {"model": "default", "prompt": "hi", "max_tokens": 4}
    expected = pick(state, state.tokenizer.encode("hi"), frozenset())
    reply = await route(stub, body)
    headers = set_headers(reply)
    assert headers[DESTINATION] == f"127.0.0.2:{TARGET_PORT}" == f"{expected.decode_worker.split(':')[0]}:{TARGET_PORT}"
    assert headers[MODE_HEADER] == "colocated" and PREFILL_HEADER not in headers
    lb = json_format.MessageToDict(reply.dynamic_metadata)
    assert lb == {"envoy.lb": {DESTINATION: f"127.0.0.2:{TARGET_PORT}"}}
    assert reply.request_body.response.clear_route_cache
    # nothing stays charged on the workers: the gateway, not this router, runs the request
    assert all(w.inflight_requests == 0 and w.inflight_prefill_tokens == 0 for w in state.pool.workers.values())


async def test_the_worker_holding_the_prompts_prefix_wins_over_an_emptier_one(picker) -> None:
    state, stub = picker
    add_worker(state, Role.DECODE, IDLE, running_requests=0, total_kv_blocks=1000)
    add_worker(state, Role.DECODE, BUSY, running_requests=1, total_kv_blocks=1000)
    prompt = "the quick brown fox jumps over the lazy dog " * 12
    ids = state.tokenizer.encode(prompt)
    state.index.store(f"w-{BUSY}", block_keys(ids, FINGERPRINT, state.config.block_size))
    headers = set_headers(await route(stub, {"prompt": prompt}))
    assert headers[DESTINATION] == f"127.0.0.3:{TARGET_PORT}"


async def test_a_long_uncached_prompt_is_placed_disaggregated_and_names_its_prefill_worker(picker) -> None:
    state, stub = picker
    add_worker(state, Role.DECODE, IDLE, total_kv_blocks=1000)
    add_worker(state, Role.PREFILL, PREFILL, total_kv_blocks=1000)
    chat = {"messages": [{"role": "user", "content": "tell me everything about paged attention " * 4}]}
    headers = set_headers(await route(stub, chat))
    assert headers[MODE_HEADER] == "disaggregated"
    assert headers[PREFILL_HEADER] == PREFILL  # the gRPC address a serving side dials for Prefill
    assert headers[DESTINATION] == f"127.0.0.2:{TARGET_PORT}"


async def test_the_gateways_subset_hint_limits_the_candidates(picker) -> None:
    state, stub = picker
    add_worker(state, Role.DECODE, BUSY, running_requests=12, kv_usage=0.9, total_kv_blocks=1000)
    add_worker(state, Role.DECODE, IDLE, total_kv_blocks=1000)
    reply = await route(stub, {"prompt": "hi"}, subset=[f"127.0.0.3:{TARGET_PORT}"])
    assert set_headers(reply)[DESTINATION] == f"127.0.0.3:{TARGET_PORT}"
    status, body = error_of(await route(stub, {"prompt": "hi"}, subset=["10.9.9.9:8000"]))
    assert status == 503 and body["error"]["code"] == "no_workers"


async def test_without_a_decode_worker_the_gateway_answers_503_with_an_openai_error(picker) -> None:
    state, stub = picker
    add_worker(state, Role.PREFILL, PREFILL)
    status, body = error_of(await route(stub, {"prompt": "hi"}))
    assert status == 503
    assert "no healthy decode worker" in body["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "malformed JSON body"),
        (b"[1, 2]", 400, "JSON object"),
        ({"model": "gpt-4", "prompt": "hi"}, 404, "does not exist"),
        ({"prompt": {"text": "hi"}}, 400, "prompt"),
        ({"messages": "hello"}, 400, "messages"),
        ({"prompt": "hi", "max_tokens": -3}, 400, "max_tokens"),
    ],
)
async def test_bad_bodies_get_an_immediate_client_error(picker, body: dict | bytes, status: int, fragment: str) -> None:
    state, stub = picker
    add_worker(state, Role.DECODE, IDLE)
    code, error = error_of(await route(stub, body))
    assert code == status and fragment in error["error"]["message"]


async def test_a_request_without_a_body_is_placed_on_its_headers_and_the_response_passes_through(picker) -> None:
    state, stub = picker
    add_worker(state, Role.DECODE, IDLE)
    replies = await exchange(
        stub, headers_message(end_of_stream=True),
        ep.ProcessingRequest(response_headers=ep.HttpHeaders()),
        ep.ProcessingRequest(response_body=ep.HttpBody(body=b"{}", end_of_stream=True)),
    )  # fmt: skip
    assert [r.WhichOneof("response") for r in replies] == ["request_headers", "response_headers", "response_body"]
    assert set_headers(replies[0])[DESTINATION] == f"127.0.0.2:{TARGET_PORT}"
    assert not replies[1].response_headers.response.header_mutation.set_headers


def test_checked_in_envoy_stubs_match_a_fresh_generation(tmp_path: pathlib.Path) -> None:
    protos = sorted(str(p) for p in (REPO / "proto" / "contracts" / "rpc" / "envoy").glob("*.proto"))
    assert len(protos) == 4
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = [
        "protoc",
        f"-I{REPO / 'proto'}",
        f"-I{include}",
        f"--python_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
    ]
    assert protoc.main([*args, *protos]) == 0
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    stale = [str(r) for r in generated if not (REPO / r).exists() or (REPO / r).read_bytes() != (tmp_path / r).read_bytes()]
    assert stale == [], f"run `make protos` and commit: {stale}"


async def test_the_router_app_serves_the_picker_for_its_lifetime(model_dir: pathlib.Path) -> None:
    """`splitserve router --ext-proc-port`: the picker shares the app's worker view, and stops with it."""
    from router.ext_proc import serve_picker_with
    from router.openai_api import create_app

    port = free_port()
    config = RouterConfig(model_dir=str(model_dir), served_model_name="default", model_fingerprint=FINGERPRINT)
    app = create_app(config, start_workers=False)
    serve_picker_with(app, "127.0.0.1", port, target_port=TARGET_PORT)
    async with app.router.lifespan_context(app):
        add_worker(app.state.router, Role.DECODE, IDLE)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await route(ep_grpc.ExternalProcessorStub(channel), {"prompt": "hi"})
        assert set_headers(reply)[DESTINATION] == f"127.0.0.2:{TARGET_PORT}"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as stopped:
            await route(ep_grpc.ExternalProcessorStub(channel), {"prompt": "hi"})
        assert stopped.value.code() == grpc.StatusCode.UNAVAILABLE
