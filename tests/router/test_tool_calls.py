"""Tool calling at the router: the plan a request asks for, tools rendered by the chat template,
and the model's text parsed into OpenAI tool_calls, whole and as streamed deltas."""

from __future__ import annotations

import json
import shutil

import pytest
from fastapi.testclient import TestClient

from router import protocol as p
from router.config import RouterConfig
from router.openai_api import create_app
from router.tool_calls import ToolCallStream, ToolFormat, detect_format, parse_calls, plan_tools

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}  # fmt: skip
CLOCK = {"type": "function", "function": {"name": "get_time"}}
# a Qwen-style template: tools listed in the system turn, calls as <tool_call> JSON
HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n# Tools\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}"
    'Call a tool as <tool_call>{"name": ..., "arguments": ...}</tool_call><|im_end|>\n{% endif %}'
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def request(**kw) -> p.ChatCompletionRequest:
    return p.ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], **kw)


def reassemble(plan, deltas: list[str]) -> tuple[str, dict[int, dict]]:
    """Feed text deltas as the router streams them; rebuild content and calls as the openai client does."""
    stream = ToolCallStream(plan)
    content, calls = "", dict[int, dict]()
    pieces = [stream.feed(d) for d in deltas] + [stream.finish()]
    for text, call_deltas in pieces:
        content += text
        for d in call_deltas:
            call = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = call["id"] or d.id
            call["name"] += d.function.name or ""
            call["arguments"] += d.function.arguments or ""
    return content, calls


def test_named_tool_choice_forces_the_arguments_schema_and_streams_them_as_deltas():
    plan = plan_tools(
        request(tools=[WEATHER, CLOCK], tool_choice={"type": "function", "function": {"name": "get_weather"}}), ToolFormat.HERMES
    )
    assert plan.mode == "named" and plan.guide.kind == "json_schema"
    assert json.loads(plan.guide.spec) == WEATHER["function"]["parameters"]
    content, calls = reassemble(plan, ['{"ci', 'ty": "Par', 'is"}'])
    assert content == "" and list(calls) == [0]
    assert calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}


def test_required_tool_choice_forces_an_array_of_calls_and_parses_each():
    plan = plan_tools(request(tools=[WEATHER, CLOCK], tool_choice="required", parallel_tool_calls=False), ToolFormat.HERMES)
    schema = json.loads(plan.guide.spec)
    assert schema["type"] == "array" and schema["minItems"] == 1 and schema["maxItems"] == 1
    text = '[{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "Oslo"}}]'
    content, calls = parse_calls(text, plan)
    assert content is None and [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_time", {}),
        ("get_weather", {"city": "Oslo"}),
    ]


def test_hermes_auto_streams_content_then_the_calls_never_leaking_the_markup():
    plan = plan_tools(request(tools=[WEATHER]), ToolFormat.HERMES)
    assert plan.mode == "auto" and plan.guide is None
    deltas = ["Let me check. <tool", '_call>\n{"name": "get_weather", ', '"arguments": {"city": "Rome"}}\n</tool_call>']
    content, calls = reassemble(plan, deltas)
    assert content == "Let me check. "
    assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"]) == {"city": "Rome"}
    # a "<" that does not open a call is released at the end, unchanged
    assert reassemble(plan, ["a < b", " <"]) == ("a < b <", {})


def test_llama3_json_calls_and_plain_text_are_told_apart():
    plan = plan_tools(request(tools=[WEATHER]), ToolFormat.LLAMA3_JSON)
    content, calls = reassemble(plan, ['<|python_tag|>{"name": "get_weather", ', '"parameters": {"city": "Lima"}}'])
    assert content == "" and json.loads(calls[0]["arguments"]) == {"city": "Lima"}
    assert reassemble(plan, ["It is ", "sunny."]) == ("It is sunny.", {})
    assert parse_calls('{"not a call": 1}', plan) == ('{"not a call": 1}', [])


def test_the_call_format_is_read_from_the_chat_template():
    assert detect_format(HERMES_TEMPLATE) is ToolFormat.HERMES
    assert detect_format("{{ '<|python_tag|>' }}{% if m.role == 'ipython' %}") is ToolFormat.LLAMA3_JSON


def test_tool_choice_none_renders_and_parses_nothing():
    assert plan_tools(request(tools=[WEATHER], tool_choice="none"), ToolFormat.HERMES) is None


@pytest.fixture(scope="module")
def hermes_client(model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("hermes-model")
    shutil.copytree(model_dir, path, dirs_exist_ok=True)
    (path / "chat_template.jinja").write_text(HERMES_TEMPLATE)
    with TestClient(create_app(RouterConfig(str(path), served_model_name="m"), start_workers=False)) as c:
        yield c


def test_tools_are_rendered_through_the_models_chat_template(hermes_client):
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    plain = hermes_client.post("/tokenize", json={"messages": messages}).json()["tokens"]
    with_tools = hermes_client.post("/tokenize", json={"messages": messages, "tools": [WEATHER]}).json()["tokens"]
    prompt = hermes_client.post("/detokenize", json={"tokens": with_tools}).json()["prompt"]
    assert len(with_tools) > len(plain) and '"name": "get_weather"' in prompt and "<tool_call>" in prompt


@pytest.mark.parametrize("patch, param", [
    ({"tool_choice": "required"}, "tool_choice"),  # no tools
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
])  # fmt: skip
def test_inconsistent_tool_requests_are_a_400_naming_the_field(hermes_client, patch, param):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **patch}
    resp = hermes_client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


def test_a_template_that_ignores_tools_gets_them_in_a_hermes_system_turn(model_dir):
    # the tiny model's template renders only role and content, like SmolLM2's
    with TestClient(create_app(RouterConfig(str(model_dir), served_model_name="m"), start_workers=False)) as client:
        messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Weather?"}]
        ids = client.post("/tokenize", json={"messages": messages, "tools": [WEATHER]}).json()["tokens"]
        prompt = client.post("/detokenize", json={"tokens": ids}).json()["prompt"]
    assert prompt.count("system") == 1 and "Be terse." in prompt
    assert '"name": "get_weather"' in prompt and "<tool_call>" in prompt
