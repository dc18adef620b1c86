"""Vocabulary-parallel embedding and LM head: each rank holds a contiguous vocab slice."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine import distributed
from engine.parallel_linear import linear
from engine.weight_loader import ShardId, set_weight_loader


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.tp_rank = distributed.tp_rank()
        self.tp_size = distributed.tp_size()
        self.vocab_size = vocab_size
        self.shard_size = -(-vocab_size // self.tp_size)  # ceil: the last shard is zero-padded
        self.vocab_start = self.tp_rank * self.shard_size
        self.weight = nn.Parameter(torch.empty(self.shard_size, hidden_size), requires_grad=False)
        set_weight_loader(self.weight, self.weight_loader)

    def weight_loader(self, param: nn.Parameter, full: torch.Tensor, shard_id: ShardId = None, /) -> None:
        part = full[self.vocab_start : self.vocab_start + self.shard_size]
        param.data.zero_()
        param.data[: part.shape[0]].copy_(part)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [T] -> [T, H]
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.vocab_start
        mask = (local >= 0) & (local < self.shard_size)
        y = F.embedding(local.clamp(0, self.shard_size - 1), self.weight) * mask.unsqueeze(-1)
        return distributed.all_reduce(y)


class ParallelLMHead(VocabParallelEmbedding):
    """Projects hidden states to logits; gathers vocab shards to full-vocab logits."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [S, H] -> [S, V]
        logits = linear(hidden, self.weight)  # [S, V / tp]
        if self.tp_size > 1:
            logits = distributed.all_gather(logits, dim=-1)
        return logits[:, : self.vocab_size]
