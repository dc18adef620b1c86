"""distributed_executor="ray" on CPU (gloo): rank 1 is a Ray actor in a placement group, same tokens as TP=1.

A local Ray cluster lives for this module only (ray.init with 2 CPUs, no dashboard)
and is shut down after it; the engine frees its actor and placement group itself.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[dev]' (ray[default]) to run these")
pytestmark = pytest.mark.timeout(120)  # a hung actor or rendezvous fails here, not at the suite timeout

from contracts.sampling import SamplingParams  # noqa: E402
from engine.config import EngineConfig  # noqa: E402
from engine.errors import RankDied  # noqa: E402
from engine.llm import run_to_completion  # noqa: E402
from engine.llm_engine import LLMEngine  # noqa: E402
from engine.make_model import make_model  # noqa: E402

PROMPTS = [
    [(7 * i + 3) % 370 + 5 for i in range(45)],  # 2 full blocks + a partial one
    [100, 3, 77],
    [42],
]
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model(model_dir=tmp_path_factory.mktemp("ray-tp") / "llama", arch="llama", seed=0)


def make_engine(model_dir: Path, **kw) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(model_dir), dtype="float32", kv_cache_bytes=4 << 20, **kw))


def generate(engine: LLMEngine, prompts: list[list[int]] = PROMPTS) -> list[list[int]]:
    return [out.output_token_ids for out in run_to_completion(engine, prompts, GREEDY)]


def test_ray_tp2_greedy_output_equals_tp1_and_frees_its_actor(ray_cluster, model):
    expected = generate(make_engine(model))
    tp2 = make_engine(model, tensor_parallel_size=2, distributed_executor="ray")
    try:
        assert ray.available_resources().get("CPU", 0) == 1  # rank 1's placement-group bundle holds the other
        assert generate(tp2) == expected
    finally:
        tp2.shutdown()
    groups = ray.util.placement_group_table().values()
    assert groups and all(pg["state"] == "REMOVED" for pg in groups)
    deadline = time.monotonic() + 10  # Ray returns resources asynchronously
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2  # the rank actor is gone


def test_killed_rank_actor_fails_the_engine_within_seconds(ray_cluster, model):
    engine = make_engine(model, tensor_parallel_size=2, distributed_executor="ray", distributed_timeout_s=30)
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
