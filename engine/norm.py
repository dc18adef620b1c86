"""RMSNorm computed in float32, as the reference models do; on CUDA one fused Triton kernel."""

from __future__ import annotations

import torch
from torch import nn

from engine.attention import fused_ops_enabled


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused_ops_enabled(x):
            from engine.triton_fused import rms_norm

            return rms_norm(x, self.weight, self.eps)
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)

    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual); the fused kernel writes the sum into ``residual`` in place."""
        if fused_ops_enabled(x):
            from engine.triton_fused import rms_norm

            return rms_norm(x, self.weight, self.eps, residual=residual), residual
        residual = x + residual
        return self(residual), residual
