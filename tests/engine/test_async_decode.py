"""Decode steps that run one ahead of the host (async_decode) produce exactly the synchronous engine's outputs.

On CPU the decode "graphs" run eagerly on the same static buffers (as in
test_decode_graphs.py), which is enough for the run-ahead path: the next step
reads its input tokens from the device tensor of the previous step's samples.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from contracts.sampling import SamplingParams
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model_runner import ModelRunner


@pytest.fixture
def static_decode(monkeypatch):
    monkeypatch.setattr(ModelRunner, "_graph_device", lambda self: True)


@pytest.fixture
def ahead_calls(monkeypatch) -> list[int]:
    """Counts decode steps launched ahead of the host (so a test sees that the path really ran)."""
    calls: list[int] = []
    original = ModelRunner.execute_ahead

    def counted(self, plan, input_ids):
        calls.append(len(plan))
        return original(self, plan, input_ids)

    monkeypatch.setattr(ModelRunner, "execute_ahead", counted)
    return calls


def engine_for(model: str, **overrides) -> LLMEngine:
    cfg = dict(model=model, dtype="float32", num_kv_blocks=64, max_num_seqs=8, enable_prefix_caching=True)
    return LLMEngine(EngineConfig(**{**cfg, **overrides}))


def run(
    engine: LLMEngine,
    requests: dict[str, tuple[list[int], SamplingParams]],
    abort_after: dict[str, int] | None = None,
    late: dict[str, tuple[list[int], SamplingParams]] | None = None,
) -> dict[str, tuple[list[int], str | None]]:
    """Outputs (tokens, finish reason) of each request; ``abort_after`` aborts a request after its n-th token,
    ``late`` requests are added after the third step (mid-decode)."""
    for rid, (prompt, params) in requests.items():
        engine.add_request(rid, prompt, params)
    seen: dict[str, int] = {}
    done: dict[str, tuple[list[int], str | None]] = {}
    steps = 0
    while engine.has_unfinished():
        for o in engine.step():
            seen[o.request_id] = len(o.output_token_ids)
            if o.finished:
                done[o.request_id] = (o.output_token_ids, o.finish_reason)
            elif abort_after and seen[o.request_id] >= abort_after.get(o.request_id, 1 << 30):
                engine.abort(o.request_id)
                done[o.request_id] = (o.output_token_ids, "abort")
        steps += 1
        if steps == 3 and late:
            for rid, (prompt, params) in late.items():
                engine.add_request(rid, prompt, params)
    return done


def workload(vocab: int = 380) -> tuple[dict, dict]:
    rng = random.Random(3)

    def prompt() -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(rng.randrange(5, 40))]

    def greedy(n: int, **kw: Any) -> SamplingParams:
        return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, **kw)

    requests = {f"r{i}": (prompt(), greedy(n)) for i, n in enumerate((20, 7, 20, 13))}
    late = {"late": (prompt(), greedy(9))}
    return requests, late


def test_run_ahead_decode_equals_synchronous_decode(checkpoints, static_decode, ahead_calls):
    model = str(checkpoints["llama3"])
    requests, late = workload()
    sync = run(engine_for(model, async_decode=False), requests, late=late)
    assert not ahead_calls
    # a request that stops on a token id: the step launched ahead of that token is dropped
    rid, (prompt, _) = "r2", requests["r2"]
    stop_token = sync[rid][0][5]
    requests[rid] = (prompt, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, stop_token_ids=[stop_token]))
    sync = run(engine_for(model, async_decode=False), requests, late=late)
    assert sync[rid][1] == "stop" and len(sync[rid][0]) <= 6

    ahead = run(engine_for(model), requests, late=late)
    assert ahead == sync
    assert len(ahead_calls) > 10  # most decode steps were launched ahead


def test_abort_while_a_step_runs_ahead_leaves_the_other_requests_unchanged(checkpoints, static_decode, ahead_calls):
    model = str(checkpoints["llama3"])
    requests, _ = workload()
    sync = run(engine_for(model, async_decode=False), requests, abort_after={"r0": 4})
    ahead = run(engine_for(model), requests, abort_after={"r0": 4})
    assert ahead == sync
    assert ahead_calls
    engine = engine_for(model)
    run(engine, requests, abort_after={"r0": 4})
    assert engine.blocks.num_active == 0  # every block came back, the aborted request's too
