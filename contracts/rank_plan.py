"""Rank 0 -> the other tensor/expert-parallel ranks: what to run next, and how a remote rank joins.

One message per pipe frame (msgspec msgpack, ``[tag, field, ...]``). A step plan carries the
host-side StepMetadata rank 0 built anyway, each tensor as the raw bytes of a flat int64 array
(8 bytes per token and per block-table entry; engine/step_codec.py converts to and from
tensors). KV commands ride the same channel: the rows of an import follow as a broadcast.
"""

from __future__ import annotations

from typing import Any

import msgspec


class _Plan(msgspec.Struct, array_like=True, tag=True, forbid_unknown_fields=True):
    pass


class StepPlan(_Plan, tag="step"):
    max_q_len: int
    num_seqs: int
    input_ids: bytes  # int64 [T]
    positions: bytes  # int64 [T]
    slot_mapping: bytes  # int64 [T]
    cu_seqlens_q: bytes  # int64 [S + 1]
    seq_lens: bytes  # int64 [S]
    block_tables: bytes  # int64 [S * max_blocks]
    logits_indices: bytes  # int64 [S']


class ExportBlocks(_Plan, tag="export"):
    """Gather these blocks' KV heads to rank 0."""

    block_ids: list[int]


class ImportBlocks(_Plan, tag="import"):
    """Take full-head rows of these blocks from rank 0's broadcast; keep this rank's heads."""

    block_ids: list[int]


class Stop(_Plan, tag="stop"):
    pass


RankPlan = StepPlan | ExportBlocks | ImportBlocks | Stop


class JoinRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A remote rank -> the leader, after the group token (engine/remote_ranks.py)."""

    rank: int


class RankSetup(msgspec.Struct, forbid_unknown_fields=True):
    """The leader -> a remote rank that joined: what to build."""

    config: dict[str, Any]  # engine.config.EngineConfig's fields
    eos: list[int]


_plan = msgspec.msgpack.Decoder(RankPlan)
_join = msgspec.msgpack.Decoder(JoinRequest)
_setup = msgspec.msgpack.Decoder(RankSetup)


def encode(msg: RankPlan | JoinRequest | RankSetup) -> bytes:
    return msgspec.msgpack.encode(msg)


def decode_plan(frame: bytes) -> RankPlan:
    return _plan.decode(frame)


def decode_join(frame: bytes) -> JoinRequest:
    return _join.decode(frame)


def decode_setup(frame: bytes) -> RankSetup:
    return _setup.decode(frame)
