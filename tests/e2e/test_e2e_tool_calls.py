"""Tool calling through a whole `splitserve up` stack with the official `openai` client.

The model has random weights: forced tool choices (named, required) make its answer a call
through the grammar, which is what these tests check; parsing free-form calls is covered by
tests/router/test_tool_calls.py.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

pytestmark = pytest.mark.slow

PARAMS = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                           "days": {"type": "integer", "minimum": 1, "maximum": 7}},
          "required": ["city", "days"], "additionalProperties": False}  # fmt: skip
TOOLS = [
    {"type": "function", "function": {"name": "forecast", "description": "Weather forecast", "parameters": PARAMS}},
    {"type": "function", "function": {"name": "clock", "parameters": {"type": "object", "properties": {}}}},
]
LONG = "In a distant galaxy, engineers built a serving platform for language models. " * 6


@pytest.fixture(scope="module")
def client(stack: dict[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack["url"] + "/v1", api_key="unused", timeout=180, max_retries=0)


@pytest.mark.parametrize("prompt", ["What is the weather in Oslo?", LONG], ids=["colocated", "disaggregated"])
def test_a_named_tool_choice_returns_a_call_whose_arguments_parse(client, prompt):
    reply = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": prompt}], tools=TOOLS, max_tokens=60, seed=1,
        tool_choice={"type": "function", "function": {"name": "forecast"}},
    )  # fmt: skip
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "forecast" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), PARAMS)


def test_streamed_tool_call_deltas_reassemble_into_the_whole_call(client):
    kwargs = dict(
        model="default",
        messages=[{"role": "user", "content": "Forecast for Rome"}],
        tools=TOOLS,
        max_tokens=60,
        seed=4,
        tool_choice={"type": "function", "function": {"name": "forecast"}},
    )
    whole = client.chat.completions.create(**kwargs).choices[0].message.tool_calls[0]
    name, arguments, ids, finishes = "", "", set(), []
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                assert delta.index == 0
                ids.add(delta.id) if delta.id else None
                name += delta.function.name or ""
                arguments += delta.function.arguments or ""
            finishes += [choice.finish_reason] if choice.finish_reason else []
    assert len(ids) == 1 and name == "forecast" and finishes == ["tool_calls"]
    assert json.loads(arguments) == json.loads(whole.function.arguments)


def test_required_tool_choice_returns_only_known_tools_with_valid_arguments(client):
    reply = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Anything"}], tools=TOOLS, tool_choice="required",
        max_tokens=100, seed=2, n=4, parallel_tool_calls=False,
    )  # fmt: skip
    for choice in reply.choices:
        assert choice.finish_reason == "tool_calls", choice.message
        (call,) = choice.message.tool_calls
        assert call.function.name in ("forecast", "clock")
        args = json.loads(call.function.arguments)
        if call.function.name == "forecast":
            jsonschema.validate(args, PARAMS)


def test_a_tool_result_turn_is_accepted_in_the_conversation(client):
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "forecast", "arguments": '{"city": "Oslo", "days": 1}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    reply = client.chat.completions.create(model="default", messages=messages, tools=TOOLS, max_tokens=5,
                                           tool_choice="none")  # fmt: skip
    assert reply.choices[0].message.tool_calls is None and reply.usage.completion_tokens >= 1
