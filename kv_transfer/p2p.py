"""Point-to-point transport: the prefill engine sends a request's blocks to the decode engine over a
process group of just the two (NCCL between GPUs, gloo on CPU tensors), on any host.

Sender (prefill engine core): ``offer`` holds the request's blocks for a lease and names its
control socket and rendezvous in the handle. A sender thread serves the control socket:

    PeerPair(pair)                                   build the pair's group as rank 0, on a
                                                     PrefixStore of this engine's own TCPStore
    PeerPull(pair, transfer, epoch, first, tag)      PeerRows(shape, dtype), then send the rows;
                                                     or PeerRefused(reason)

The rows are gathered out of the pool before the send starts, so the blocks are free as soon as
the gather is done: no release message, and a reader that never comes costs one lease.

Receiver (decode engine core, on a transfer thread): one link per (prefill worker, epoch), a
DEALER socket and the pair's group as rank 1. A load pulls the rows into a tensor of its own;
the step that admits the request copies them into its blocks (engine/kv_source.KVRows). A pull
that fails (peer gone, lease over, timeout) raises, and the import tries the next transport.

Never the world group: each pair's communicator is made on demand and only its two ranks use
it, so a decode worker can pair with any number of prefill workers and the reverse.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import msgspec
import torch
import torch.distributed as dist
import zmq

from contracts.kv_handle import KVHandle, PeerOffer, PeerPair, PeerPull, PeerRefused, PeerRows
from engine.kv_source import KVRows
from kv_transfer.connector import ExportJob

log = logging.getLogger(__name__)

REPLY_TIMEOUT_S = 10.0  # a sender that does not answer a pull in this long is taken for gone
CONNECT_TIMEOUT = datetime.timedelta(seconds=10)  # reaching the sender's TCPStore (a dead peer refuses at once)
GROUP_TIMEOUT = datetime.timedelta(seconds=30)  # pairing, and the longest a send / recv may stall

_encoder = msgspec.msgpack.Encoder()
_to_sender = msgspec.msgpack.Decoder(PeerPair | PeerPull)
_to_receiver = msgspec.msgpack.Decoder(PeerRows | PeerRefused)


class PeerTransferFailed(RuntimeError):
    pass


class PairGroup(Protocol):
    """What we use of ProcessGroupGloo / ProcessGroupNCCL (torch's stubs leave these out)."""

    def send(self, tensors: list[torch.Tensor], dst: int, tag: int) -> Any: ...

    def recv(self, tensors: list[torch.Tensor], src: int, tag: int) -> Any: ...


def _pair_group(store: dist.Store, pair: str, rank: int, device: torch.device) -> PairGroup:
    """The two-rank group of one (prefill, decode) pair; blocks until the other rank joins."""
    prefixed = dist.PrefixStore(f"pair/{pair}/", store)
    if device.type == "cuda":  # NCCL; not yet run on two GPUs (issue 12)
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = GROUP_TIMEOUT
        return cast(PairGroup, dist.ProcessGroupNCCL(prefixed, rank, 2, options))
    return cast(PairGroup, dist.ProcessGroupGloo(prefixed, rank, 2, GROUP_TIMEOUT))


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)  # any dtype travels as its bytes (gloo has no bfloat16)


@dataclass(slots=True)
class _Held:
    block_ids: list[int]
    deadline: float
    ready: torch.cuda.Event | None  # the prefill's KV writes, on the engine's stream
    gathering: bool = False  # the sender thread is reading the blocks: the engine must not free them
    gathered: bool = False


class PeerSender:
    """Prefill side: the control socket, the TCPStore the pairs meet at, and the sender thread."""

    def __init__(
        self,
        ctx: zmq.Context,
        pool: torch.Tensor,
        bind_host: str,
        advertise_host: str,
        epoch: str,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        """``wake`` tells the engine loop that blocks may be freed (it asks ``holds`` again)."""
        self.pool, self.epoch, self.wake = pool, epoch, wake
        self.store = dist.TCPStore(bind_host, 0, is_master=True, wait_for_workers=False)
        self.socket = ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        port = self.socket.bind_to_random_port(f"tcp://{bind_host}")
        self.offer = PeerOffer(f"tcp://{advertise_host}:{port}", f"{advertise_host}:{self.store.port}")
        self.lock = threading.Lock()
        self.held: dict[str, _Held] = {}  # transfer id -> its blocks
        self.groups: dict[str, PairGroup] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="kv-p2p-sender", daemon=True)
        self.thread.start()

    def hold(self, transfer_id: str, block_ids: list[int], lease_s: float) -> None:
        ready = None
        if self.pool.device.type == "cuda":
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.pool.device))
        with self.lock:
            self.held[transfer_id] = _Held(block_ids, time.monotonic() + lease_s, ready)

    def holds(self, transfer_id: str) -> bool | None:
        """True while the blocks must stay; False once they may go; None for a transfer never held."""
        with self.lock:
            h = self.held.get(transfer_id)
            if h is None:
                return None
            if h.gathering or (not h.gathered and time.monotonic() < h.deadline):
                return True
            del self.held[transfer_id]
            return False

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        while not self.stopping.is_set():
            if not poller.poll(100):
                continue
            peer, frame = self.socket.recv_multipart()
            try:
                msg = _to_sender.decode(frame)
            except msgspec.DecodeError:
                continue  # not ours
            try:
                if isinstance(msg, PeerPair):
                    self.groups[msg.pair] = _pair_group(self.store, msg.pair, 0, self.pool.device)
                else:
                    self._send(peer, msg)
            except Exception as exc:  # a reader that vanished mid-send must not stop the sender
                log.warning("point-to-point KV send failed: %s", exc)
                if isinstance(msg, PeerPull):
                    self.groups.pop(msg.pair, None)

    def _send(self, peer: bytes, pull: PeerPull) -> None:
        group = self.groups.get(pull.pair)
        refusal = None
        with self.lock:
            h = self.held.get(pull.transfer_id)
            if group is None:
                refusal = "unknown pair: pair up first"
            elif pull.epoch != self.epoch:
                refusal = f"epoch {pull.epoch} is not this engine's ({self.epoch}): it restarted"
            elif h is None or h.gathered or time.monotonic() >= h.deadline:
                refusal = "unknown transfer / lease over: the blocks are gone"
            else:
                h.gathering = True
        if refusal is not None:
            self.socket.send_multipart([peer, _encoder.encode(PeerRefused(refusal))])
            return
        assert h is not None and group is not None
        try:
            ids = torch.tensor(h.block_ids[pull.first_block :], dtype=torch.long, device=self.pool.device)
            if h.ready is not None:
                torch.cuda.current_stream(self.pool.device).wait_event(h.ready)
            rows = self.pool.index_select(2, ids).permute(2, 0, 1, 3, 4, 5).contiguous()  # [n, L, 2, B, Hkv, D]
            if rows.is_cuda:
                torch.cuda.current_stream(self.pool.device).synchronize()
        finally:
            with self.lock:
                h.gathering, h.gathered = False, True  # the engine may free the blocks now
            self.wake()
        self.socket.send_multipart([peer, _encoder.encode(PeerRows(list(rows.shape), str(rows.dtype).removeprefix("torch.")))])
        group.send([_as_bytes(rows)], 1, pull.tag).wait()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.socket.close(linger=0)
        self.groups.clear()


class _Link:
    """Receiver side of one pair: requests go out on ``socket``, rows come in on ``group``."""

    def __init__(self, ctx: zmq.Context, offer: PeerOffer, device: torch.device) -> None:
        self.socket = ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(offer.control_endpoint)
        self.lock = threading.Lock()  # one pull at a time per pair: the socket and the tags are shared
        self.tags = itertools.count(1)
        self.pair = uuid.uuid4().hex
        host, port = offer.rendezvous.rsplit(":", 1)
        try:
            store = dist.TCPStore(host, int(port), is_master=False, timeout=CONNECT_TIMEOUT)
            self.socket.send(_encoder.encode(PeerPair(self.pair)))
            self.group = _pair_group(store, self.pair, 1, device)
        except Exception:
            self.socket.close(linger=0)
            raise

    def close(self) -> None:
        self.socket.close(linger=0)
        self.group = None  # type: ignore[assignment]  # the pair's group goes with its last reference


class PeerReceiver:
    def __init__(self, ctx: zmq.Context, device: torch.device) -> None:
        self.ctx, self.device = ctx, device
        self.lock = threading.Lock()
        self.links: dict[tuple[str, str], _Link] = {}  # (prefill worker, epoch) -> link

    def pull(self, handle: KVHandle, first_block: int) -> torch.Tensor:
        assert handle.peer is not None
        key = (handle.source_worker, handle.epoch)
        with self.lock:
            link = self.links.get(key)
        if link is None:
            try:
                link = _Link(self.ctx, handle.peer, self.device)
            except Exception as exc:  # the store refused or timed out: the peer is not there
                raise PeerTransferFailed(f"pairing with {handle.source_worker} failed: {exc}") from exc
            with self.lock:
                self.links[key] = link
                # the same worker under another epoch restarted: its old group's other rank is gone
                stale = [k for k in self.links if k[0] == key[0] and k != key]
                stale_links = [self.links.pop(k) for k in stale]
            for old in stale_links:
                with old.lock:  # a pull still in flight on it ends first (its peer is gone: it fails)
                    old.close()
        try:
            with link.lock:
                return self._pull(link, handle, first_block)
        except PeerTransferFailed:
            raise
        except Exception as exc:  # the group broke: the peer died or restarted
            with self.lock:
                if self.links.get(key) is link:
                    del self.links[key]
            link.close()
            raise PeerTransferFailed(f"receiving from {handle.source_worker} failed: {exc}") from exc

    def _pull(self, link: _Link, handle: KVHandle, first_block: int) -> torch.Tensor:
        tag = next(link.tags)
        link.socket.send(_encoder.encode(PeerPull(link.pair, handle.transfer_id, handle.epoch, first_block, tag)))
        if not link.socket.poll(int(REPLY_TIMEOUT_S * 1000)):
            raise RuntimeError(f"no answer in {REPLY_TIMEOUT_S:.0f} s")
        reply = _to_receiver.decode(link.socket.recv())
        if isinstance(reply, PeerRefused):
            raise PeerTransferFailed(f"{handle.source_worker} refused the pull: {reply.reason}")
        rows = torch.empty(reply.shape, dtype=getattr(torch, reply.dtype), device=self.device)
        link.group.recv([_as_bytes(rows)], 0, tag).wait()
        return rows

    def close(self) -> None:
        with self.lock:
            for link in self.links.values():
                link.close()
            self.links.clear()


class PeerLoad:
    def __init__(self, connector: PeerConnector, handle: KVHandle, first_block: int) -> None:
        self.connector, self.handle, self.first_block = connector, handle, first_block
        self._source: KVRows | None = None

    def attempt(self) -> bool:
        start = time.perf_counter()
        rows = self.connector.receiver.pull(self.handle, self.first_block)
        self._source = KVRows(rows)
        self.connector.observe("in", rows.numel() * rows.element_size(), time.perf_counter() - start)
        return True

    def next_delay(self) -> float:
        return 0.0

    @property
    def source(self) -> KVRows:
        if self._source is None:
            raise RuntimeError("PeerLoad.source before a successful attempt()")
        return self._source

    def done(self) -> None:
        pass  # the sender freed its blocks once it had gathered them


class PeerConnector:
    name = "p2p"

    def __init__(
        self,
        ctx: zmq.Context,
        local_device: torch.device,
        observe: Callable[[str, int, float], None],
        lease_s: float = 30.0,
        sender: PeerSender | None = None,
        block_ids_of: Callable[[str, int], list[int]] | None = None,
    ) -> None:
        """Sender side when ``sender`` is given (this engine's pool behind a control socket)."""
        self.lease_s, self.observe = lease_s, observe
        self.sender, self.block_ids_of = sender, block_ids_of
        self.receiver = PeerReceiver(ctx, local_device)

    # ---- sender ---------------------------------------------------------------------------------
    def save(self, job: ExportJob, blocks: list[int]) -> None:
        pass  # the blocks stay where they are until the reader pulls them

    def finish(self, job: ExportJob) -> None:
        pass

    def offer(self, job: ExportJob, handle: KVHandle) -> None:
        if self.sender is None or self.block_ids_of is None:
            return
        self.sender.hold(job.transfer_id, self.block_ids_of(job.request_id, len(job.prompt)), self.lease_s)
        handle.peer = self.sender.offer

    def holds(self, job: ExportJob) -> bool:
        if self.sender is None:
            return False
        return bool(self.sender.holds(job.transfer_id))

    # ---- receiver -------------------------------------------------------------------------------
    def accepts(self, handle: KVHandle) -> bool:
        return handle.peer is not None and handle.tp_size == 1 and bool(handle.source_worker)

    def load(self, handle: KVHandle, first_block: int, wait_s: float) -> PeerLoad:
        return PeerLoad(self, handle, first_block)

    def close(self) -> None:
        self.receiver.close()
        if self.sender is not None:
            with contextlib.suppress(Exception):
                self.sender.close()
