"""Device-direct transport: the decode engine pulls blocks straight out of the prefill engine's pool.

Same host only (the same GPU or another GPU of the host through CUDA IPC; on CPU a shared-memory
pool). The prefill engine keeps the request's blocks and offers (pool descriptor, block ids,
release endpoint, lease deadline). The decode engine maps the pool once per (peer, epoch), and
when the request is admitted one copy kernel moves every block of every layer into its own
blocks (engine/block_copy.py): no host staging, no Python per block. Then it sends a release,
and the prefill engine frees the blocks; without a release it frees them at the lease's end.

Why a pull and a lease: the copy needs blocks the decode side allocates at admission, which
may be later than the prefill's answer. A lease bounds what a vanished reader can pin, and a
reader never starts a copy whose lease is about to end (it recomputes instead), so a block is
never read after the prefill side reused it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import zmq

from contracts.kv_handle import DirectOffer, KVHandle
from engine.kv_source import KVBlockSink
from kv_transfer.connector import ExportJob
from kv_transfer.peer_pool import PeerPools, PeerPoolUnavailable, describe_pool, host_identity, parse_descriptor
from kv_transfer.release import ReleaseInbox, ReleaseSender

LEASE_MARGIN_S = 2.0  # a reader starts a copy only with at least this much lease left


class PeerBlocks:
    """A KV source: blocks of a peer's pool (engine/kv_source.py)."""

    lands_early = True  # a device copy: the decode engine may run it as soon as the import arrives

    def __init__(self, pool: torch.Tensor, block_ids: list[int], lease_deadline: float) -> None:
        self.pool, self.block_ids, self.lease_deadline = pool, block_ids, lease_deadline
        self.copied_at: float | None = None
        self.copy_s = 0.0  # the copy itself (device time on a GPU)
        self.events: tuple[torch.cuda.Event, torch.cuda.Event] | None = None  # the copy's start and end on a GPU

    @property
    def num_rows(self) -> int:
        return len(self.block_ids)

    def usable(self) -> bool:
        return time.monotonic() < self.lease_deadline - LEASE_MARGIN_S

    def copy_into(self, sink: KVBlockSink, dst_block_ids: list[int], first_row: int) -> None:
        events = None
        if self.pool.device.type == "cuda":
            events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            events[0].record()
        start = time.perf_counter()
        sink.copy_blocks_from(self.pool, self.block_ids[first_row : first_row + len(dst_block_ids)], dst_block_ids)
        self.copied_at = time.perf_counter()
        if events is not None:
            events[1].record()
        else:
            self.copy_s = self.copied_at - start
        self.events = events

    def wait_copied(self) -> None:
        """Block until a launched copy has finished reading the peer's blocks (no-op otherwise)."""
        if self.copied_at is not None and self.events is not None:
            self.events[1].synchronize()

    def copy_finished(self) -> bool:
        if self.copied_at is None:
            return False
        if self.events is not None:
            if not self.events[1].query():
                return False
            self.copy_s = self.events[0].elapsed_time(self.events[1]) / 1e3
        return True


class DirectLoad:
    def __init__(self, connector: DirectConnector, handle: KVHandle, first_block: int) -> None:
        self.connector, self.handle, self.first_block = connector, handle, first_block
        self._source: PeerBlocks | None = None
        self.released = False

    def attempt(self) -> bool:
        h, offer = self.handle, self.handle.direct
        if offer is None:
            raise PeerPoolUnavailable("the KV handle offers no direct pull")
        pool = self.connector.peers.get(h.source_worker, h.epoch, offer.pool)  # raises PeerPoolUnavailable
        self._source = PeerBlocks(pool, offer.block_ids[self.first_block :], offer.lease_deadline)
        return True

    def immediate(self) -> bool:
        """Whether ``attempt`` is cheap enough to run on the core thread: the peer's pool is mapped
        already, so it only checks that the peer is alive (mapping a new pool stays on a thread)."""
        h = self.handle
        return h.direct is not None and self.connector.peers.mapped(h.source_worker, h.epoch)

    def next_delay(self) -> float:
        return 0.0

    @property
    def source(self) -> PeerBlocks:
        if self._source is None:
            raise RuntimeError("DirectLoad.source before a successful attempt()")
        return self._source

    def done(self) -> None:
        if not self.released:
            self.released = True
            self.connector.release(self.handle)


class DirectConnector:
    name = "direct"

    def __init__(
        self,
        ctx: zmq.Context,
        local_device: torch.device,
        epoch: str,
        lease_s: float = 30.0,
        pool: torch.Tensor | None = None,
        pool_file: str | None = None,
        block_ids_of: Callable[[str, int], list[int]] | None = None,
    ) -> None:
        """Sender side when ``pool`` is given (this engine's pool and, on CPU, its backing file)."""
        self.epoch, self.lease_s = epoch, lease_s
        self.host = host_identity()
        self.peers = PeerPools(local_device)
        self.sender = ReleaseSender(ctx)
        self.inbox = ReleaseInbox(ctx) if pool is not None else None
        self.descriptor = describe_pool(pool, pool_file).encode() if pool is not None else b""
        self.block_ids_of = block_ids_of  # (request id, prompt tokens) -> its blocks (sender side)
        self.leases: dict[str, float] = {}  # transfer id -> deadline (sender side)
        self.expired = 0  # leases that ended without a release

    # ---- sender ---------------------------------------------------------------------------------
    def save(self, job: ExportJob, blocks: list[int]) -> None:
        pass  # the blocks stay where they are: the reader pulls them

    def finish(self, job: ExportJob) -> None:
        pass

    def offer(self, job: ExportJob, handle: KVHandle) -> None:
        if self.inbox is None or self.block_ids_of is None:
            return  # a receiver only: this engine's pool is not shared
        deadline = time.monotonic() + self.lease_s
        self.leases[job.transfer_id] = deadline
        blocks = self.block_ids_of(job.request_id, len(job.prompt))
        handle.direct = DirectOffer(self.descriptor, blocks, self.inbox.endpoint, deadline)

    def holds(self, job: ExportJob) -> bool:
        if self.inbox is None:
            return False
        self._take_releases()
        deadline = self.leases.get(job.transfer_id)
        if deadline is None:
            return False
        if time.monotonic() < deadline:
            return True
        del self.leases[job.transfer_id]
        self.expired += 1
        return False

    def _take_releases(self) -> None:
        if self.inbox is None:
            return
        for transfer_id, epoch in self.inbox.take():
            if epoch == self.epoch:
                self.leases.pop(transfer_id, None)

    # ---- receiver -------------------------------------------------------------------------------
    def accepts(self, handle: KVHandle) -> bool:
        if handle.direct is None or handle.tp_size != 1:
            return False
        try:
            return parse_descriptor(handle.direct.pool).host == self.host
        except RuntimeError:
            return False

    def load(self, handle: KVHandle, first_block: int, wait_s: float) -> DirectLoad:
        return DirectLoad(self, handle, first_block)

    def release(self, handle: KVHandle) -> None:
        if handle.direct is not None:
            self.sender.send(handle.direct.release_endpoint, handle.transfer_id, handle.epoch)

    def close(self) -> None:
        self.sender.close()
        if self.inbox is not None:
            self.inbox.close()
