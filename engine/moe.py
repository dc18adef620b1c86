"""Sparse mixture-of-experts block (Qwen3-MoE): top-k softmax routing, no shared expert.

Experts live in a ModuleDict keyed by their global index. Under tensor
parallelism each expert is TP-sharded over its intermediate size; under expert
parallelism rank r holds whole experts e with e % world == r. Either way the
gate is replicated (every rank routes identically), each rank adds up the
partial outputs it can compute for all tokens, and one all-reduce per block
combines them: the dispatch/combine of EP expressed with a collective gloo has.

Three ways to run the experts, all without a host sync except the CPU one:
  * CPU: loop over the experts in use (one ``unique().tolist()``, free on CPU), exact.
  * CUDA, bf16, ``torch._grouped_mm`` available: tokens sorted by expert, two grouped
    GEMMs over expert weights stacked at load time (``fuse_experts``).
  * CUDA otherwise: every local expert over every token, weighted by a device-side mask
    (more arithmetic, but no sync, so it fits in a CUDA graph).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine import distributed
from engine.attention import fused_ops_enabled
from engine.parallel_linear import MergedColumnParallelLinear, ReplicatedLinear, RowParallelLinear


class Expert(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, parallel: bool = True) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(hidden_size, [intermediate_size] * 2, parallel=parallel)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, parallel=parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [t, H] -> [t, H], partial sum under TP
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.down_proj.weight)


@dataclass(slots=True)
class FusedExperts:
    """The local experts' weights as one tensor each, for the grouped GEMMs."""

    w13: torch.Tensor  # [E_local, 2I, H]
    w2: torch.Tensor  # [E_local, H, I]
    local_index: torch.Tensor  # [E] int64: global expert -> local, E_local if not here
    local_range: torch.Tensor  # [E_local] int64


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
        self.expert_ids = list(expert_ids)
        self.fused: FusedExperts | None = None  # set by fuse_experts

    def expert(self, e: int) -> Expert:
        """The local expert of global index ``e``."""
        expert = self.experts[str(e)]
        assert isinstance(expert, Expert)  # the ModuleDict holds only Experts
        return expert

    def fuse_experts(self) -> None:
        """Stack the local experts' weights (the experts keep views into the stacks, no copy stays)."""
        experts = [self.expert(e) for e in self.expert_ids]
        if not experts:
            return
        w13 = torch.stack([ex.gate_up_proj.weight.data for ex in experts])
        w2 = torch.stack([ex.down_proj.weight.data for ex in experts])
        for i, ex in enumerate(experts):
            ex.gate_up_proj.weight.data = w13[i]
            ex.down_proj.weight.data = w2[i]
        device = w13.device
        local = torch.full((self.num_experts,), len(experts), dtype=torch.long)
        local[torch.tensor(self.expert_ids, dtype=torch.long)] = torch.arange(len(experts))
        self.fused = FusedExperts(w13, w2, local.to(device), torch.arange(len(experts), device=device))

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights [T, k] in x.dtype, expert ids [T, k])."""
        probs = torch.softmax(self.gate(x), dim=-1, dtype=torch.float32)  # [T, E]
        weights, ids = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights.to(x.dtype), ids

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, H]
        weights, ids = self.route(x)
        if not x.is_cuda:
            out = self._forward_sparse(x, weights, ids)
        elif self.fused is not None:
            out = self._forward_grouped(x, weights, ids, self.fused)
        else:
            out = self._forward_dense(x, weights, ids)
        return distributed.all_reduce(out) if self.tp_size > 1 else out

    def _forward_sparse(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for e in torch.unique(ids).tolist():  # one host sync: fine on CPU, not on a GPU
            expert = self.experts[str(e)] if str(e) in self.experts else None
            if expert is None:
                continue  # owned by another expert-parallel rank
            tok, slot = torch.where(ids == e)
            y = expert(x[tok]) * weights[tok, slot, None]
            out.index_add_(0, tok, y)
        return out

    def _forward_grouped(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, fused: FusedExperts) -> torch.Tensor:
        num_tokens, k = ids.shape
        local = fused.local_index[ids.reshape(-1)]  # [T*k], E_local for experts of other ranks
        order = torch.argsort(local, stable=True)  # [T*k], grouped by local expert, others last
        offs = torch.searchsorted(local[order], fused.local_range, right=True).to(torch.int32)  # [E_local] group ends
        h = torch._grouped_mm(x[order // k], fused.w13.transpose(1, 2), offs=offs)  # [T*k, 2I/tp]
        y = torch._grouped_mm(_silu_and_mul(h), fused.w2.transpose(1, 2), offs=offs)  # [T*k, H]
        # rows past the last group (other ranks' experts) are not written by the GEMM: mask, do not multiply
        y = torch.empty_like(y).index_copy_(0, order, y)  # back to (token, slot) order
        keep = (local < fused.local_range.numel())[:, None]
        y = torch.where(keep, y * weights.reshape(-1, 1), torch.zeros((), dtype=y.dtype, device=y.device))
        return y.view(num_tokens, k, -1).sum(dim=1)  # [T, H]

    def _forward_dense(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for e in self.expert_ids:
            w = (weights * (ids == e)).sum(dim=-1, keepdim=True)  # [T, 1], 0 where e was not chosen
            out += self.experts[str(e)](x) * w
        return out


def _silu_and_mul(h: torch.Tensor) -> torch.Tensor:  # [T, 2I] -> [T, I]
    if fused_ops_enabled(h):
        from engine.triton_fused import silu_and_mul

        return silu_and_mul(h)
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up


def grouped_mm_works(device: torch.device) -> bool:
    """Whether ``torch._grouped_mm`` exists and runs for bf16 on ``device`` (it needs a recent GPU)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        a = torch.ones(32, 16, dtype=torch.bfloat16, device=device)
        b = torch.ones(2, 16, 16, dtype=torch.bfloat16, device=device)
        offs = torch.tensor([16, 32], dtype=torch.int32, device=device)
        y = torch._grouped_mm(a, b.transpose(1, 2), offs=offs)
        return bool((y == 16).all())
    except Exception:  # any failure means: use the fallback
        return False
