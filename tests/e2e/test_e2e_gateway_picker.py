"""The GAIE data path with real processes, the gateway played by the test.

What an Envoy gateway does for a request to an InferencePool: ask the endpoint picker
(the central router's ext_proc port) where to send it, then forward the unchanged
OpenAI request to that ``ip:targetPort``. There the decode pod's own router (the chart's
``inferencePool.podRouter``) serves it on its decode worker.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import httpx
import pytest
from e2e_stack import start_router, start_worker

from contracts.ports import free_port
from contracts.rpc.envoy import external_processor_pb2 as ep
from contracts.rpc.envoy import external_processor_pb2_grpc as ep_grpc

pytestmark = pytest.mark.slow


def ask_picker(address: str, body: bytes) -> dict[str, str]:
    """One ext_proc exchange as Envoy runs it (headers, then the buffered body); the headers it sets."""
    messages = [
        ep.ProcessingRequest(request_headers=ep.HttpHeaders()),
        ep.ProcessingRequest(request_body=ep.HttpBody(body=body, end_of_stream=True)),
    ]
    with grpc.insecure_channel(address) as channel:
        replies = list(ep_grpc.ExternalProcessorStub(channel).Process(iter(messages), timeout=30))
    assert replies[1].WhichOneof("response") == "request_body", replies[1]
    mutation = replies[1].request_body.response.header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


def test_the_gateway_sends_a_request_where_the_picker_says_and_the_decode_pod_serves_it(model_dir: str, logs: Path) -> None:
    decode, decode_grpc, _ = start_worker("decode", model_dir, "", "gw-decode", logs)
    procs = [decode]
    try:
        pod_router, pod_url = start_router("gw-pod-router", model_dir, [], [decode_grpc], logs)
        procs.append(pod_router)
        target_port = int(pod_url.rsplit(":", 1)[1])
        picker_port = free_port()
        central, _ = start_router("gw-central-router", model_dir, [], [decode_grpc], logs,
                                  "--ext-proc-port", str(picker_port), "--ext-proc-target-port", str(target_port))  # fmt: skip
        procs.append(central)

        body = json.dumps({"model": "default", "prompt": "Gateways route by", "max_tokens": 6, "temperature": 0}).encode()
        headers = ask_picker(f"127.0.0.1:{picker_port}", body)
        assert headers["x-gateway-destination-endpoint"] == f"127.0.0.1:{target_port}"
        assert headers["x-splitserve-placement"] == "colocated"  # one decode worker, no prefill pool

        reply = httpx.post(f"http://{headers['x-gateway-destination-endpoint']}/v1/completions", content=body,
                           headers={"content-type": "application/json"}, timeout=120)  # fmt: skip
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] == 6
    finally:
        for proc in reversed(procs):
            proc.stop()
