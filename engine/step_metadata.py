"""The flat per-step input of the model: one record, built once per step by the model runner."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class StepMetadata:
    input_ids: torch.Tensor  # [T] int64, new tokens of every scheduled sequence, packed
    positions: torch.Tensor  # [T] int64
    slot_mapping: torch.Tensor  # [T] int64, block_id * block_size + offset
    cu_seqlens_q: torch.Tensor  # [S+1] int32
    seq_lens: torch.Tensor  # [S] int32, KV length after this step
    block_tables: torch.Tensor  # [S, max_blocks] int32, padded with 0
    logits_indices: torch.Tensor  # [S'] int64, rows of hidden states that get logits
    max_q_len: int
    # host copies of cu_seqlens_q / seq_lens for the torch reference attention, so that its
    # per-sequence loop does not read them back from the device in every layer
    cu_seqlens_q_host: list[int] | None = None
    seq_lens_host: list[int] | None = None
    # [T, Hq, D] buffer the attention writes into (a CUDA-graph static buffer), else None
    attn_out: torch.Tensor | None = None
    # rotary (cos, sin), each [T, 1, D]: computed once per forward by the decoder, shared by its layers
    rope: tuple[torch.Tensor, torch.Tensor] | None = None
