"""The OpenAI API through a whole `splitserve up` stack, spoken to by the official `openai` client.

Prompts of ~40 tokens run colocated on a decode worker; prompts of ~300 tokens (above the
router's 256-token colocate threshold) run disaggregated: prefill worker -> kvstore ->
decode worker. Both must equal the offline engine token for token (greedy).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from contracts.sampling import SamplingParams
from engine import LLM

pytestmark = pytest.mark.slow

SHORT = "The quick brown fox jumps over the lazy dog. " * 4
LONG = "In a distant galaxy, engineers built a serving platform for language models. " * 6
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def client(stack: dict[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack["url"] + "/v1", api_key="unused", timeout=120, max_retries=0)


@pytest.fixture(scope="module")
def http(stack: dict[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack["url"], timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def offline(model_dir: str) -> LLM:
    return LLM(model_dir, num_kv_blocks=512)


def tokenize(http: httpx.Client, **body: Any) -> list[int]:
    reply = http.post("/tokenize", json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()["tokens"]


def greedy_offline(offline: LLM, prompt_ids: list[int], max_tokens: int = MAX_TOKENS) -> tuple[list[int], str]:
    out = offline.generate([prompt_ids], SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))[0]
    return list(out.output_token_ids), out.text


@pytest.mark.parametrize("prompt", [SHORT, LONG], ids=["colocated", "disaggregated"])
def test_greedy_completion_equals_the_offline_engine_token_for_token(client, http, offline, prompt):
    prompt_ids = tokenize(http, prompt=prompt)
    assert prompt_ids == offline.tokenizer.encode(prompt)
    want_ids, want_text = greedy_offline(offline, prompt_ids)
    reply = client.completions.create(
        model="default", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0, logprobs=0,
        extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True},
    )  # fmt: skip
    choice = reply.choices[0]
    assert [int(t.removeprefix("token_id:")) for t in choice.logprobs.tokens] == want_ids
    assert choice.text == want_text
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(prompt_ids), MAX_TOKENS)
    assert choice.finish_reason == "length"


def test_streamed_completion_equals_the_unstreamed_one_and_reports_usage_last(client):
    kwargs = dict(model="default", prompt=LONG, max_tokens=MAX_TOKENS, temperature=0, extra_body={"ignore_eos": True})
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == MAX_TOKENS
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_completion_applies_the_template_and_equals_the_offline_engine(client, http, offline):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a KV cache?"}]
    prompt_ids = tokenize(http, messages=messages, add_generation_prompt=True)
    _, want_text = greedy_offline(offline, prompt_ids)
    reply = client.chat.completions.create(
        model="default", messages=messages, max_tokens=MAX_TOKENS, temperature=0, extra_body={"ignore_eos": True}
    )
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == want_text
    assert reply.choices[0].finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(prompt_ids), MAX_TOKENS)
    assert reply.usage.total_tokens == len(prompt_ids) + MAX_TOKENS


def test_streamed_chat_sends_role_then_content_then_finish_and_usage(client):
    messages = [{"role": "user", "content": LONG}]
    kwargs = dict(model="default", messages=messages, max_tokens=MAX_TOKENS, temperature=0,
                  extra_body={"ignore_eos": True})  # fmt: skip
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == MAX_TOKENS
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def readable_stop(text: str) -> str | None:
    """Two printable characters from the middle of a greedy answer (random weights often emit raw bytes)."""
    for i in range(3, len(text) - 2):
        piece = text[i : i + 2]
        if piece.isprintable() and piece.strip() and "\ufffd" not in piece:
            return piece
    return None


def test_stop_string_ends_the_answer_before_it_with_finish_reason_stop(client):
    kwargs = dict(model="default", temperature=0, extra_body={"ignore_eos": True})
    for prompt in (SHORT, LONG, "Hello! Who are you?", "Once upon a time", "1, 2, 3, 4,"):
        full = client.completions.create(prompt=prompt, max_tokens=32, **kwargs).choices[0].text
        stop = readable_stop(full)
        if stop:
            break
    assert stop, "no greedy answer with printable text to use as a stop string"
    for stream in (False, True):
        if stream:
            chunks = list(client.completions.create(prompt=prompt, max_tokens=32, stop=[stop], stream=True, **kwargs))
            text = "".join(c.choices[0].text for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        else:
            reply = client.completions.create(prompt=prompt, max_tokens=32, stop=[stop], **kwargs)
            text, finish = reply.choices[0].text, [reply.choices[0].finish_reason]
        assert text == full[: full.index(stop)], f"stop={stop!r} stream={stream}"
        assert finish == ["stop"]


def test_completion_logprobs_name_each_token_and_its_top_alternatives(client):
    reply = client.completions.create(
        model="default", prompt=SHORT, max_tokens=MAX_TOKENS, temperature=0, logprobs=3,
        extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True},  # ids: byte tokens share a string
    )  # fmt: skip
    lp = reply.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == MAX_TOKENS
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0
        assert len(top) == 3
        assert top[token] == pytest.approx(logprob, abs=1e-4)
        assert max(top.values()) == pytest.approx(logprob, abs=1e-4)  # greedy picks the most likely token


def test_chat_top_logprobs_list_the_greedy_token_first(client):
    reply = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Hi"}], max_tokens=MAX_TOKENS, temperature=0,
        logprobs=True, top_logprobs=4, extra_body={"ignore_eos": True},
    )  # fmt: skip
    content = reply.choices[0].logprobs.content
    assert len(content) == MAX_TOKENS
    for entry in content:
        assert len(entry.top_logprobs) == 4
        ranked = [t.logprob for t in entry.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        assert entry.top_logprobs[0].token == entry.token
        assert entry.logprob == pytest.approx(ranked[0], abs=1e-4)


def test_n_2_returns_two_choices_and_counts_both_in_usage(client):
    greedy = client.completions.create(model="default", prompt=SHORT, max_tokens=8, temperature=0, n=2,
                                       extra_body={"ignore_eos": True})  # fmt: skip
    assert sorted(c.index for c in greedy.choices) == [0, 1]
    assert greedy.choices[0].text == greedy.choices[1].text  # greedy: both the same answer
    assert greedy.usage.completion_tokens == 16
    chunks = list(client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": SHORT}], max_tokens=8, temperature=1.0, seed=7, n=2,
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    ))  # fmt: skip
    indexes = {c.choices[0].index for c in chunks if c.choices}
    assert indexes == {0, 1}
    finishes = sorted(
        (c.choices[0].index, c.choices[0].finish_reason) for c in chunks if c.choices and c.choices[0].finish_reason
    )
    assert finishes == [(0, "length"), (1, "length")]
    assert chunks[-1].usage.completion_tokens == 16


MALFORMED = [
    ("/v1/chat/completions", b"{not json", "application/json"),
    ("/v1/chat/completions", b'{"model": "default"}', "application/json"),
    ("/v1/chat/completions", b'{"model": "default", "messages": "hello"}', "application/json"),
    ("/v1/chat/completions", b'{"model": "default", "messages": [{"role": "wizard", "content": "x"}]}', "application/json"),
    (
        "/v1/chat/completions",
        b'{"model": "default", "messages": [{"role": "user", "content": "x"}], "max_tokens": -3}',
        "application/json",
    ),
    (
        "/v1/chat/completions",
        b'{"model": "default", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
        "application/json",
    ),
    (
        "/v1/chat/completions",
        b'{"model": "default", "messages": [{"role": "user", "content": "x"}], "n": 100000}',
        "application/json",
    ),
    ("/v1/chat/completions", b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', "application/json"),
    ("/v1/completions", b'{"model": "default", "prompt": ""}', "application/json"),
    ("/v1/completions", b'{"model": "default", "prompt": [999999999]}', "application/json"),
    ("/v1/completions", b'{"model": "default", "prompt": "' + b"word " * 2000 + b'"}', "application/json"),
    ("/v1/completions", b'{"model": "default", "prompt": "x", "logprobs": 99}', "application/json"),
    ("/v1/completions", b"[1, 2, 3]", "application/json"),
    ("/v1/completions", b"prompt=hello", "application/x-www-form-urlencoded"),
    ("/tokenize", b'{"prompt": "x", "messages": [{"role": "user", "content": "x"}]}', "application/json"),
]


def test_malformed_requests_get_an_openai_error_never_a_5xx(http):
    for path, body, content_type in MALFORMED:
        reply = http.post(path, content=body, headers={"content-type": content_type})
        assert 400 <= reply.status_code < 500, f"{path} {body[:80]!r}: {reply.status_code} {reply.text[:200]}"
        error = reply.json()["error"]
        assert error["message"] and error["type"], f"{path} {body[:80]!r}: {reply.text[:200]}"
    # and the stack still answers
    ok = http.post("/v1/completions", json={"model": "default", "prompt": "x", "max_tokens": 2})
    assert ok.status_code == 200, ok.text


def test_completion_echo_prepends_the_prompt_streamed_or_not(client):
    kwargs = dict(model="default", prompt="Echo me:", max_tokens=4, temperature=0, echo=True)
    whole = client.completions.create(**kwargs)
    plain = client.completions.create(**{**kwargs, "echo": False})
    assert whole.choices[0].text == "Echo me:" + plain.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kwargs) if c.choices)
    assert streamed == whole.choices[0].text
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(**{**kwargs, "n": 1}, extra_body={"best_of": 3})
    assert err.value.body["param"] == "best_of"
