"""Schemathesis over the router's own OpenAPI document, against a live router (uvicorn,
real HTTP) in front of a stand-in decode worker: whatever the generated request, the
answer is never a 5xx. Bounded: a fixed number of examples per operation, no shrinking."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import httpx
import pytest
import schemathesis
import uvicorn
from grpc_health.v1 import health, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings

from contracts.ports import free_port
from contracts.rpc import worker_pb2 as pb
from contracts.rpc import worker_pb2_grpc as pb_grpc
from router.config import RouterConfig
from router.openai_api import create_app

EXAMPLES_PER_OPERATION = 30


class Decode(pb_grpc.DecodeServiceServicer):
    """Answers every Generate with two tokens, like a healthy decode worker."""

    def Generate(self, request, context):
        n = len(request.prompt_token_ids)
        yield pb.GenerateChunk(token_ids=[65, 66], finish_reason="length", prompt_tokens=n, completion_tokens=2)

    def Abort(self, request, context):
        return pb.AbortResponse(found=False)

    def GetLoad(self, request, context):
        return pb.WorkerLoad(worker_id="decode-fake", role="decode", total_kv_blocks=1000, block_size=16)


@pytest.fixture(scope="module")
def router_url(model_dir):
    worker = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_DecodeServiceServicer_to_server(Decode(), worker)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), worker)
    worker_port = worker.add_insecure_port("127.0.0.1:0")
    worker.start()
    port = free_port()
    app = create_app(RouterConfig(str(model_dir), served_model_name="tiny", decode=[f"127.0.0.1:{worker_port}"]))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        pytest.fail("the router never saw its stand-in decode worker")
    yield url
    server.should_exit = True
    thread.join(10)
    worker.stop(None)


@pytest.fixture(scope="module")
def api_schema(router_url):
    return schemathesis.openapi.from_url(f"{router_url}/openapi.json")


def test_no_generated_request_gets_a_server_error(api_schema, router_url) -> None:
    # hypothesis directly (schemathesis' pytest plugin does not run under pytest 9): each operation in turn
    server_errors: list[str] = []
    statuses: dict[int, int] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert any(op.path == "/v1/chat/completions" for op in operations)
    for operation in operations:

        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck), derandomize=True, database=None)  # fmt: skip
        @given(case=operation.as_strategy())
        def run(case) -> None:
            response = case.call(base_url=router_url, timeout=30)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code >= 500:
                server_errors.append(f"{case.method} {case.path} {case.body!r:.300} -> {response.status_code} "
                                     f"{response.text[:200]}")  # fmt: skip

        run()
    assert not server_errors, "\n".join(server_errors[:5])
    assert statuses.get(200) and statuses.get(400), statuses  # the run reached both the workers and the validators
    print(f"status codes over {sum(statuses.values())} generated requests: {dict(sorted(statuses.items()))}")
