"""Where an imported request's prompt KV comes from: rows in memory, or blocks of a peer's pool.

``LLMEngine.import_request`` takes either. The scheduler asks ``usable()`` when it admits the
request (a peer's lease may have run out while the request waited: then it recomputes), and
the step calls ``copy_into`` once the request's blocks are allocated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class KVBlockSink(Protocol):
    """What a source writes into: the engine's runner."""

    def import_kv(self, block_ids: list[int], rows: torch.Tensor) -> None: ...

    def copy_blocks_from(self, src_pool: torch.Tensor, src_ids: list[int], dst_ids: list[int]) -> None: ...


class KVSource(Protocol):
    @property
    def num_rows(self) -> int: ...  # blocks covered, from the request's start block

    def usable(self) -> bool: ...

    def copy_into(self, sink: KVBlockSink, dst_block_ids: list[int], first_row: int) -> None: ...


@dataclass(slots=True)
class KVRows:
    """Transfer rows already in this process: [n, L, 2, B, Hkv, D] (read from the store)."""

    rows: torch.Tensor

    @property
    def num_rows(self) -> int:
        return self.rows.shape[0]

    def usable(self) -> bool:
        return True

    def copy_into(self, sink: KVBlockSink, dst_block_ids: list[int], first_row: int) -> None:
        sink.import_kv(dst_block_ids, self.rows[first_row : first_row + len(dst_block_ids)])
