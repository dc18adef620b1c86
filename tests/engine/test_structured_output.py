"""Structured output in the engine: the grammar mask in the sampler, the matcher advanced by
each token, its state rebuilt after a prefill -> decode handoff; and logit_bias."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from contracts.sampling import InvalidSamplingParams, SamplingParams
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampler import Sampler, SamplingBatch, apply_token_bitmask

PROMPT = [(11 * i + 5) % 370 + 5 for i in range(40)]
SCHEMA = {
    "type": "object",
    "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999}, "tag": {"type": "string", "maxLength": 5}},
    "required": ["id", "tag"],
    "additionalProperties": False,
}


def make_engine(model_dir, **kw) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(model_dir), dtype="float32", kv_cache_bytes=4 << 20, **kw))


def run(engine: LLMEngine) -> dict[str, tuple[list[int], str, str | None]]:
    outs = {}
    while engine.has_unfinished():
        for o in engine.step():
            if o.finished:
                outs[o.request_id] = (o.output_token_ids, o.text, o.finish_reason)
    return outs


def guided(seed: int, **kw) -> SamplingParams:
    return SamplingParams(temperature=1.0, seed=seed, max_tokens=60, guided_kind="json_schema",
                          guided_spec=json.dumps(SCHEMA), **kw)  # fmt: skip


def test_bitmask_keeps_exactly_the_allowed_tokens() -> None:
    logits = torch.zeros(2, 40)
    bitmask = torch.zeros(2, 2, dtype=torch.int32)  # 2 words of 32 bits cover 40 tokens
    bitmask[0, 0] = 1 << 3
    bitmask[0, 1] = 1 << 4  # token 36
    bitmask[1] = -1  # all allowed
    masked = apply_token_bitmask(logits, bitmask)
    assert torch.isfinite(masked[0]).nonzero().flatten().tolist() == [3, 36]
    assert torch.isfinite(masked[1]).all()


def test_grammar_mask_wins_over_logit_bias_and_min_tokens() -> None:
    params = SamplingParams(temperature=0.0, min_tokens=5, logit_bias=[(7, 100.0)])
    bitmask = torch.zeros(1, 1, dtype=torch.int32)
    bitmask[0, 0] = 1 << 3  # only token 3 (the EOS) is allowed
    batch = SamplingBatch([params], [[1]], [[]], token_bitmask=bitmask)
    out = Sampler(eos_token_ids={3})(torch.randn(1, 20), batch)
    assert out.token_ids.tolist() == [3]


def test_logit_bias_adds_to_the_logits() -> None:
    params = SamplingParams(temperature=0.0, logit_bias=[(5, 100.0), (2, -100.0)])
    logits = torch.zeros(3, 10)
    logits[:, 2] = 50.0
    rows = [params, SamplingParams(temperature=0.0), params]
    out = Sampler()(logits, SamplingBatch(rows, [[1]] * 3, [[]] * 3))
    assert out.token_ids.tolist() == [5, 2, 5]  # the unbiased middle row keeps its argmax


@pytest.mark.parametrize(
    "bad",
    [
        {"logit_bias": [(999, 1.0)]},
        {"logit_bias": [(1, 101.0)]},
        {"guided_kind": "yaml", "guided_spec": "x"},
        {"guided_kind": "regex"},
    ],
)
def test_bad_logit_bias_or_guide_is_rejected_with_the_field_named(bad) -> None:
    with pytest.raises(InvalidSamplingParams, match=next(iter(bad)).split("_")[0]):
        SamplingParams(**bad).validate(vocab_size=384)


def test_every_seeded_sample_under_a_json_schema_validates(llama_dir) -> None:
    engine = make_engine(llama_dir)
    for i in range(8):
        engine.add_request(f"r{i}", PROMPT, guided(seed=i))
    outs = run(engine)
    texts = set()
    for _, text, reason in outs.values():
        assert reason == "stop", text
        jsonschema.validate(json.loads(text), SCHEMA)
        texts.add(text)
    assert len(texts) > 1


def test_a_bad_spec_is_rejected_at_once_or_aborts_when_compiled_never_hanging(llama_dir) -> None:
    engine = make_engine(llama_dir)
    with pytest.raises(InvalidSamplingParams, match="not JSON"):
        engine.add_request("bad", PROMPT, SamplingParams(guided_kind="json_schema", guided_spec="{not json"))
    with pytest.raises(InvalidSamplingParams, match="regex"):
        engine.grammar_state(SamplingParams(guided_kind="regex", guided_spec="[0-9"))
    # compiled off the step loop: the failure ends the request instead of raising
    engine.add_request("bad-regex", PROMPT, SamplingParams(guided_kind="regex", guided_spec="[0-9"))
    engine.add_request("fine", PROMPT, SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))
    outs = run(engine)
    assert outs["bad-regex"] == ([], "", "abort")
    assert len(outs["fine"][0]) == 3


def test_json_strings_never_hold_raw_control_characters(llama_dir) -> None:
    # xgrammar's bounded-string rule alone would allow them; json.loads (strict) rejects them
    engine = make_engine(llama_dir)
    state = engine.grammar_state(guided(seed=0))
    for token in engine.tokenizer.encode('{"id": 1, "tag": "', add_special_tokens=False):
        assert state.accept(token)
    bitmask = torch.zeros(1, -(-engine.runner.vocab_size // 32), dtype=torch.int32)
    state.fill(bitmask, 0)
    allowed = apply_token_bitmask(torch.zeros(1, engine.runner.vocab_size), bitmask)[0].isfinite()
    for token_id in allowed.nonzero().flatten().tolist():
        text = engine.tokenizer.decode([token_id])
        assert not any(ord(c) < 0x20 for c in text), (token_id, text)


def test_decode_after_import_continues_the_grammar_from_the_first_token(llama_dir) -> None:
    params = guided(seed=3)
    colocated = make_engine(llama_dir)
    colocated.add_request("c", PROMPT, params)
    expected = run(colocated)["c"]

    prefill_engine = make_engine(llama_dir)
    prefill_engine.add_request("p", PROMPT, guided(seed=3), prefill_only=True)
    first = run(prefill_engine)["p"][0][0]
    kv = prefill_engine.export_blocks("p")
    prefill_engine.release("p")
    decode_engine = make_engine(llama_dir)
    decode_engine.import_request("d", PROMPT, guided(seed=3), kv, num_tokens=len(PROMPT), first_token_id=first)
    assert run(decode_engine)["d"] == expected
    jsonschema.validate(json.loads(expected[1]), SCHEMA)
