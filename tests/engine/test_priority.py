"""Per-request priority in the engine scheduler (lower value = more urgent, vLLM's convention):
the waiting queue is served most urgent first, and preemption frees the least urgent."""

from __future__ import annotations

import pytest

from contracts.sampling import SamplingParams
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine

PROMPT = [(5 * i + 7) % 370 + 5 for i in range(20)]


def params(priority: int, max_tokens: int = 4) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, priority=priority)


def finish_order(engine: LLMEngine) -> list[str]:
    order = []
    while engine.has_unfinished():
        order += [o.request_id for o in engine.step() if o.finished]
    return order


def test_a_more_urgent_waiting_request_is_scheduled_first(llama_dir) -> None:
    # one sequence at a time: the order of admission is the order of completion
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", kv_cache_bytes=4 << 20, max_num_seqs=1))
    for rid, priority in [("late-low", 5), ("default", 0), ("urgent", -3), ("default-2", 0)]:
        engine.add_request(rid, PROMPT, params(priority))
    assert finish_order(engine) == ["urgent", "default", "default-2", "late-low"]


def test_preemption_frees_the_least_urgent_running_request(llama_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    # 6 blocks of 16 tokens: three requests of 20 + 40 tokens (4 blocks each) cannot all run
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", num_kv_blocks=6, max_num_batched_tokens=256))
    preempted: list[str] = []
    original = engine.scheduler._preempt

    def spy(seq):
        preempted.append(seq.request_id)
        original(seq)

    monkeypatch.setattr(engine.scheduler, "_preempt", spy)
    engine.add_request("low", PROMPT, params(9, max_tokens=40))
    engine.step()  # "low" runs first, so it is ahead of "urgent" in the batch
    engine.add_request("urgent", PROMPT, params(-1, max_tokens=40))
    order = finish_order(engine)
    assert preempted and set(preempted) == {"low"}
    assert order == ["urgent", "low"]
