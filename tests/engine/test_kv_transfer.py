"""Prefill on one engine, export the KV, import it into another, continue: the same answer."""

from __future__ import annotations

import pytest

from contracts.sampling import SamplingParams
from engine.config import EngineConfig
from engine.errors import UnknownRequest
from engine.llm_engine import LLMEngine
from engine.outputs import PrefillProgress

PROMPT = [(7 * i + 3) % 370 + 5 for i in range(45)]  # 45 tokens: 2 full blocks + a partial one


def make_engine(model_dir, **kw) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(model_dir), dtype="float32", kv_cache_bytes=4 << 20, **kw))


def run(engine: LLMEngine) -> dict[str, list[int]]:
    outs: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for o in engine.step():
            if o.finished:
                outs[o.request_id] = o.output_token_ids
    return outs


def prefill(engine: LLMEngine, params: SamplingParams) -> int:
    engine.add_request("p", PROMPT, params, prefill_only=True)
    first = None
    while engine.has_unfinished():
        for o in engine.step():
            assert o.finished and len(o.new_token_ids) == 1
            first = o.new_token_ids[0]
    assert first is not None, "the prefill produced no first token"
    return first


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0, max_tokens=24, ignore_eos=True),
        SamplingParams(temperature=0.8, seed=11, max_tokens=24, ignore_eos=True),
    ],
    ids=["greedy", "seeded"],
)
@pytest.mark.parametrize("case", ["llama3", "qwen3-moe"])
def test_decode_after_import_equals_colocated_output(checkpoints, case, params):
    model_dir = checkpoints[case]
    colocated = make_engine(model_dir)
    colocated.add_request("c", PROMPT, params)
    expected = run(colocated)["c"]

    prefill_engine = make_engine(model_dir, max_num_batched_tokens=20)  # chunked prefill on the prefill side
    first = prefill(prefill_engine, params)
    kv = prefill_engine.export_blocks("p")
    assert kv.shape[:3] == (3, 2, 2)  # [blocks, layers, K/V, ...]
    prefill_engine.release("p")
    assert prefill_engine.load().active_blocks == 0

    decode_engine = make_engine(model_dir)
    decode_engine.import_request("d", PROMPT, params, kv, num_tokens=len(PROMPT), first_token_id=first)
    assert run(decode_engine)["d"] == expected


def test_import_skips_blocks_already_in_local_prefix_cache(llama_dir):
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    colocated = make_engine(llama_dir)
    colocated.add_request("c", PROMPT, params)
    expected = run(colocated)["c"]

    source = make_engine(llama_dir)
    first = prefill(source, params)
    decode_engine = make_engine(llama_dir)
    decode_engine.add_request("warm", PROMPT[:32] + [1, 2], params)  # caches the 2 leading blocks
    run(decode_engine)
    cached = decode_engine.cached_prefix_blocks(PROMPT)
    assert cached == 2
    kv = source.export_blocks("p", start_block=cached)
    decode_engine.import_request("d", PROMPT, params, kv, len(PROMPT), first, start_block=cached)
    outs = []
    while decode_engine.has_unfinished():
        outs += [o for o in decode_engine.step() if o.finished]
    assert outs[0].output_token_ids == expected
    assert outs[0].num_cached_tokens == len(PROMPT)


def test_prefill_progress_reports_each_chunk(llama_dir):
    progress: list[PrefillProgress] = []
    engine = LLMEngine(
        EngineConfig(model=str(llama_dir), dtype="float32", kv_cache_bytes=4 << 20, max_num_batched_tokens=16),
        on_prefill_progress=progress.append,
    )
    prefill(engine, SamplingParams(temperature=0, max_tokens=4))
    assert [(p.num_computed_tokens, p.done) for p in progress] == [(16, False), (32, False), (45, True)]
    # blocks of a reported range are final: exporting them early equals exporting them at the end
    assert engine.export_blocks("p", 0, 2).equal(engine.export_blocks("p")[:2])


def test_export_of_unknown_or_released_request_is_an_error(llama_dir):
    engine = make_engine(llama_dir)
    with pytest.raises(UnknownRequest):
        engine.export_blocks("nope")
    prefill(engine, SamplingParams(temperature=0, max_tokens=4))
    engine.release("p")
    with pytest.raises(UnknownRequest):
        engine.release("p")
