"""Sparse mixture-of-experts block (Qwen3-MoE): top-k softmax routing, no shared expert.

Experts live in a ModuleDict keyed by their global index. Under tensor
parallelism each expert is TP-sharded over its intermediate size; under expert
parallelism rank r holds whole experts e with e % world == r. Either way the
gate is replicated (every rank routes identically), each rank adds up the
partial outputs it can compute for all tokens, and one all-reduce per block
combines them: the dispatch/combine of EP expressed with a collective gloo has.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine import distributed
from engine.parallel_linear import MergedColumnParallelLinear, ReplicatedLinear, RowParallelLinear


class Expert(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, parallel: bool = True) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(hidden_size, [intermediate_size] * 2, parallel=parallel)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, parallel=parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [t, H] -> [t, H], partial sum under TP
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.down_proj.weight)


class SparseMoE(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        moe_intermediate_size: int,
        num_experts: int,
        top_k: int,
        norm_topk_prob: bool,
        expert_ids: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.top_k = top_k
        self.norm_topk_prob = norm_topk_prob
        self.gate = ReplicatedLinear(hidden_size, num_experts)
        ep = distributed.expert_parallel()
        self.tp_size = distributed.tp_size()
        if expert_ids is None:
            rank, world = distributed.tp_rank(), distributed.tp_size()
            expert_ids = [e for e in range(num_experts) if e % world == rank] if ep else list(range(num_experts))
        self.experts = nn.ModuleDict({str(e): Expert(hidden_size, moe_intermediate_size, parallel=not ep) for e in expert_ids})

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights [T, k] in x.dtype, expert ids [T, k])."""
        probs = torch.softmax(self.gate(x), dim=-1, dtype=torch.float32)  # [T, E]
        weights, ids = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights.to(x.dtype), ids

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, H]
        weights, ids = self.route(x)
        out = torch.zeros_like(x)
        # one host sync per layer to find the experts in use; a fused kernel replaces this on GPU
        for e in torch.unique(ids).tolist():
            expert = self.experts[str(e)] if str(e) in self.experts else None
            if expert is None:
                continue  # owned by another expert-parallel rank
            tok, slot = torch.where(ids == e)
            y = expert(x[tok]) * weights[tok, slot, None]
            out.index_add_(0, tok, y)
        return distributed.all_reduce(out) if self.tp_size > 1 else out
