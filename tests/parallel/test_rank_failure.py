"""A parallel engine whose rank process dies fails promptly with RankDied instead of hanging."""

from __future__ import annotations

import sys
import time

import pytest

from contracts.sampling import SamplingParams
from engine.config import EngineConfig
from engine.errors import RankDied
from engine.llm_engine import LLMEngine
from engine.make_model import make_model


@pytest.mark.timeout(120)
def test_killed_rank_fails_the_engine_within_seconds(tmp_path):
    model = make_model("llama", tmp_path / "llama")
    engine = LLMEngine(
        EngineConfig(model=str(model), dtype="float32", kv_cache_bytes=4 << 20, tensor_parallel_size=2, distributed_timeout_s=30)
    )
    try:
        engine.add_request("r", list(range(5, 40)), SamplingParams(temperature=0, max_tokens=200, ignore_eos=True))
        for _ in range(3):
            engine.step()  # mid-run: prefill done, decoding
        engine.runner.ranks[0].kill()
        start = time.monotonic()
        with pytest.raises(RankDied, match="rank 1"):
            while engine.has_unfinished():
                engine.step()
        assert time.monotonic() - start < 10
    finally:
        engine.shutdown()


def test_ray_executor_without_ray_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as on a machine without ray: `import ray` raises ImportError
    model = make_model("llama", tmp_path / "llama")
    with pytest.raises(ImportError, match="pip install"):
        LLMEngine(
            EngineConfig(
                model=str(model), dtype="float32", kv_cache_bytes=4 << 20, tensor_parallel_size=2, distributed_executor="ray"
            )
        )


def test_worker_flags_carry_parallelism_to_the_engine():
    import argparse

    from engine.server.worker_options import add_worker_flags, options_from_args

    p = argparse.ArgumentParser()
    add_worker_flags(p, "decode")
    o = options_from_args(p.parse_args(["--model", "m", "--tensor-parallel-size", "2", "--expert-parallel"]), "decode")
    assert (o.tensor_parallel_size, o.expert_parallel, o.distributed_executor) == (2, True, "mp")
