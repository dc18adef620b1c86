"""Scheduling choices never change what a request produces."""

from __future__ import annotations

import random

import pytest

from contracts.sampling import SamplingParams
from engine.config import EngineConfig
from engine.llm import LLM
from engine.llm_engine import LLMEngine

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def seeded(seed: int) -> SamplingParams:
    return SamplingParams(temperature=0.9, top_p=0.95, seed=seed, max_tokens=24, ignore_eos=True)


def mixed_prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 380) for _ in range(rng.randrange(1, 70))] for _ in range(n)]


def run_all(engine: LLMEngine, prompts, params) -> list[list[int]]:
    for i, (p, sp) in enumerate(zip(prompts, params)):
        engine.add_request(f"r{i}", p, sp)
    outs: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for o in engine.step():
            if o.finished:
                outs[o.request_id] = o.output_token_ids
    return [outs[f"r{i}"] for i in range(len(prompts))]


@pytest.fixture(scope="module")
def plain_outputs(llama_dir):
    """Each of 16 mixed requests run alone in a fresh engine (greedy, then seeded)."""
    prompts = mixed_prompts(16)
    params = [GREEDY if i % 2 == 0 else seeded(i) for i in range(16)]
    alone = []
    llm = LLM(llama_dir, dtype="float32", kv_cache_bytes=4 << 20, enable_prefix_caching=False)
    for p, sp in zip(prompts, params):
        alone.append(llm.generate([p], sp)[0].output_token_ids)
    return prompts, params, alone


def test_output_alone_equals_output_in_batch_of_16(llama_dir, plain_outputs):
    prompts, params, alone = plain_outputs
    llm = LLM(llama_dir, dtype="float32", kv_cache_bytes=4 << 20)
    batched = [o.output_token_ids for o in llm.generate(prompts, params)]
    assert batched == alone


@pytest.mark.parametrize("chunk", [7, 16, 33])
def test_chunked_prefill_gives_same_output(llama_dir, plain_outputs, chunk):
    prompts, params, alone = plain_outputs
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", kv_cache_bytes=4 << 20, max_num_batched_tokens=chunk))
    assert run_all(engine, prompts, params) == alone


def test_preemption_with_recompute_gives_same_output(llama_dir, plain_outputs):
    prompts, params, alone = plain_outputs
    # 12 blocks of 16 tokens cannot hold 16 requests of up to ~94 tokens at once
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", num_kv_blocks=12, max_num_batched_tokens=64))
    preempted = []
    original = engine.scheduler._preempt

    def spy(seq):
        preempted.append(seq.request_id)
        original(seq)

    engine.scheduler._preempt = spy
    assert run_all(engine, prompts, params) == alone
    assert preempted, "the pool was meant to be too small to run everything at once"
    assert engine.load().active_blocks == 0  # cached blocks stay reusable but unreferenced


def test_max_num_seqs_caps_running_requests(llama_dir):
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", kv_cache_bytes=4 << 20, max_num_seqs=3))
    for i, p in enumerate(mixed_prompts(6, seed=1)):
        engine.add_request(f"r{i}", p, GREEDY)
    engine.step()
    load = engine.load()
    assert (load.running, load.waiting) == (3, 3)


def test_abort_frees_blocks_and_stops_output(llama_dir):
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", kv_cache_bytes=4 << 20, enable_prefix_caching=False))
    engine.add_request("keep", [5] * 20, GREEDY)
    engine.add_request("drop", [6] * 40, GREEDY)
    engine.step()
    assert engine.abort("drop")
    assert not engine.abort("drop")
    seen = set()
    while engine.has_unfinished():
        seen |= {o.request_id for o in engine.step()}
    assert seen == {"keep"}
    assert engine.load().active_blocks == 0
