"""The KV connector interface: one transport's sender side and receiver side.

In the spirit of vLLM's KVConnectorBase_V1, reduced to what a disaggregated handoff needs:

sender (prefill engine core, prefill_worker/kv_export.py)
    save(job, blocks)   a prefill chunk finished: these full blocks are final (start moving them)
    finish(job)         the prompt is done (move the partial tail block too)
    offer(job, handle)  the first token is sampled: fill this transport's part of the KVHandle
    holds(job)          whether the engine must still keep the request's blocks
receiver (decode engine core, decode_worker/kv_import.py)
    accepts(handle)     this transport can deliver the handle's blocks here (locality, layout)
    load(handle, first) start a load of the blocks from ``first`` on -> KVLoad

Transports: store.py (blocks through the KV store, which is also the cache tier for prefix
reuse), direct.py (a pull straight out of the peer engine's pool on the same host) and p2p.py
(a send over a process group of the two engines, any host).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from contracts.kv_handle import KVHandle
from engine.kv_source import KVSource
from kvstore.block_key import BlockKey


@dataclass(slots=True)
class ExportJob:
    """One prefill request's handoff, as the sender side sees it."""

    request_id: str
    prompt: list[int]
    keys: list[BlockKey]  # full blocks
    tail: BlockKey  # b"" when the prompt fills whole blocks
    transfer_id: str
    in_store: set[int] = field(default_factory=set)  # block indexes the store already holds
    saved: int = 0  # full blocks handed to the transports so far
    puts: list[Future] = field(default_factory=list)  # store writes of this request
    store_incomplete: bool = False  # a block was not written (budget): the store cannot serve this handoff


class KVLoad(Protocol):
    """A receiver-side load; ``attempt`` runs on a transfer thread, the rest on the core thread."""

    def attempt(self) -> bool: ...  # True once ``source`` is complete; raises on failure

    # A load may carry ``notice``, a Future set by a False attempt: the next attempt is due when it
    # completes (the store announces the commit) instead of after ``next_delay``. It may also have
    # ``immediate()``: True when ``attempt`` is cheap enough to run on the core thread at once, which
    # saves the request a decode step (the hop through a transfer thread lands after the next step).

    def next_delay(self) -> float: ...  # seconds before the next attempt

    @property
    def source(self) -> KVSource: ...

    def done(self) -> None: ...  # the engine imported (or dropped) the source: let the sender free its blocks


class KVConnector(Protocol):
    name: str

    def save(self, job: ExportJob, blocks: list[int]) -> None: ...

    def finish(self, job: ExportJob) -> None: ...

    def offer(self, job: ExportJob, handle: KVHandle) -> None: ...

    def holds(self, job: ExportJob) -> bool: ...

    def accepts(self, handle: KVHandle) -> bool: ...

    def load(self, handle: KVHandle, first_block: int, wait_s: float) -> KVLoad: ...

    def close(self) -> None: ...
