"""The fused Triton kernels (RMSNorm + residual, rotary + KV-cache write, SiLU*up) equal the torch ops they replace.

On a machine without CUDA the kernels run in the Triton interpreter
(TRITON_INTERPRET=1, set before triton is imported), so shapes stay tiny.
"""

from __future__ import annotations

import os
import random

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip(
    "triton", reason="triton is not installed (the gpu and dev extras install it; it has no wheel for some platforms)"
)

from contracts.sampling import SamplingParams
from engine import attention_layer, mlp, norm
from engine.attention import write_kv
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.norm import RMSNorm
from engine.rotary import RotaryEmbedding
from engine.triton_fused import rms_norm, rope_and_cache, silu_and_mul

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(out.float(), ref.float(), atol=tol * max(1.0, ref.abs().max().item()), rtol=tol)


def unfused(monkeypatch) -> None:
    """Force the torch ops even on CUDA (the reference)."""
    monkeypatch.setenv("SPLITSERVE_FUSED_OPS", "0")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("hidden", [64, 96])  # 96: a width that is not a power of two (masked tail)
def test_rms_norm_with_residual_equals_add_then_norm(monkeypatch, dtype, hidden):
    unfused(monkeypatch)
    gen = torch.Generator().manual_seed(hidden)
    layer = RMSNorm(hidden, 1e-6).to(DEVICE, dtype)
    layer.weight.copy_(torch.randn(hidden, generator=gen))
    x = torch.randn(5, hidden, generator=gen).to(DEVICE, dtype)
    residual = torch.randn(5, hidden, generator=gen).to(DEVICE, dtype)
    ref_out, ref_sum = layer.add_and_norm(x, residual.clone())
    res = residual.clone()
    out = rms_norm(x, layer.weight, layer.eps, residual=res)
    close(res, ref_sum, dtype)  # the residual stream now holds x + residual
    close(out, ref_out, dtype)
    close(rms_norm(x, layer.weight, layer.eps), layer(x), dtype)  # no residual: plain RMSNorm, x untouched


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rope_and_cache_rotates_queries_and_writes_rotated_keys_and_values_to_their_slots(monkeypatch, dtype):
    unfused(monkeypatch)
    gen = torch.Generator().manual_seed(7)
    tokens, hq, hkv, d, blocks, block_size = 6, 4, 2, 16, 5, 4
    rotary = RotaryEmbedding(d, 10000.0).to(DEVICE)
    qkv = torch.randn(tokens, (hq + 2 * hkv) * d, generator=gen).to(DEVICE, dtype)  # as the projection returns it
    q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
    q, k, v = q.view(tokens, hq, d), k.view(tokens, hkv, d), v.view(tokens, hkv, d)  # strided views
    positions = torch.tensor([0, 3, 4, 9, 17, 2], device=DEVICE)
    slots = torch.tensor(random.Random(1).sample(range(blocks * block_size), tokens), device=DEVICE)
    cos_sin = rotary.cos_sin(positions, dtype)
    poison = torch.full((blocks, block_size, hkv, d), float("nan"), dtype=dtype, device=DEVICE)

    ref_q, ref_k = rotary(positions, q, k, cos_sin)
    ref_kc, ref_vc = poison.clone(), poison.clone()
    write_kv(ref_k, v, ref_kc, ref_vc, slots)
    kc, vc = poison.clone(), poison.clone()
    out_q = rope_and_cache(q, k, v, *cos_sin, kc, vc, slots)

    close(out_q, ref_q, dtype)
    close(kc[~kc.isnan()], ref_kc[~ref_kc.isnan()], dtype)
    assert torch.equal(vc.isnan(), ref_vc.isnan())  # exactly the tokens' slots written, nothing else
    assert torch.equal(kc.isnan(), ref_kc.isnan())
    assert torch.equal(vc[~vc.isnan()], ref_vc[~ref_vc.isnan()])  # values are copied bit for bit


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_silu_and_mul_equals_silu_gate_times_up(dtype):
    gen = torch.Generator().manual_seed(3)
    x = (3 * torch.randn(4, 2 * 40, generator=gen)).to(DEVICE, dtype)  # I = 40: a masked tail
    gate, up = x.chunk(2, dim=-1)
    close(silu_and_mul(x), F.silu(gate.float()) * up.float(), dtype)


@pytest.fixture
def fused_on_cpu(monkeypatch):
    """Route every layer through the fused kernels (the interpreter on CPU), as on a GPU."""
    for module in (norm, mlp, attention_layer):
        monkeypatch.setattr(module, "fused_ops_enabled", lambda x: True)


def generate(model: str, prompts: list[list[int]]) -> list[list[int]]:
    engine = LLMEngine(EngineConfig(model=model, dtype="float32", num_kv_blocks=32, enable_prefix_caching=False))
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, params)
    outs: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for o in engine.step():
            if o.finished:
                outs[o.request_id] = o.output_token_ids
    return [outs[f"r{i}"] for i in range(len(prompts))]


@pytest.mark.parametrize("arch", ["llama3", "qwen3"])  # qwen3: q/k norm before the fused rope
def test_model_with_fused_kernels_generates_the_same_greedy_tokens(checkpoints, monkeypatch, request, arch):
    rng = random.Random(5)
    prompts = [[rng.randrange(3, 380) for _ in range(n)] for n in (7, 19)]
    unfused(monkeypatch)
    reference = generate(str(checkpoints[arch]), prompts)
    request.getfixturevalue("fused_on_cpu")
    assert generate(str(checkpoints[arch]), prompts) == reference
