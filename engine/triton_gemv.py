"""Skinny GEMM for decode steps of a few tokens: ``y = x @ W^T`` with ``x`` [M, K], M <= 16.

At batch 1 a Llama-8B decode step is 15 GB of weight reads; cuBLAS reads them at about 0.88
of the card's copy bandwidth on the H200 (bench/decode_profile.py), partly because each GEMM
of a few rows is split over K with a second reduce kernel. These kernels stream each weight
row once, one program per ``BLOCK_N`` output features, with no split and no second kernel:

- ``fma``: M = 1, the weight tile times the activation row in fp32, summed once at the end.
- ``dot``: M <= 16, the weight tile on tensor cores against the activations padded to 16
  rows (``W_tile @ x^T``), so the loads are pipelined like any matmul operand.

``skinny_linear`` picks one by M and falls back to ``F.linear`` for shapes it does not
cover (bench/gemv_bench.py measures both against cuBLAS in one run).
"""

from __future__ import annotations

import json
import os
from functools import cache

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

MAX_M = 16
# (BLOCK_N, BLOCK_K, num_warps, num_stages) per kernel; bench/gemv_bench.py --sweep on the H200
FMA_CONFIG = (16, 1024, 8, 2)
DOT_CONFIG = (64, 256, 4, 4)
# per (kernel, N, K) tiles, where the per-shape sweep (bench/gemv_bench.py --per-shape) found better
# ones than the defaults; SPLITSERVE_GEMV_CONFIGS names a JSON file of that sweep to use instead
SHAPE_CONFIGS: dict[tuple[str, int, int], tuple[int, int, int, int]] = {
    # Llama-3.1-8B at TP 1 on the H200 (2026-12-02): o, down, qkv, gate/up, LM head
    ("fma", 4096, 4096): (16, 1024, 8, 3),
    ("fma", 4096, 14336): (16, 1024, 8, 3),
    ("fma", 6144, 4096): (8, 512, 4, 4),
    ("fma", 28672, 4096): (16, 512, 4, 2),
    ("fma", 128256, 4096): (16, 512, 4, 3),
    ("dot", 28672, 4096): (128, 128, 4, 3),
    ("dot", 128256, 4096): (128, 128, 4, 3),
}


@cache
def _shape_configs() -> dict[tuple[str, int, int], tuple[int, int, int, int]]:
    path = os.environ.get("SPLITSERVE_GEMV_CONFIGS")
    if not path:
        return SHAPE_CONFIGS
    with open(path) as f:
        raw: dict[str, dict[str, list[int]]] = json.load(f)  # {"fma": {"NxK": [BLOCK_N, BLOCK_K, warps, stages]}}
    table = {}
    for kernel, by_shape in raw.items():
        for shape, (block_n, block_k, warps, stages) in by_shape.items():
            n, k = (int(v) for v in shape.split("x"))
            table[(kernel, n, k)] = (block_n, block_k, warps, stages)
    return table


def config_for(kernel: str, n: int, k: int) -> tuple[int, int, int, int]:
    return _shape_configs().get((kernel, n, k), FMA_CONFIG if kernel == "fma" else DOT_CONFIG)


@triton.jit
def _gemv_fma_kernel(x_ptr, w_ptr, y_ptr, K, stride_w, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    w_ptrs = w_ptr + rows.to(tl.int64)[:, None] * stride_w + cols[None, :]
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        w = tl.load(w_ptrs + k)
        x = tl.load(x_ptr + k + cols)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    tl.store(y_ptr + rows, tl.sum(acc, axis=1).to(y_ptr.dtype.element_ty))


@triton.jit
def _gemv_dot_kernel(x_ptr, w_ptr, y_ptr, M, K, stride_x, stride_w, stride_y, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    toks = tl.arange(0, 16)
    cols = tl.arange(0, BLOCK_K)
    w_ptrs = w_ptr + rows.to(tl.int64)[:, None] * stride_w + cols[None, :]
    x_ptrs = x_ptr + toks[None, :] * stride_x + cols[:, None]  # x^T tile [BLOCK_K, 16]
    x_mask = toks[None, :] < M
    acc = tl.zeros([BLOCK_N, 16], dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        w = tl.load(w_ptrs + k)
        xt = tl.load(x_ptrs + k, mask=x_mask, other=0.0)
        acc = tl.dot(w, xt, acc)
    y_ptrs = y_ptr + toks[None, :] * stride_y + rows[:, None]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=x_mask)


def enabled() -> bool:
    return os.environ.get("SPLITSERVE_GEMV", "1") != "0"


def covers(x: torch.Tensor, weight: torch.Tensor, config: tuple[int, int, int, int] | None = None) -> bool:
    """Whether ``skinny_linear`` runs its own kernel for this input (else it is ``F.linear``)."""
    interpreted = not x.is_cuda and os.environ.get("TRITON_INTERPRET") == "1"  # CPU tests, fp32 too
    if x.dim() != 2 or not (x.is_cuda or interpreted) or x.shape[0] > MAX_M or x.shape[0] == 0:
        return False
    # fp32 stays with F.linear on a GPU: the dot kernel's tensor cores would round it to tf32
    dtypes = (torch.bfloat16, torch.float16, torch.float32) if interpreted else (torch.bfloat16, torch.float16)
    if x.dtype not in dtypes or weight.dtype != x.dtype or weight.stride(1) != 1:
        return False
    n, k = weight.shape
    block_n, block_k, _, _ = config or config_for("fma" if x.shape[0] == 1 else "dot", n, k)
    return n % block_n == 0 and k % block_k == 0 and x.shape[1] == k and x.stride(1) == 1


def skinny_linear(
    x: torch.Tensor,  # [M, K]
    weight: torch.Tensor,  # [N, K]
    bias: torch.Tensor | None = None,
    *,
    kernel: str | None = None,  # "fma" or "dot"; by M when None
    config: tuple[int, int, int, int] | None = None,  # (BLOCK_N, BLOCK_K, num_warps, num_stages)
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    m = x.shape[0]
    kernel = kernel or ("fma" if m == 1 else "dot")
    config = config or config_for(kernel, *weight.shape)
    if not covers(x, weight, config) or (kernel == "fma" and m != 1):
        return F.linear(x, weight, bias)
    n, k = weight.shape
    block_n, block_k, warps, stages = config
    y = out if out is not None else torch.empty(m, n, dtype=x.dtype, device=x.device)
    grid = (n // block_n,)
    if kernel == "fma":
        _gemv_fma_kernel[grid](
            x, weight, y, k, weight.stride(0), BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages
        )
    else:
        _gemv_dot_kernel[grid](
            x, weight, y, m, k, x.stride(0), weight.stride(0), y.stride(0),
            BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages,
        )  # fmt: skip
    if bias is not None:
        y += bias
    return y


__all__ = ["skinny_linear", "covers", "enabled"]
