"""The router's HTTP edge refuses what it cannot serve safely, with a 4xx OpenAI error body:
lone surrogates, a non-boolean ``stream``, non-finite numbers, unsupported parameters,
client-sent chat templates (unless the operator allows them), slow bodies; and it is not
ready while no decode worker is."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn
from fastapi.testclient import TestClient

from contracts.ports import free_port
from router.config import RouterConfig
from router.openai_api import create_app
from router.tenancy import cache_salt_for

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}]}
HEAVY_TEMPLATE = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}x"


@pytest.fixture(scope="module")
def client(model_dir):
    app = create_app(RouterConfig(str(model_dir), served_model_name="tiny"), start_workers=False)
    with TestClient(app) as c:
        yield c


def _error(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def test_a_lone_surrogate_in_content_is_a_400(client) -> None:
    body = '{"model": "tiny", "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    error = _error(client.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}), 400)
    assert "not valid Unicode" in error["message"]
    prompt = '{"model": "tiny", "prompt": "x\\udfffy"}'
    _error(client.post("/v1/completions", content=prompt, headers={"Content-Type": "application/json"}), 400)


@pytest.mark.parametrize("patch", [{"stream": "yes"}, {"stream": 1}])
def test_stream_must_be_a_boolean(client, patch) -> None:
    assert _error(client.post("/v1/chat/completions", json={**CHAT, **patch}), 400)["param"] == "stream"


@pytest.mark.parametrize("raw", ['"repetition_penalty": 1e999', '"temperature": NaN', '"top_p": -Infinity'])
def test_non_finite_numbers_are_a_400(client, raw) -> None:
    body = '{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], ' + raw + "}"
    _error(client.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}), 400)


@pytest.mark.parametrize("patch", [{"suffix": "end"}, {"best_of": 3}])
def test_unsupported_parameters_are_a_400_that_names_them(client, patch) -> None:
    body = {"model": "tiny", "prompt": "hi", **patch}
    assert next(iter(patch)) in _error(client.post("/v1/completions", json=body), 400)["message"]


def test_a_client_chat_template_is_refused_by_default(client) -> None:
    body = {**CHAT, "chat_template_kwargs": {"chat_template": HEAVY_TEMPLATE}}
    start = time.monotonic()
    error = _error(client.post("/v1/chat/completions", json=body), 400)
    assert "not allowed" in error["message"] and time.monotonic() - start < 2.0


def test_an_allowed_heavy_template_times_out_and_health_keeps_answering(model_dir) -> None:
    config = RouterConfig(str(model_dir), served_model_name="tiny", allow_client_chat_template=True,
                          chat_template_timeout_s=0.5)  # fmt: skip
    with TestClient(create_app(config, start_workers=False)) as c:
        body = {**CHAT, "chat_template_kwargs": {"chat_template": HEAVY_TEMPLATE}}
        results: dict[str, object] = {}
        slow = threading.Thread(target=lambda: results.update(chat=c.post("/v1/chat/completions", json=body)))
        slow.start()
        time.sleep(0.1)
        start = time.monotonic()
        assert c.get("/health").status_code == 200
        health_s = time.monotonic() - start
        slow.join(10)
    assert health_s < 0.4  # the template renders off the event loop
    assert "took over" in _error(results["chat"], 400)["message"]


def test_an_allowed_client_template_renders_in_the_sandbox(model_dir) -> None:
    config = RouterConfig(str(model_dir), served_model_name="tiny", allow_client_chat_template=True)
    template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    escape = "{{ messages.__class__.__mro__ }}"
    with TestClient(create_app(config, start_workers=False)) as c:
        ok = c.post("/tokenize", json={"model": "tiny", "messages": CHAT["messages"]})
        assert ok.status_code == 200
        sandboxed = c.post("/v1/chat/completions", json={**CHAT, "chat_template_kwargs": {"chat_template": escape}})
        rendered = c.post(
            "/v1/chat/completions", json={**CHAT, "max_tokens": 1, "chat_template_kwargs": {"chat_template": template}}
        )
    assert "chat template failed" in _error(sandboxed, 400)["message"]  # the sandbox refuses dunder access
    assert rendered.status_code == 503  # rendered fine; only then no worker to run it (this test starts none)


def test_ready_fails_while_no_decode_worker_is_ready(client) -> None:
    resp = client.get("/ready")
    assert resp.status_code == 503 and resp.json()["ready_workers"]["decode"] == 0
    assert client.get("/health").status_code == 200  # liveness stays up: restarting the router would not help


def test_a_body_that_trickles_in_too_slowly_gets_408_and_the_connection_closes(model_dir) -> None:
    app = create_app(RouterConfig(str(model_dir), served_model_name="tiny", body_timeout_s=0.5), start_workers=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"model\": ")  # fmt: skip
            start = time.monotonic()
            reply = conn.recv(4096)
            assert b" 408 " in reply.split(b"\r\n")[0] and time.monotonic() - start < 3.0
    finally:
        server.should_exit = True
        thread.join(10)


def test_salts_differ_per_api_key_only_when_the_operator_asks() -> None:
    assert cache_salt_for(None, "sk-a", per_api_key=False) == ""
    assert cache_salt_for("t", "sk-a", per_api_key=False) == cache_salt_for("t", "sk-b", per_api_key=False)
    a, b = cache_salt_for("t", "sk-a", per_api_key=True), cache_salt_for("t", "sk-b", per_api_key=True)
    assert a != b and "sk-a" not in a  # the key itself never enters block keys or events
