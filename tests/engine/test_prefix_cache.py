"""Prefix caching reuses KV blocks without changing outputs, and reports what it stores and evicts."""

from __future__ import annotations

from contracts.kv_events import BlockRemoved, BlockStored
from contracts.sampling import SamplingParams
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from kvstore.block_key import block_keys

GREEDY = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
SHARED = list(range(10, 58))  # 48 tokens = 3 full blocks


def generate(engine: LLMEngine, request_id: str, prompt: list[int]):
    engine.add_request(request_id, prompt, GREEDY)
    final = None
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                final = out
    return final


def make_engine(model_dir, **kw) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(model_dir), dtype="float32", kv_cache_bytes=4 << 20, **kw))


def test_prefix_cache_hit_gives_same_output_and_is_counted(llama_dir):
    prompt = SHARED + [7, 8, 9]
    cold = generate(make_engine(llama_dir, enable_prefix_caching=False), "a", prompt)
    engine = make_engine(llama_dir)
    generate(engine, "warm-up", SHARED + [300])
    hit = generate(engine, "b", prompt)
    assert hit.output_token_ids == cold.output_token_ids
    assert hit.num_cached_tokens == 48
    load = engine.load()
    assert load.prefix_cache_queries == 49 + 51
    assert load.prefix_cache_hits == 48


def test_fully_cached_prompt_still_recomputes_its_last_token(llama_dir):
    engine = make_engine(llama_dir)
    first = generate(engine, "a", SHARED)
    again = generate(engine, "b", SHARED)
    assert again.output_token_ids == first.output_token_ids
    assert again.num_cached_tokens == 32  # the block holding the last token is recomputed


def test_cache_salt_separates_tenants(llama_dir):
    engine = make_engine(llama_dir)
    engine.add_request("a", SHARED + [1], GREEDY, cache_salt="tenant-a")
    engine.add_request("b", SHARED + [1], GREEDY, cache_salt="tenant-b")
    while engine.has_unfinished():
        engine.step()
    assert engine.load().prefix_cache_hits == 0
    assert engine.cached_prefix_blocks(SHARED, cache_salt="tenant-a") == 3
    assert engine.cached_prefix_blocks(SHARED) == 0


def test_kv_events_announce_stored_keys_and_evictions(llama_dir):
    events = []
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", num_kv_blocks=6), on_kv_events=events.extend)
    generate(engine, "a", SHARED)
    stored = [k for e in events if isinstance(e, BlockStored) for k in e.keys]
    # 48 prompt tokens + 19 computed output tokens = 4 full blocks, keys per the shared block-key scheme
    assert stored[:3] == block_keys(SHARED, engine.fingerprint)
    assert len(stored) == 4
    first = next(e for e in events if isinstance(e, BlockStored))
    assert first.parent is None and first.token_ids[:16] == SHARED[:16]
    events.clear()
    generate(engine, "b", list(range(100, 170)))  # 90 tokens need all 6 blocks: the cached ones are evicted
    removed = [k for e in events if isinstance(e, BlockRemoved) for k in e.keys]
    assert set(stored) <= set(removed)
    assert engine.cached_prefix_blocks(SHARED) == 0
