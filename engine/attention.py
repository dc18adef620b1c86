"""Paged attention: the torch reference path (CPU and GPU) and the dispatcher.

KV cache per layer (DESIGN.md layout, one block = [block_size, num_kv_heads, head_dim]):
    k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]
One call serves a mixed batch: each sequence brings q_len new query tokens
(a prefill chunk, possibly after a cached prefix or earlier chunks, or one decode
token) whose K/V were already written to the cache by ``write_kv``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from engine.step_metadata import StepMetadata


def write_kv(
    k: torch.Tensor,  # [T, Hkv, D]
    v: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,  # [N, B, Hkv, D]
    v_cache: torch.Tensor,  # [N, B, Hkv, D]
    slot_mapping: torch.Tensor,  # [T] int64, block_id * B + offset
) -> None:
    """Scatter the new tokens' K/V into their cache slots."""
    num_blocks, block_size = k_cache.shape[:2]
    k_cache.view(num_blocks * block_size, *k_cache.shape[2:]).index_copy_(0, slot_mapping, k)
    v_cache.view(num_blocks * block_size, *v_cache.shape[2:]).index_copy_(0, slot_mapping, v)


def paged_attention_reference(
    q: torch.Tensor,  # [T, Hq, D], sequences packed one after another
    k_cache: torch.Tensor,  # [N, B, Hkv, D]
    v_cache: torch.Tensor,  # [N, B, Hkv, D]
    cu_seqlens_q: torch.Tensor,  # [S+1] int32, start of each sequence's queries in q
    seq_lens: torch.Tensor,  # [S] int32, KV length of each sequence including its new tokens
    block_tables: torch.Tensor,  # [S, max_blocks] int32
    scale: float,
    cu_seqlens_q_host: list[int] | None = None,
    seq_lens_host: list[int] | None = None,
) -> torch.Tensor:  # [T, Hq, D]
    """Causal attention over each sequence's paged KV, one sequence at a time.

    Query j of a sequence with q_len queries and kv_len keys sits at position
    kv_len - q_len + j and sees keys 0..that position. Per-sequence computation
    keeps results independent of what else is in the batch. The ``*_host`` lists,
    when given, spare a device-to-host read of the same values.
    """
    block_size = k_cache.shape[1]
    num_heads, num_kv_heads = q.shape[1], k_cache.shape[2]
    out = torch.empty_like(q)
    tables = block_tables.long()  # one conversion, not one per sequence
    gqa = num_kv_heads != num_heads
    starts = cu_seqlens_q_host if cu_seqlens_q_host is not None else cu_seqlens_q.tolist()
    lens = seq_lens_host if seq_lens_host is not None else seq_lens.tolist()
    for i, kv_len in enumerate(lens):
        q_start, q_end = starts[i], starts[i + 1]
        q_len = q_end - q_start
        if q_len == 0:
            continue
        n_blocks = (kv_len + block_size - 1) // block_size
        blocks = tables[i, :n_blocks]
        k = k_cache[blocks].flatten(0, 1)[:kv_len]  # [kv_len, Hkv, D]
        v = v_cache[blocks].flatten(0, 1)[:kv_len]
        qi = q[q_start:q_end].transpose(0, 1)  # [Hq, q_len, D]
        k = k.transpose(0, 1)  # [Hkv, kv_len, D]
        v = v.transpose(0, 1)
        # query j may see keys 0 .. kv_len - q_len + j; a decode query sees them all
        if q_len == 1:
            mask = torch.ones(1, kv_len, dtype=torch.bool, device=q.device)
        else:
            q_pos = torch.arange(kv_len - q_len, kv_len, device=q.device)[:, None]
            k_pos = torch.arange(kv_len, device=q.device)[None, :]
            mask = k_pos <= q_pos  # [q_len, kv_len]
        # the same mask in both cases keeps one SDPA kernel, so a token's result never depends on its chunk
        o = F.scaled_dot_product_attention(qi, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
        out[q_start:q_end] = o.transpose(0, 1)
    return out


def use_triton(device: torch.device) -> bool:
    """Triton on CUDA unless SPLITSERVE_ATTENTION=torch; the reference elsewhere."""
    if os.environ.get("SPLITSERVE_ATTENTION", "") == "torch":
        return False
    return device.type == "cuda"


def fused_ops_enabled(x: torch.Tensor) -> bool:
    """Fused Triton kernels (engine/triton_fused.py) for the small per-layer ops of tensors on CUDA.

    SPLITSERVE_FUSED_OPS=0 keeps the unfused torch ops (the CPU path) on a GPU too, for comparison.
    """
    return x.is_cuda and os.environ.get("SPLITSERVE_FUSED_OPS", "1") != "0"


def paged_attention(
    q: torch.Tensor,  # [T, Hq, D]
    k_cache: torch.Tensor,  # [N, B, Hkv, D]
    v_cache: torch.Tensor,
    meta: StepMetadata,
    scale: float,
) -> torch.Tensor:  # [T, Hq, D]
    """Dispatch to the Triton kernel on GPU and to the reference elsewhere."""
    if use_triton(q.device):
        from engine.triton_attention import paged_attention_triton

        return paged_attention_triton(
            q, k_cache, v_cache, meta.cu_seqlens_q, meta.seq_lens, meta.block_tables, scale, meta.max_q_len, out=meta.attn_out
        )
    return paged_attention_reference(
        q,
        k_cache,
        v_cache,
        meta.cu_seqlens_q,
        meta.seq_lens,
        meta.block_tables,
        scale,
        meta.cu_seqlens_q_host,
        meta.seq_lens_host,
    )
