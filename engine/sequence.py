"""A request inside the engine: its tokens, progress and KV blocks."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from contracts.sampling import SamplingParams
from engine.kv_source import KVSource
from engine.structured_output import GrammarState


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    HELD = "held"  # prefill_only request done; blocks kept until release()
    FINISHED = "finished"


@dataclass(slots=True)
class Sequence:
    request_id: str
    token_ids: list[int]  # prompt + output so far
    num_prompt_tokens: int
    params: SamplingParams
    cache_salt: str = ""
    prefill_only: bool = False
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0  # tokens whose KV is in the cache
    num_cached_tokens: int = 0  # prompt tokens not computed here (prefix hit or imported)
    block_table: list[int] = field(default_factory=list)
    block_keys: list[bytes] = field(default_factory=list)  # keys of the leading full blocks
    finish_reason: str | None = None
    # import: KV of the first pending_kv_tokens tokens (rows in memory or a peer's blocks)
    pending_kv: KVSource | None = None
    pending_kv_tokens: int = 0
    pending_kv_start_block: int = 0  # rows of pending_kv start at this block
    imports_evict_first: bool = False  # a decode worker's import: its copy is the first cache to go
    imported_blocks: tuple[int, int] = (0, 0)  # block-table range the import copied in (imports_evict_first)
    # landed (LLMEngine.land_import): the imported KV was copied into blocks of its own while the
    # request waited; on a GPU, landed_fence is the copy's end event, which the admitting step waits for
    landed: bool = False
    landed_fence: torch.cuda.Event | None = None
    first_scheduled: bool = False
    grammar: GrammarState | None = None  # structured output: the tokens allowed next

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other
