"""StepMetadata <-> the StepPlan message rank 0 sends the other ranks (contracts/rank_plan.py).

Every tensor travels as the bytes of a flat int64 array: no pickle, one copy each way.
"""

from __future__ import annotations

import numpy as np
import torch

from contracts.rank_plan import StepPlan
from engine.step_metadata import StepMetadata

_FIELDS = ("input_ids", "positions", "slot_mapping", "cu_seqlens_q", "seq_lens", "block_tables", "logits_indices")
_DTYPES = {
    "input_ids": torch.long,
    "positions": torch.long,
    "slot_mapping": torch.long,
    "cu_seqlens_q": torch.int32,
    "seq_lens": torch.int32,
    "block_tables": torch.int32,
    "logits_indices": torch.long,
}


def step_plan(meta: StepMetadata) -> StepPlan:
    """``meta`` must hold CPU tensors (the runner's host copy)."""
    arrays = {f: getattr(meta, f).numpy().reshape(-1).astype(np.int64).tobytes() for f in _FIELDS}
    return StepPlan(max_q_len=meta.max_q_len, num_seqs=int(meta.seq_lens.shape[0]), **arrays)


def step_metadata(plan: StepPlan, device: torch.device) -> StepMetadata:
    tensors: dict[str, torch.Tensor] = {}
    host: dict[str, list[int]] = {}
    for field in _FIELDS:
        part = np.frombuffer(getattr(plan, field), dtype=np.int64)
        if field in ("cu_seqlens_q", "seq_lens"):
            host[field] = part.tolist()
        tensors[field] = torch.from_numpy(part.copy()).to(_DTYPES[field]).to(device, non_blocking=True)
    tensors["block_tables"] = tensors["block_tables"].reshape(plan.num_seqs, -1)  # [S, max_blocks]
    t = tensors
    return StepMetadata(
        t["input_ids"],
        t["positions"],
        t["slot_mapping"],
        t["cu_seqlens_q"],
        t["seq_lens"],
        t["block_tables"],
        t["logits_indices"],
        max_q_len=plan.max_q_len,
        cu_seqlens_q_host=host["cu_seqlens_q"],
        seq_lens_host=host["seq_lens"],
    )
