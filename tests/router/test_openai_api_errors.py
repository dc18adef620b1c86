"""The router's HTTP edge without workers: every bad request is a 4xx OpenAI error body."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from router.config import RouterConfig
from router.openai_api import create_app

KEY = "sk-test"


@pytest.fixture(scope="module")
def client(model_dir):
    app = create_app(
        RouterConfig(str(model_dir), served_model_name="tiny", api_keys=[KEY], max_body_bytes=64 * 1024), start_workers=False
    )
    with TestClient(app, headers={"Authorization": f"Bearer {KEY}"}) as c:
        yield c


def assert_openai_error(resp, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}]}


def test_malformed_json_is_a_400(client):
    resp = client.post(
        "/v1/chat/completions", content=b'{"model": "tiny", "messages": [', headers={"Content-Type": "application/json"}
    )
    assert_openai_error(resp, 400, code="invalid_json")


@pytest.mark.parametrize(
    "patch, param",
    [
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 3.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -7}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"presence_penalty": 9}, "presence_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"top_logprobs": 50}, "top_logprobs"),
        ({"n": 0}, "n"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"stop": ["a"] * 17}, "stop"),
    ],
)
def test_bad_values_name_the_offending_field(client, patch, param):
    assert_openai_error(client.post("/v1/chat/completions", json={**CHAT, **patch}), 400, param=param)


def test_missing_required_field_is_a_400(client):
    assert_openai_error(client.post("/v1/completions", json={"model": "tiny"}), 400, param="prompt")


def test_unknown_model_is_a_404_model_not_found(client):
    resp = client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-17"})
    assert_openai_error(resp, 404, param="model", code="model_not_found")


def test_prompt_longer_than_the_context_is_a_400(client):
    resp = client.post("/v1/completions", json={"model": "tiny", "prompt": list(range(200))})
    assert_openai_error(resp, 400, param="prompt", code="context_length_exceeded")
    resp = client.post("/v1/completions", json={"model": "tiny", "prompt": "Hello", "max_tokens": 500})
    assert_openai_error(resp, 400, param="max_tokens", code="context_length_exceeded")


def test_too_many_choices_is_a_400(client):
    assert_openai_error(client.post("/v1/chat/completions", json={**CHAT, "n": 1000}), 400, param="n")


def test_completion_logprobs_above_the_limit_is_a_400(client):
    resp = client.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "logprobs": 21})
    assert_openai_error(resp, 400, param="logprobs")


def test_body_over_the_size_limit_is_a_413(client):
    resp = client.post("/v1/completions", json={"model": "tiny", "prompt": "x" * 100_000})
    assert_openai_error(resp, 413, code="request_too_large")


def test_missing_or_wrong_api_key_is_a_401(client):
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer nope"}):
        resp = client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert_openai_error(resp, 401, code="invalid_api_key")
    assert client.get("/health", headers={"Authorization": ""}).status_code == 200


def test_valid_request_without_workers_is_a_503_not_a_hang(client):
    assert_openai_error(client.post("/v1/chat/completions", json=CHAT), 503, code="no_workers")


def test_unknown_route_and_wrong_method_are_openai_errors(client):
    assert_openai_error(client.get("/v1/nothing"), 404)
    assert_openai_error(client.get("/v1/chat/completions"), 405)


def test_models_lists_the_served_model(client):
    data = client.get("/v1/models").json()["data"]
    assert [(m["id"], m["object"], m["max_model_len"]) for m in data] == [("tiny", "model", 128)]


def test_tokenize_and_detokenize_roundtrip(client):
    tokens = client.post("/tokenize", json={"prompt": "Hello world!"}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0 and tokens["max_model_len"] == 128
    assert client.post("/detokenize", json={"tokens": tokens["tokens"]}).json() == {"prompt": "Hello world!"}
    assert_openai_error(client.post("/detokenize", json={"tokens": [10**6]}), 400, param="tokens")


def test_tokenize_applies_the_chat_template(client):
    resp = client.post("/tokenize", json={"messages": [{"role": "user", "content": "Hello"}]}).json()
    text = client.post("/detokenize", json={"tokens": resp["tokens"]}).json()["prompt"]
    assert "Hello" in text and "assistant" in text


def test_openapi_document_lists_the_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    for route in ("/v1/completions", "/v1/chat/completions", "/v1/models", "/tokenize", "/detokenize", "/health"):
        assert route in paths
    assert "ChatCompletionRequest" in client.get("/openapi.json").text


def test_metrics_use_the_documented_names(client):
    text = client.get("/metrics").text
    for name in ("requests_total", "time_to_first_token_seconds", "decisions_total", "index_blocks", "ready_workers"):
        assert f"splitserve_router_{name}" in text
