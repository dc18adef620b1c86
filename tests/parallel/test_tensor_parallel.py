"""Tensor and expert parallelism on CPU (gloo, 2 rank processes): the same tokens as one device.

Each TP=2 engine costs a process spawn, so one engine per model checks several
things: colocated greedy output, and KV export/import across TP sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from contracts.sampling import SamplingParams
from engine.config import EngineConfig
from engine.llm import run_to_completion
from engine.llm_engine import LLMEngine
from engine.make_model import make_model

PROMPTS = [
    [(7 * i + 3) % 370 + 5 for i in range(45)],  # 2 full blocks + a partial one
    [100, 3, 77],
    [42],
]
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)

CASES: dict[str, dict[str, Any]] = {
    "llama": dict(arch="llama"),  # tied embeddings: vocab-parallel embedding doubles as the LM head
    "qwen2": dict(arch="qwen2"),  # qkv bias
    "qwen3": dict(arch="qwen3"),  # q/k norm
    "qwen3-1kv": dict(arch="qwen3", num_key_value_heads=1),  # TP 2 > 1 KV head: the head is replicated
    "qwen3-moe": dict(arch="qwen3-moe"),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tp-models")
    return {name: make_model(model_dir=root / name, seed=i, **kw) for i, (name, kw) in enumerate(CASES.items())}


def make_engine(model_dir: Path, **kw) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(model_dir), dtype="float32", kv_cache_bytes=4 << 20, **kw))


def generate(engine: LLMEngine, prompts: list[list[int]] = PROMPTS) -> list[list[int]]:
    return [out.output_token_ids for out in run_to_completion(engine, prompts, GREEDY)]


def prefill_and_export(engine: LLMEngine, prompt: list[int]):
    engine.add_request("p", prompt, GREEDY, prefill_only=True)
    first = None
    while engine.has_unfinished():
        for o in engine.step():
            first = o.new_token_ids[0]
    kv = engine.export_blocks("p")
    engine.release("p")
    return kv, first


def decode_imported(engine: LLMEngine, prompt: list[int], kv, first: int) -> list[int]:
    engine.import_request("d", prompt, GREEDY, kv, num_tokens=len(prompt), first_token_id=first)
    out = None
    while engine.has_unfinished():
        for o in engine.step():
            if o.finished:
                out = o.output_token_ids
    assert out is not None, "the imported request never finished"
    return out


@pytest.mark.parametrize("case", ["qwen2", "qwen3", "qwen3-1kv", "qwen3-moe"])
def test_tp2_greedy_output_equals_tp1(models, case):
    expected = generate(make_engine(models[case]))
    tp2 = make_engine(models[case], tensor_parallel_size=2)
    try:
        assert generate(tp2) == expected
    finally:
        tp2.shutdown()


def test_ep2_greedy_output_equals_ep1(models):
    expected = generate(make_engine(models["qwen3-moe"]))
    ep2 = make_engine(models["qwen3-moe"], tensor_parallel_size=2, expert_parallel=True)
    try:
        moe = ep2.runner.runner.model.model.layers[1].mlp
        assert sorted(moe.experts, key=int) == ["0", "2"]  # rank 0 holds half of the 4 experts, whole
        assert generate(ep2) == expected
    finally:
        ep2.shutdown()


def test_llama_tp2_matches_tp1_and_kv_moves_between_tp_sizes(models):
    prompt = PROMPTS[0]
    tp1 = make_engine(models["llama"])
    expected = generate(tp1)
    tp2 = make_engine(models["llama"], tensor_parallel_size=2)
    try:
        assert generate(tp2) == expected

        kv, first = prefill_and_export(tp2, prompt)  # TP 2 prefill -> TP 1 decode
        assert kv.shape[:5] == (3, 2, 2, 16, 2)  # full-head rows: both ranks' KV heads
        assert decode_imported(tp1, prompt, kv, first) == expected[0]

        kv, first = prefill_and_export(make_engine(models["llama"]), prompt)  # TP 1 prefill -> TP 2 decode
        assert decode_imported(tp2, prompt, kv, first) == expected[0]
    finally:
        tp2.shutdown()
