"""The attention module of a decoder layer: qkv projection, rope, paged KV write and attention."""

from __future__ import annotations

import torch
from torch import nn

from engine.attention import fused_ops_enabled, paged_attention, write_kv
from engine.norm import RMSNorm
from engine.parallel_linear import QKVParallelLinear, RowParallelLinear
from engine.rotary import RotaryEmbedding
from engine.step_metadata import StepMetadata


class PagedAttention(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        rotary: RotaryEmbedding,
        qkv_bias: bool = False,
        qk_norm_eps: float | None = None,
    ) -> None:
        super().__init__()
        self.qkv_proj = QKVParallelLinear(hidden_size, head_dim, num_heads, num_kv_heads, bias=qkv_bias)
        self.num_heads = self.qkv_proj.num_heads  # per TP shard
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.head_dim = head_dim
        self.o_proj = RowParallelLinear(num_heads * head_dim, hidden_size, bias=False)
        self.rotary = rotary
        self.scale = head_dim**-0.5
        # Qwen3: RMSNorm over head_dim on each q and k head before rope
        self.q_norm = RMSNorm(head_dim, qk_norm_eps) if qk_norm_eps is not None else None
        self.k_norm = RMSNorm(head_dim, qk_norm_eps) if qk_norm_eps is not None else None
        self.k_cache = torch.empty(0)  # [N, B, Hkv, D], bound by the model runner
        self.v_cache = torch.empty(0)

    def forward(self, x: torch.Tensor, meta: StepMetadata) -> torch.Tensor:  # x [T, H]
        qkv = self.qkv_proj(x)
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.reshape(-1, self.num_heads, self.head_dim)  # [T, Hq, D]
        k = k.reshape(-1, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        v = v.reshape(-1, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.k_cache.numel() and meta.rope is not None and fused_ops_enabled(q):
            from engine.triton_fused import rope_and_cache

            q = rope_and_cache(q, k, v, *meta.rope, self.k_cache, self.v_cache, meta.slot_mapping)
        else:
            q, k = self.rotary(meta.positions, q, k, meta.rope)
            if self.k_cache.numel():
                write_kv(k, v, self.k_cache, self.v_cache, meta.slot_mapping)
        o = paged_attention(q, self.k_cache, self.v_cache, meta, self.scale)  # [T, Hq, D]
        return self.o_proj(o.reshape(-1, self.num_heads * self.head_dim))
