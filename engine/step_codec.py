"""Compact wire form of a step plan for the non-zero ranks: one int64 array per message, no pickle.

Rank 0 encodes the host-side StepMetadata it built anyway, as
``[STEP, max_q_len, S, len_1..len_7, field_1..field_7]`` (8 bytes per token and
per block-table entry), and sends it over a pipe per rank. KV transfer commands
ride the same channel: ``[EXPORT, n, block_ids...]``, ``[IMPORT, n, block_ids...]``
(the rows follow as a broadcast), ``[STOP]``.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.step_metadata import StepMetadata

STEP, EXPORT, IMPORT, STOP = 0, 1, 2, 3
_FIELDS = ("input_ids", "positions", "slot_mapping", "cu_seqlens_q", "seq_lens", "block_tables", "logits_indices")
_DTYPES = {"input_ids": torch.long, "positions": torch.long, "slot_mapping": torch.long, "cu_seqlens_q": torch.int32,
           "seq_lens": torch.int32, "block_tables": torch.int32, "logits_indices": torch.long}


def encode_step(meta: StepMetadata) -> bytes:
    """``meta`` must hold CPU tensors (the runner's host copy)."""
    arrays = [getattr(meta, f).numpy().reshape(-1).astype(np.int64) for f in _FIELDS]
    head = [STEP, meta.max_q_len, int(meta.seq_lens.shape[0])] + [a.size for a in arrays]
    return np.concatenate([np.array(head, dtype=np.int64), *arrays]).tobytes()


def decode(frame: bytes) -> np.ndarray:
    return np.frombuffer(frame, dtype=np.int64)


def step_from_message(msg: np.ndarray, device: torch.device) -> StepMetadata:
    max_q_len, num_seqs = int(msg[1]), int(msg[2])
    lengths = msg[3 : 3 + len(_FIELDS)].tolist()
    offset = 3 + len(_FIELDS)
    tensors = {}
    host: dict[str, list[int]] = {}
    for field, n in zip(_FIELDS, lengths):
        part = msg[offset : offset + n]
        if field in ("cu_seqlens_q", "seq_lens"):
            host[field] = part.tolist()
        tensors[field] = torch.from_numpy(part.copy()).to(_DTYPES[field]).to(device, non_blocking=True)
        offset += n
    tensors["block_tables"] = tensors["block_tables"].reshape(num_seqs, -1)  # [S, max_blocks]
    return StepMetadata(max_q_len=max_q_len, cu_seqlens_q_host=host["cu_seqlens_q"], seq_lens_host=host["seq_lens"],
                        **tensors)


def encode_command(kind: int, block_ids: list[int] | None = None) -> bytes:
    ids = block_ids or []
    return np.array([kind, len(ids), *ids], dtype=np.int64).tobytes()


def block_ids_of(msg: np.ndarray) -> list[int]:
    return msg[2 : 2 + int(msg[1])].tolist()
