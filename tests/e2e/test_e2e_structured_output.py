"""Structured output, logit_bias and priority through a whole `splitserve up` stack, with the
official `openai` client.

The model has random weights, so only the grammar makes its answers valid JSON: every sample
validating against the schema shows the mask is applied on every token, and in the
disaggregated case (long prompt) that the decode worker continued the grammar state from the
prefill worker's first token.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

pytestmark = pytest.mark.slow

SHORT = "Describe a person as JSON."
LONG = "In a distant galaxy, engineers built a serving platform for language models. " * 6
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["prefill", "decode", "router"]},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "role", "active"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client(stack: dict[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack["url"] + "/v1", api_key="unused", timeout=180, max_retries=0)


@pytest.mark.parametrize("prompt", [SHORT, LONG], ids=["colocated", "disaggregated"])
def test_every_seeded_json_schema_sample_validates_against_the_schema(client, prompt):
    reply = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": prompt}], n=8, seed=7, temperature=1.0,
        max_tokens=120,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}},
    )  # fmt: skip
    assert len(reply.choices) == 8
    for choice in reply.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)
    # the seed makes the n samples reproducible, and they differ from each other
    again = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": prompt}], n=8, seed=7, temperature=1.0,
        max_tokens=120,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}},
    )  # fmt: skip
    assert [c.message.content for c in again.choices] == [c.message.content for c in reply.choices]
    assert len({c.message.content for c in reply.choices}) > 1


@pytest.mark.parametrize("prompt", [SHORT, LONG], ids=["colocated", "disaggregated"])
def test_regex_and_choice_extensions_constrain_the_completion(client, prompt):
    regex = client.completions.create(
        model="default", prompt=prompt, max_tokens=30, seed=3, extra_body={"guided_regex": r"[0-9]{3}-[a-z]{2,4}"}
    )
    assert regex.choices[0].finish_reason == "stop"
    assert __import__("re").fullmatch(r"[0-9]{3}-[a-z]{2,4}", regex.choices[0].text)
    choice = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": prompt}], max_tokens=20, seed=5,
        extra_body={"guided_choice": ["kv cache", "router", "decode"]},
    )  # fmt: skip
    assert choice.choices[0].message.content in ("kv cache", "router", "decode")


def test_json_object_mode_answers_a_json_object(client):
    # a random model rarely closes an unconstrained object; the stack's context bounds it
    reply = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": SHORT}], max_tokens=60, seed=11, temperature=0.2,
        response_format={"type": "json_object"},
    )  # fmt: skip
    text = reply.choices[0].message.content
    assert text.startswith("{")
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_a_schema_the_grammar_engine_rejects_is_a_400_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": SHORT}], max_tokens=5,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}},
        )  # fmt: skip
    assert err.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="default", prompt=SHORT, max_tokens=5,
                                  extra_body={"guided_regex": "[0-9", "guided_choice": ["a"]})  # fmt: skip
    assert "at most one" in err.value.body["message"]


@pytest.mark.parametrize("prompt", [SHORT, LONG], ids=["colocated", "disaggregated"])
def test_logit_bias_of_100_forces_the_token_on_every_position(client, prompt):
    forced = 77
    reply = client.completions.create(
        model="default", prompt=prompt, max_tokens=6, temperature=0.0, logprobs=0, logit_bias={str(forced): 100},
        extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True},
    )  # fmt: skip
    assert [int(t.removeprefix("token_id:")) for t in reply.choices[0].logprobs.tokens] == [forced] * 6
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="default", prompt=prompt, max_tokens=2, logit_bias={"77": 250})
    assert err.value.body["param"].startswith("logit_bias")


def test_priority_is_accepted_and_does_not_change_a_greedy_answer(client):
    kwargs = dict(model="default", prompt=SHORT, max_tokens=8, temperature=0.0, extra_body={"ignore_eos": True})
    plain = client.completions.create(**kwargs)
    urgent = client.completions.create(**{**kwargs, "extra_body": {"ignore_eos": True, "priority": -5}})
    assert urgent.choices[0].text == plain.choices[0].text
