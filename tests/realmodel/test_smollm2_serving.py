"""Through the router, SmolLM2's answers equal the offline engine's, token for token.

One `splitserve up --demo-request` stack (kvstore, 1 prefill, 1 decode) whose router sends every request
through the prefill worker (disaggregated: --colocate-threshold 0), plus a second router over the decode
worker alone (colocated: the decode worker prefills). Both must give the offline engine's greedy tokens,
and the demo request (what `make demo` prints) must answer its question.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from e2e_stack import Proc, start_router, start_up, wait_until
from realmodel_prompts import NEW_TOKENS, QUESTIONS, chat

from contracts.sampling import SamplingParams
from engine.llm import LLM
from router.tokenization import PromptTokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def offline(smollm2_dir: Path) -> list[list[int]]:
    """The offline engine's greedy tokens for every question (the reference)."""
    prompts = [PromptTokenizer.from_dir(smollm2_dir).apply_chat_template(chat(q)) for q in QUESTIONS]
    llm = LLM(str(smollm2_dir), device="cpu", kv_cache_bytes=64 << 20)
    try:
        outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True))
    finally:
        llm.engine.shutdown()
    return [o.output_token_ids for o in outs]


@pytest.fixture(scope="module")
def stack(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, dict[str, str]]]:
    logs = tmp_path_factory.mktemp("smollm2-serving")
    up, state = start_up("smollm2", logs, "--prefill", "1", "--decode", "1", "--colocate-threshold", "0",
                         "--demo-request")  # fmt: skip
    colocated = None
    try:
        colocated, url = start_router("router-colocated", str(smollm2_dir), [], state["decode"], logs)
        yield up, {"disaggregated": state["url"], "colocated": url}
    finally:
        if colocated is not None:
            colocated.stop()
        up.stop(grace_s=40)


def _answer_tokens(url: str, question: str) -> list[int]:
    body: dict[str, Any] = {
        "model": "default", "messages": chat(question), "max_tokens": NEW_TOKENS, "temperature": 0,
        "ignore_eos": True, "logprobs": True, "return_tokens_as_token_ids": True,
    }  # fmt: skip
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    return [int(item["token"].removeprefix("token_id:")) for item in reply.json()["choices"][0]["logprobs"]["content"]]


@pytest.fixture(scope="module")
def routers(stack: tuple[Proc, dict[str, str]]) -> dict[str, str]:
    return stack[1]


@pytest.mark.parametrize("path", ["disaggregated", "colocated"])
def test_router_answers_equal_offline_engine(routers: dict[str, str], offline: list[list[int]], path: str):
    with ThreadPoolExecutor(max_workers=len(QUESTIONS)) as pool:
        served = list(pool.map(lambda q: _answer_tokens(routers[path], q), QUESTIONS))
    for question, ours, reference in zip(QUESTIONS, served, offline):
        assert ours == reference, f"{path} answer to {question!r} differs from the offline engine"


def test_router_answers_the_capital_of_france(routers: dict[str, str]):
    body = {"model": "default", "messages": chat(QUESTIONS[0]), "max_tokens": 24, "temperature": 0}
    reply = httpx.post(f"{routers['disaggregated']}/v1/chat/completions", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    assert "Paris" in reply.json()["choices"][0]["message"]["content"]


def test_up_demo_request_prints_a_coherent_answer(stack: tuple[Proc, dict[str, str]]):
    up, _ = stack
    wait_until(lambda: "[up] What is the capital of France? ->" in up.tail(), 240, "demo answer printed", up)
    answer = next(line for line in up.tail().splitlines() if line.startswith("[up] What is the capital"))
    assert "Paris" in answer, answer


CAPITAL_SCHEMA = {
    "type": "object",
    "properties": {"country": {"type": "string", "maxLength": 20}, "capital": {"type": "string", "maxLength": 20}},
    "required": ["country", "capital"],
    "additionalProperties": False,
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                       "required": ["city"], "additionalProperties": False},
    },
}  # fmt: skip


@pytest.mark.parametrize("path", ["disaggregated", "colocated"])
def test_a_json_schema_answer_is_valid_and_right(routers: dict[str, str], path: str):
    """A trained model under the grammar: the JSON parses, follows the schema and names Paris."""
    body = {
        "model": "default", "max_tokens": 48, "temperature": 0,
        "messages": chat("What is the capital of France? Answer in JSON with the keys country and capital."),
        "response_format": {"type": "json_schema", "json_schema": {"name": "capital", "schema": CAPITAL_SCHEMA, "strict": True}},
    }  # fmt: skip
    reply = httpx.post(f"{routers[path]}/v1/chat/completions", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    answer = json.loads(reply.json()["choices"][0]["message"]["content"])
    assert set(answer) == {"country", "capital"}, answer
    assert "Paris" in answer["capital"], answer


@pytest.mark.parametrize("path", ["disaggregated", "colocated"])
def test_a_forced_tool_call_names_the_city_asked_about(routers: dict[str, str], path: str):
    body = {
        "model": "default", "max_tokens": 48, "temperature": 0, "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "messages": chat("What is the weather like in Paris today?"),
    }  # fmt: skip
    reply = httpx.post(f"{routers[path]}/v1/chat/completions", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    message = reply.json()["choices"][0]["message"]
    (call,) = message["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert "Paris" in json.loads(call["function"]["arguments"])["city"], call
