"""/v1/responses (stateless) through a whole `splitserve up` stack with the official `openai` client."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

pytestmark = pytest.mark.slow

LONG = "In a distant galaxy, engineers built a serving platform for language models. " * 6


@pytest.fixture(scope="module")
def client(stack: dict[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack["url"] + "/v1", api_key="unused", timeout=180, max_retries=0)


@pytest.mark.parametrize("prompt", ["Say hello.", LONG], ids=["colocated", "disaggregated"])
def test_a_response_answers_the_same_text_as_chat_completions(client, prompt):
    response = client.responses.create(model="default", input=prompt, instructions="Be brief.", max_output_tokens=10,
                                       temperature=0, store=False)  # fmt: skip
    chat = client.chat.completions.create(
        model="default", max_tokens=10, temperature=0,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}],
    )  # fmt: skip
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.output_text == chat.choices[0].message.content
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == chat.usage.completion_tokens
    if chat.choices[0].finish_reason == "length":
        assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    else:
        assert response.status == "completed"


def test_streamed_events_come_in_order_and_rebuild_the_text(client):
    kwargs = dict(model="default", input=[{"role": "user", "content": "Tell me a story."}], max_output_tokens=12,
                  temperature=0)  # fmt: skip
    whole = client.responses.create(**kwargs)
    events = list(client.responses.create(stream=True, **kwargs))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]  # fmt: skip
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == whole.output_text == events[-1].response.output_text


def test_text_format_json_schema_constrains_the_response(client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "maximum": 99}},
              "required": ["ok", "n"], "additionalProperties": False}  # fmt: skip
    response = client.responses.create(
        model="default", input="Answer as JSON.", max_output_tokens=40, extra_body={"seed": 3},
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}},
    )  # fmt: skip
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), schema)


@pytest.mark.parametrize("extra, param", [
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"background": True}, "background"),
    ({"tools": [{"type": "web_search"}]}, "tools"),
])  # fmt: skip
def test_what_a_stateless_server_cannot_do_is_a_clear_400(client, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="default", input="hi", max_output_tokens=2, **extra)
    assert err.value.body["param"] == param and err.value.body["code"] == "unsupported_parameter"
