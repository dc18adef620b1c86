"""A parameter's weight loader: how it takes its part of a full checkpoint tensor.

The loader rides on the ``nn.Parameter`` (as in nano-vllm), so the checkpoint reader needs no
knowledge of sharding. torch does not declare the attribute: it is set and read only here.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

# which part of a fused parameter a checkpoint tensor is: an output index (gate_up) or "q"/"k"/"v"
ShardId = int | str | None


class WeightLoader(Protocol):
    def __call__(self, param: nn.Parameter, full: torch.Tensor, shard_id: ShardId = None, /) -> None: ...


def set_weight_loader(param: nn.Parameter, loader: WeightLoader) -> None:
    setattr(param, "weight_loader", loader)  # noqa: B010 -- torch's Parameter has no such attribute to assign


def weight_loader(param: nn.Parameter) -> WeightLoader | None:
    return getattr(param, "weight_loader", None)
