"""The skinny decode GEMM (engine/triton_gemv.py) equals F.linear; on CPU through the Triton interpreter."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from engine import triton_gemv

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if torch.cuda.is_available() else torch.float32


@pytest.mark.parametrize("kernel,m", [("fma", 1), ("dot", 1), ("dot", 3), ("dot", 16)])
def test_skinny_linear_equals_f_linear(kernel, m):
    torch.manual_seed(0)
    config = (16, 64, 4, 2) if kernel == "fma" else (32, 64, 4, 2)
    x = torch.randn(m, 256, dtype=DTYPE, device=DEVICE)
    w = torch.randn(96, 256, dtype=DTYPE, device=DEVICE) * 0.05
    b = torch.randn(96, dtype=DTYPE, device=DEVICE)
    assert triton_gemv.covers(x, w, config)
    got = triton_gemv.skinny_linear(x, w, b, kernel=kernel, config=config)
    ref = F.linear(x.float(), w.float(), b.float())
    assert got.shape == (m, 96) and got.dtype == DTYPE
    torch.testing.assert_close(got.float(), ref, rtol=2e-2, atol=2e-2)


def test_shapes_it_does_not_cover_fall_back_to_f_linear():
    x = torch.randn(2, 100, dtype=DTYPE, device=DEVICE)  # K not a multiple of the tile
    w = torch.randn(48, 100, dtype=DTYPE, device=DEVICE)
    assert not triton_gemv.covers(x, w)
    torch.testing.assert_close(triton_gemv.skinny_linear(x, w), F.linear(x, w))
    big = torch.randn(triton_gemv.MAX_M + 1, 512, dtype=DTYPE, device=DEVICE)
    assert not triton_gemv.covers(big, torch.randn(64, 512, dtype=DTYPE, device=DEVICE))
