"""Fused Triton kernels for the small per-layer ops of a decoder step.

A Llama-8B decode step at batch 1 spent ~1.8 ms of its 5.9 ms GPU time in ~30 small
elementwise kernels per layer (RMSNorm's pow/mean/rsqrt/mul, residual adds, rotary's
neg/cat/mul/add, two index_copy into the cache, SiLU and the gate*up product).
These kernels do each group in one pass over the data:

- ``rms_norm``: optional residual add + RMSNorm, one program per token row.
- ``rope_and_cache``: rotary on q and k, k and v stored into their paged-cache slots.
- ``silu_and_mul``: SiLU(gate) * up from the merged gate/up projection.

Each keeps the torch reference's rounding points where they matter (the residual
sum is rounded to the model dtype before it is normalised, as ``x + y`` in bf16
would be; the normalised row is rounded before the weight multiplies it) and
computes in fp32 in between. The torch modules call them only on CUDA
(``engine.attention.fused_ops_enabled``); on CPU tests run them under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    out_ptr,
    stride_x,
    stride_res,
    stride_out,
    hidden,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        # round the sum to the model dtype first: the next layer adds to exactly this value
        x = x.to(tl.float32) + tl.load(res_ptr + row * stride_res + cols, mask=mask, other=0.0).to(tl.float32)
        x = x.to(res_ptr.dtype.element_ty)
        tl.store(res_ptr + row * stride_res + cols, x, mask=mask)
    x32 = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x32 * x32, axis=0) / hidden + eps)
    normed = (x32 * rstd).to(out_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, (normed * w).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(
    x: torch.Tensor,  # [T, H], last dim contiguous
    weight: torch.Tensor,  # [H]
    eps: float,
    residual: torch.Tensor | None = None,  # [T, H]: updated in place to x + residual
) -> torch.Tensor:  # [T, H] normalised (x + residual when given)
    hidden = x.shape[-1]
    x2 = x.reshape(-1, hidden)
    out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    if x2.shape[0] == 0:
        return out.view(x.shape)
    res = residual.view(-1, hidden) if residual is not None else x2
    if x2.stride(-1) != 1 or res.stride(-1) != 1:
        raise ValueError("rms_norm needs a contiguous last dimension")
    block = triton.next_power_of_2(hidden)
    _rms_norm_kernel[(x2.shape[0],)](
        x2,
        res,
        weight,
        out,
        x2.stride(0),
        res.stride(0),
        out.stride(0),
        hidden,
        eps,
        HAS_RESIDUAL=residual is not None,
        BLOCK=block,
        num_warps=max(1, min(16, block // 256)),
    )
    return out.view(x.shape)


@triton.jit
def _rope_and_cache_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    cos_ptr,
    sin_ptr,
    slot_ptr,
    q_out_ptr,
    k_cache_ptr,
    v_cache_ptr,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_cos,
    stride_sin,
    stride_qot,
    stride_qoh,
    stride_cb,
    stride_cs,
    stride_ch,
    stride_vb,
    stride_vs,
    stride_vch,
    NUM_Q_HEADS: tl.constexpr,
    HALF: tl.constexpr,
    HALF_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    """Program (token, head): heads < NUM_Q_HEADS rotate a query head; the rest a key head (+ its value)."""
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    d = tl.arange(0, HALF_PAD)
    mask = d < HALF
    # the table holds cat(freqs, freqs): both halves use the first half's cos and sin
    cos = tl.load(cos_ptr + token * stride_cos + d, mask=mask, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + token * stride_sin + d, mask=mask, other=0.0).to(tl.float32)
    if head < NUM_Q_HEADS:
        src = q_ptr + token * stride_qt + head * stride_qh
        x1 = tl.load(src + d, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(src + HALF + d, mask=mask, other=0.0).to(tl.float32)
        dst = q_out_ptr + token * stride_qot + head * stride_qoh
        tl.store(dst + d, (x1 * cos - x2 * sin).to(q_out_ptr.dtype.element_ty), mask=mask)
        tl.store(dst + HALF + d, (x2 * cos + x1 * sin).to(q_out_ptr.dtype.element_ty), mask=mask)
    else:
        kv_head = head - NUM_Q_HEADS
        slot = tl.load(slot_ptr + token)
        block = slot // BLOCK_SIZE
        offset = slot % BLOCK_SIZE
        src = k_ptr + token * stride_kt + kv_head * stride_kh
        x1 = tl.load(src + d, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(src + HALF + d, mask=mask, other=0.0).to(tl.float32)
        dst = k_cache_ptr + block * stride_cb + offset * stride_cs + kv_head * stride_ch
        tl.store(dst + d, (x1 * cos - x2 * sin).to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(dst + HALF + d, (x2 * cos + x1 * sin).to(k_cache_ptr.dtype.element_ty), mask=mask)
        vsrc = v_ptr + token * stride_vt + kv_head * stride_vh
        vdst = v_cache_ptr + block * stride_vb + offset * stride_vs + kv_head * stride_vch
        tl.store(vdst + d, tl.load(vsrc + d, mask=mask), mask=mask)
        tl.store(vdst + HALF + d, tl.load(vsrc + HALF + d, mask=mask), mask=mask)


def rope_and_cache(
    q: torch.Tensor,  # [T, Hq, D], may be a strided view of the qkv projection
    k: torch.Tensor,  # [T, Hkv, D]
    v: torch.Tensor,  # [T, Hkv, D]
    cos: torch.Tensor,  # [T, 1, D] (or [T, D]), cat(freqs, freqs).cos()
    sin: torch.Tensor,  # [T, 1, D]
    k_cache: torch.Tensor,  # [N, B, Hkv, D]
    v_cache: torch.Tensor,  # [N, B, Hkv, D]
    slot_mapping: torch.Tensor,  # [T] int64, block_id * B + offset
) -> torch.Tensor:  # [T, Hq, D] rotated queries, contiguous
    """Rotary on q and k; rotated k and v go straight into their cache slots (k is never materialised)."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    if head_dim % 2 or q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("rope_and_cache needs an even head_dim and contiguous heads")
    q_out = torch.empty(num_tokens, num_heads, head_dim, dtype=q.dtype, device=q.device)
    if num_tokens == 0:
        return q_out
    half = head_dim // 2
    _rope_and_cache_kernel[(num_tokens, num_heads + num_kv_heads)](
        q,
        k,
        v,
        cos,
        sin,
        slot_mapping,
        q_out,
        k_cache,
        v_cache,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        cos.stride(0),
        sin.stride(0),
        q_out.stride(0),
        q_out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        NUM_Q_HEADS=num_heads,
        HALF=half,
        HALF_PAD=triton.next_power_of_2(half),
        BLOCK_SIZE=k_cache.shape[1],
        num_warps=1,
    )
    return q_out


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_out, inter, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + inter + cols, mask=mask, other=0.0).to(tl.float32)
    act = gate / (1.0 + tl.exp(-gate))
    tl.store(out_ptr + row * stride_out + cols, (act * up).to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:  # [T, 2I] (gate | up) -> [T, I]
    inter = x.shape[-1] // 2
    x2 = x.reshape(-1, 2 * inter)
    out = torch.empty(x2.shape[0], inter, dtype=x.dtype, device=x.device)
    if x2.shape[0] == 0:
        return out
    if x2.stride(-1) != 1:
        raise ValueError("silu_and_mul needs a contiguous last dimension")
    block = min(1024, triton.next_power_of_2(inter))
    _silu_and_mul_kernel[(x2.shape[0], triton.cdiv(inter, block))](
        x2,
        out,
        x2.stride(0),
        out.stride(0),
        inter,
        BLOCK=block,
        num_warps=4,
    )
    return out.view(*x.shape[:-1], inter)


__all__ = ["rms_norm", "rope_and_cache", "silu_and_mul"]
