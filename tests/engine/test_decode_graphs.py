"""The padded static-buffer decode path (CUDA graphs on a GPU) changes no token.

On CPU nothing is captured, but ``DecodeGraphs.run`` executes the same padded batch on
the same static buffers, scratch block included, so these tests check the padding.
"""

from __future__ import annotations

import random

import pytest
import torch

from contracts.sampling import SamplingParams
from engine.config import EngineConfig
from engine.cuda_graphs import DecodeGraphs, decode_buckets
from engine.llm_engine import LLMEngine
from engine.model_runner import ModelRunner
from engine.moe import SparseMoE

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def generate(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams = GREEDY) -> list[list[int]]:
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, params)
    outs: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for o in engine.step():
            if o.finished:
                outs[o.request_id] = o.output_token_ids
    return [outs[f"r{i}"] for i in range(len(prompts))]


def prompts(n: int) -> list[list[int]]:
    rng = random.Random(n)
    return [[rng.randrange(3, 380) for _ in range(rng.randrange(2, 40))] for _ in range(n)]


@pytest.fixture
def static_decode(monkeypatch):
    monkeypatch.setattr(ModelRunner, "_graph_device", lambda self: True)


def test_decode_buckets_end_at_the_largest_batch():
    assert decode_buckets(1) == [1]
    assert decode_buckets(6) == [1, 2, 4, 6]
    assert decode_buckets(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]


@pytest.mark.parametrize("arch", ["llama3", "qwen3-moe"])
def test_padded_decode_steps_equal_eager_steps(checkpoints, static_decode, arch):
    model = str(checkpoints[arch])
    batch = prompts(5)  # bucket 8: three padded rows
    cfg = dict(model=model, dtype="float32", num_kv_blocks=64, max_num_seqs=6, enable_prefix_caching=False)
    eager = LLMEngine(EngineConfig(enforce_eager=True, **cfg))
    assert eager.runner.graphs is None
    padded = LLMEngine(EngineConfig(**cfg))
    assert isinstance(padded.runner.graphs, DecodeGraphs)
    assert padded.runner.kv.scratch_block == 64 and padded.blocks.num_blocks == 64
    assert generate(padded, batch) == generate(eager, batch)


def test_scratch_block_takes_the_padded_rows_writes(checkpoints, static_decode):
    engine = LLMEngine(
        EngineConfig(
            model=str(checkpoints["llama3"]), dtype="float32", num_kv_blocks=32, max_num_seqs=4, enable_prefix_caching=False
        )
    )
    kv = engine.runner.kv
    generate(engine, prompts(3))  # decode at bucket 4: one padded row per step
    assert kv.k[0][kv.scratch_block].abs().sum() > 0


def test_moe_paths_agree_on_cpu():
    torch.manual_seed(0)
    moe = SparseMoE(64, 32, 8, 2, True).to(torch.bfloat16)
    for p in moe.parameters():
        p.data.normal_(0, 0.1)
    x = torch.randn(13, 64, dtype=torch.bfloat16)
    weights, ids = moe.route(x)
    exact = moe._forward_sparse(x, weights, ids)
    torch.testing.assert_close(moe._forward_dense(x, weights, ids), exact)
    if hasattr(torch, "_grouped_mm"):
        moe.fuse_experts()
        assert moe.fused is not None
        torch.testing.assert_close(moe._forward_grouped(x, weights, ids, moe.fused), exact)
        torch.testing.assert_close(moe._forward_sparse(x, weights, ids), exact)  # experts now view the stacks
