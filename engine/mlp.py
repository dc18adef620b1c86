"""Gated (SwiGLU) feed-forward block, tensor-parallel over the intermediate size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.attention import fused_ops_enabled
from engine.parallel_linear import MergedColumnParallelLinear, RowParallelLinear

SUPPORTED_ACTIVATIONS = ("silu",)


class GatedMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str = "silu", bias: bool = False) -> None:
        super().__init__()
        if hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"hidden_act {hidden_act!r} is not supported; supported: {', '.join(SUPPORTED_ACTIVATIONS)}")
        self.gate_up_proj = MergedColumnParallelLinear(hidden_size, [intermediate_size] * 2, bias=bias)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, H] -> [T, H]
        gate_up = self.gate_up_proj(x)  # [T, 2I/tp]
        if fused_ops_enabled(gate_up):
            from engine.triton_fused import silu_and_mul

            return self.down_proj(silu_and_mul(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)  # [T, I/tp] each
        return self.down_proj(F.silu(gate) * up)
