"""Compact wire form of a step plan for the non-zero ranks: msgpack of raw int arrays, no pickle.

Rank 0 encodes the host-side StepMetadata it built anyway; a frame is
``["step", max_q_len, S, [7 little-endian int buffers]]`` (a few bytes per token).
KV transfer commands ride the same channel: ``["export", block_ids]``,
``["import", block_ids]`` (the rows follow as a broadcast), ``["stop"]``.
"""

from __future__ import annotations

import msgpack
import numpy as np
import torch

from engine.step_metadata import StepMetadata

_FIELDS = ("input_ids", "positions", "slot_mapping", "cu_seqlens_q", "seq_lens", "block_tables", "logits_indices")
_DTYPES = {"input_ids": np.int64, "positions": np.int64, "slot_mapping": np.int64, "cu_seqlens_q": np.int32,
           "seq_lens": np.int32, "block_tables": np.int32, "logits_indices": np.int64}


def encode_step(meta: StepMetadata) -> bytes:
    """``meta`` must hold CPU tensors (the runner's host copy)."""
    bufs = [getattr(meta, f).numpy().astype(_DTYPES[f], copy=False).tobytes() for f in _FIELDS]
    return msgpack.packb(["step", meta.max_q_len, int(meta.seq_lens.shape[0]), bufs])


def decode(frame: bytes) -> list:
    return msgpack.unpackb(frame)


def step_from_message(msg: list, device: torch.device) -> StepMetadata:
    _, max_q_len, num_seqs, bufs = msg
    arrays = {f: np.frombuffer(b, dtype=_DTYPES[f]) for f, b in zip(_FIELDS, bufs)}
    arrays["block_tables"] = arrays["block_tables"].reshape(num_seqs, -1)  # [S, max_blocks]
    tensors = {f: torch.from_numpy(a.copy()).to(device, non_blocking=True) for f, a in arrays.items()}
    return StepMetadata(max_q_len=max_q_len, **tensors)


def encode_command(kind: str, block_ids: list[int] | None = None) -> bytes:
    return msgpack.packb([kind] if block_ids is None else [kind, block_ids])
