"""The generation routes answered without FastAPI's routing give what FastAPI's routing gives.

Two apps from one config: one as shipped (POST /v1/completions, /v1/chat/completions and
/v1/responses answered by `router.direct_routes`), one with that lane emptied so that
FastAPI answers the same routes. Every request below, good or bad, must get the same
status and the same body from both.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from router.config import RouterConfig
from router.direct_routes import DirectRoutes
from router.openai_api import create_app

KEY = "sk-test"
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}]}
JSON = "application/json"

CASES = [
    # (path, body, content type or None for no header, extra headers)
    ("/v1/chat/completions", json.dumps(CHAT).encode(), JSON),  # valid: no workers, a 503
    ("/v1/completions", b'{"model": "tiny", "prompt": [1, 2, 3]}', "application/json; charset=utf-8"),
    ("/v1/completions", b'{"model": "tiny", "prompt": "x"}', "application/vnd.api+json"),
    ("/v1/completions", b'{"model": "tiny", "prompt": "x"}', None),  # strict content type: not parsed
    ("/v1/completions", b'{"model": "tiny", "prompt": "x"}', "text/plain"),
    ("/v1/completions", b"prompt=hello", "application/x-www-form-urlencoded"),
    ("/v1/completions", b"", JSON),
    ("/v1/chat/completions", b'{"model": "tiny", "messages": [', JSON),
    ("/v1/completions", b"[1, 2, 3]", JSON),
    ("/v1/completions", b'"just a string"', JSON),
    ("/v1/completions", b'{"model": "tiny"}', JSON),
    ("/v1/completions", b'{"model": "tiny", "prompt": "x", "suffix": "y"}', JSON),
    ("/v1/completions", b'{"model": "tiny", "prompt": "\\ud800"}', JSON),
    ("/v1/completions", b'{"model": "other", "prompt": "x"}', JSON),
    ("/v1/completions", b'{"model": "tiny", "prompt": [999999]}', JSON),
    ("/v1/completions", b'{"model": "tiny", "prompt": "x", "max_tokens": 0}', JSON),
    ("/v1/chat/completions", json.dumps({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}).encode(), JSON),
    ("/v1/chat/completions", json.dumps({**CHAT, "temperature": "hot"}).encode(), JSON),
    ("/v1/responses", b'{"model": "tiny", "input": "Hello"}', JSON),
    ("/v1/responses", b'{"model": "tiny"}', JSON),
]


def _client(model_dir, direct: bool) -> TestClient:
    config = RouterConfig(str(model_dir), served_model_name="tiny", api_keys=[KEY], max_body_bytes=64 * 1024)
    app = create_app(config, start_workers=False)
    if not direct:
        (lane,) = [m for m in app.user_middleware if m.cls is DirectRoutes]
        routes = lane.kwargs["routes"]
        assert isinstance(routes, dict) and routes
        routes.clear()  # every route falls through to FastAPI
    return TestClient(app, headers={"Authorization": f"Bearer {KEY}"})


@pytest.fixture(scope="module")
def clients(model_dir):
    with _client(model_dir, direct=True) as direct, _client(model_dir, direct=False) as fastapi:
        yield direct, fastapi


@pytest.mark.parametrize("path, body, content_type", CASES)
def test_same_answer_as_fastapi_routing(clients, path, body, content_type):
    headers = {"content-type": content_type} if content_type else {}
    direct, fastapi = (c.post(path, content=body, headers=headers) for c in clients)
    assert direct.status_code == fastapi.status_code, (direct.text, fastapi.text)
    assert direct.json() == fastapi.json()
    assert 400 <= direct.status_code < 600 and set(direct.json()["error"]) == {"message", "type", "param", "code"}


def test_same_answer_without_a_key_or_with_a_wrong_one(clients):
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer nope"}):
        direct, fastapi = (c.post("/v1/chat/completions", json=CHAT, headers=headers) for c in clients)
        assert direct.status_code == fastapi.status_code == 401
        assert direct.json() == fastapi.json()


def test_bytes_that_are_not_utf8_are_a_400(clients):
    direct, fastapi = (c.post("/v1/completions", content=b'{"prompt": "\xff\xfe"}', headers={"content-type": JSON})
                       for c in clients)  # fmt: skip
    # FastAPI answers a generic "error parsing the body"; the direct lane says what is wrong
    assert direct.status_code == fastapi.status_code == 400
    assert direct.json()["error"]["code"] == "invalid_json"


def test_other_methods_and_paths_still_reach_fastapi(clients):
    direct, _ = clients
    assert direct.get("/v1/chat/completions").status_code == 405
    assert direct.post("/tokenize", json={"prompt": "Hello"}).json()["count"] > 0
    assert "/v1/completions" in direct.get("/openapi.json").json()["paths"]
