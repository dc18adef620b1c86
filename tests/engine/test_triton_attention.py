"""The Triton paged-attention kernel equals the torch reference on every batch shape.

On a machine without CUDA the kernel runs in the Triton interpreter
(TRITON_INTERPRET=1, set before triton is imported), so shapes stay tiny.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip(
    "triton", reason="triton is not installed (the gpu and dev extras install it; it has no wheel for some platforms)"
)

from engine.attention import paged_attention_reference
from engine.triton_attention import paged_attention_triton

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
HEAD_DIM = 16
NUM_KV_HEADS = 2


def make_batch(
    q_lens: list[int],
    kv_lens: list[int],
    *,
    group: int = 2,
    block_size: int = 16,
    dtype: torch.dtype = torch.float32,
    head_dim: int = HEAD_DIM,
    seed: int = 0,
) -> dict:
    """Random q and a paged cache whose blocks are shuffled across sequences."""
    gen = torch.Generator().manual_seed(seed)
    num_heads = NUM_KV_HEADS * group
    blocks_per_seq = [-(-n // block_size) for n in kv_lens]
    max_blocks = max(blocks_per_seq) + 1  # a spare column: tables are wider than needed
    num_blocks = sum(blocks_per_seq) + 3  # spare blocks that no sequence owns
    perm = torch.randperm(num_blocks, generator=gen)
    block_tables = torch.full((len(kv_lens), max_blocks), num_blocks - 1, dtype=torch.int32)  # [S, max_blocks]
    used = 0
    for i, n in enumerate(blocks_per_seq):
        block_tables[i, :n] = perm[used : used + n].to(torch.int32)
        used += n
    cache_shape = (num_blocks, block_size, NUM_KV_HEADS, head_dim)  # [N, B, Hkv, D]
    k_cache = torch.randn(cache_shape, generator=gen)
    v_cache = torch.randn(cache_shape, generator=gen)
    q = torch.randn(sum(q_lens), num_heads, head_dim, generator=gen)  # [T, Hq, D]
    cu = torch.zeros(len(q_lens) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(q_lens), 0)
    return {
        "q": q.to(DEVICE, dtype),
        "k_cache": k_cache.to(DEVICE, dtype),
        "v_cache": v_cache.to(DEVICE, dtype),
        "cu_seqlens_q": cu.to(DEVICE),
        "seq_lens": torch.tensor(kv_lens, dtype=torch.int32, device=DEVICE),
        "block_tables": block_tables.to(DEVICE),
        "scale": head_dim**-0.5,
    }


def run_triton(batch: dict, **kwargs) -> torch.Tensor:
    out = torch.full_like(batch["q"], float("nan"))  # poison: an unwritten row stays NaN
    result = paged_attention_triton(**batch, out=out, **kwargs)
    assert result.data_ptr() == out.data_ptr()
    return out


def reference_fp32(batch: dict) -> torch.Tensor:
    upcast: dict[str, Any] = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in batch.items()}
    return paged_attention_reference(**upcast)


def assert_matches_reference(batch: dict, **kwargs) -> None:
    out = run_triton(batch, **kwargs)
    assert not out.isnan().any(), "some output rows were never written"
    expected = reference_fp32(batch)
    if batch["q"].dtype == torch.float32:
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("max_q_len", [1, None])
def test_decode_only_batch_matches_reference(max_q_len: int | None) -> None:
    batch = make_batch([1, 1, 1, 1], [5, 17, 33, 48], seed=1)
    assert_matches_reference(batch, max_q_len=max_q_len)


def test_prefill_without_prefix_matches_reference() -> None:
    batch = make_batch([7, 20], [7, 20], seed=2)
    assert_matches_reference(batch)


def test_prefill_after_cached_prefix_matches_reference() -> None:
    batch = make_batch([9, 16], [30, 41], seed=3)
    assert_matches_reference(batch)


@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("block_size", [16, 8])
def test_mixed_prefill_chunks_and_decodes_match_reference(group: int, block_size: int) -> None:
    batch = make_batch([1, 12, 1, 5, 1], [21, 30, 9, 5, 47], group=group, block_size=block_size, seed=4)
    assert_matches_reference(batch, max_q_len=12)


def test_sequence_with_no_new_queries_is_skipped() -> None:
    batch = make_batch([3, 0, 1], [10, 6, 19], seed=5)
    assert_matches_reference(batch)


@pytest.mark.parametrize("max_q_len", [1, None])
def test_split_kv_decode_matches_reference(max_q_len: int | None) -> None:
    batch = make_batch([1, 1, 1], [3, 40, 63], block_size=8, seed=6)
    assert_matches_reference(batch, max_q_len=max_q_len, kv_splits=3)


def test_split_kv_mixed_batch_matches_reference() -> None:
    batch = make_batch([1, 10, 4], [50, 33, 4], group=4, block_size=8, seed=7)
    assert_matches_reference(batch, kv_splits=2)


BF16_NEEDS_GPU = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the Triton interpreter's tl.dot returns garbage for bf16 operands"
)


@pytest.mark.parametrize("dtype", [torch.float16, pytest.param(torch.bfloat16, marks=BF16_NEEDS_GPU)])
def test_half_precision_mixed_batch_matches_reference(dtype: torch.dtype) -> None:
    batch = make_batch([1, 12, 1, 5], [21, 30, 9, 5], group=2, dtype=dtype, seed=8)
    assert_matches_reference(batch)


def test_head_dim_that_is_not_a_power_of_two_is_masked() -> None:
    batch = make_batch([1, 6], [20, 6], head_dim=24, seed=9)
    assert_matches_reference(batch)


def test_strided_query_view_matches_reference() -> None:
    batch = make_batch([1, 8], [13, 8], seed=10)
    qkv = torch.cat([batch["q"], batch["q"]], dim=1)  # [T, 2*Hq, D]: q is a non-contiguous view
    batch["q"] = qkv[:, : batch["q"].shape[1]]
    assert_matches_reference(batch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_decode_replayed_from_cuda_graph_follows_new_seq_lens() -> None:
    batch = make_batch([1, 1, 1], [20, 33, 47], seed=11)
    out = torch.empty_like(batch["q"])
    seq_lens = batch["seq_lens"]
    paged_attention_triton(**batch, max_q_len=1, out=out)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        paged_attention_triton(**batch, max_q_len=1, out=out)
    seq_lens.copy_(torch.tensor([21, 34, 48], dtype=torch.int32))  # the next decode step, in place
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, reference_fp32(batch), rtol=1e-5, atol=1e-5)


def test_split_counts_are_a_few_powers_of_two_so_serving_never_compiles_a_new_kernel(monkeypatch) -> None:
    from engine import triton_attention

    monkeypatch.setattr(triton_attention, "_num_sms", lambda index: 132)
    cuda = torch.device("cuda", 0)  # a device object only: nothing runs on it
    seen = {triton_attention._choose_kv_splits(cuda, programs, tiles) for programs in range(1, 300) for tiles in range(1, 200)}
    assert seen == set(triton_attention.KV_SPLIT_CHOICES)  # every one can occur, and nothing else
    assert triton_attention._choose_kv_splits(cuda, 132, 1000) == 1  # a full grid never splits


def test_warm_up_launches_every_variant_and_leaves_results_unchanged() -> None:
    from engine import triton_attention

    triton_attention.warm_up(DEVICE, torch.float32, num_heads=4, num_kv_heads=2, head_dim=16, block_size=4)
    test_split_kv_mixed_batch_matches_reference()  # the kernels warm_up compiled still compute the right thing
