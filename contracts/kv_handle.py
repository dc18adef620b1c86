"""KVHandle: where a prefilled request's prompt KV can be fetched from (worker.proto KVHandle),
the two messages of the direct transport (the PoolDescriptor a reader maps, the Release it sends
back) and the four of the point-to-point transport (PeerPair, PeerPull, PeerRows, PeerRefused).

Transport-neutral: the layout that must match, the blocks by content key, and what each
offered transport needs — ``direct`` for a pull out of the prefill engine's pool, ``peer`` for
a point-to-point send from it (any host), ``store_addresses`` for the store tier.
``transfer_id`` and ``epoch`` name the hold on the prefill side, so a release or a restarted
peer is never confused with another handoff.
"""

from __future__ import annotations

from typing import Any

import msgspec

from contracts.rpc import worker_pb2 as pb


class DirectOffer(msgspec.Struct, forbid_unknown_fields=True):
    pool: bytes  # msgpack PoolDescriptor (kv_transfer/peer_pool.py)
    block_ids: list[int]  # the prompt's blocks in the peer's pool, in order
    release_endpoint: str
    lease_deadline: float  # time.monotonic() on the shared host


class PeerOffer(msgspec.Struct, forbid_unknown_fields=True):
    control_endpoint: str  # tcp:// ZMQ ROUTER of the prefill engine (kv_transfer/p2p.py)
    rendezvous: str  # HOST:PORT of its TCPStore


class KVHandle(msgspec.Struct, forbid_unknown_fields=True):
    model_fingerprint: str
    dtype: str
    block_size: int
    tp_size: int
    block_keys: list[bytes]
    tail_key: bytes
    num_tokens: int
    store_addresses: list[str] = msgspec.field(default_factory=list)
    source_worker: str = ""
    blocks_pending: bool = False  # store writes may still be in flight when the handle is issued
    transfer_id: str = ""
    epoch: str = ""
    direct: DirectOffer | None = None
    peer: PeerOffer | None = None

    def layout(self) -> tuple[str, str, int, int]:
        return (self.model_fingerprint, self.dtype, self.block_size, self.tp_size)

    def all_keys(self) -> list[bytes]:
        """Store keys of every block the prompt covers, the partial tail included."""
        return list(self.block_keys) + ([self.tail_key] if self.tail_key else [])

    def to_proto(self) -> pb.KVHandle:
        msg = pb.KVHandle(
            model_fingerprint=self.model_fingerprint,
            dtype=self.dtype,
            block_size=self.block_size,
            tp_size=self.tp_size,
            block_keys=self.block_keys,
            tail_key=self.tail_key,
            num_tokens=self.num_tokens,
            store_addresses=self.store_addresses,
            source_worker=self.source_worker,
            blocks_pending=self.blocks_pending,
            transfer_id=self.transfer_id,
            epoch=self.epoch,
        )
        if self.direct is not None:
            o = self.direct
            msg.direct.CopyFrom(
                pb.DirectKV(
                    pool=o.pool, block_ids=o.block_ids, release_endpoint=o.release_endpoint, lease_deadline=o.lease_deadline
                )
            )
        if self.peer is not None:
            msg.peer.CopyFrom(pb.PeerKV(control_endpoint=self.peer.control_endpoint, rendezvous=self.peer.rendezvous))
        return msg

    @classmethod
    def from_proto(cls, h: pb.KVHandle) -> KVHandle:
        direct = None
        if h.HasField("direct"):
            d = h.direct
            direct = DirectOffer(d.pool, list(d.block_ids), d.release_endpoint, d.lease_deadline)
        peer = PeerOffer(h.peer.control_endpoint, h.peer.rendezvous) if h.HasField("peer") else None
        return cls(
            h.model_fingerprint,
            h.dtype,
            h.block_size,
            h.tp_size,
            list(h.block_keys),
            h.tail_key,
            h.num_tokens,
            list(h.store_addresses),
            h.source_worker,
            h.blocks_pending,
            h.transfer_id,
            h.epoch,
            direct,
            peer,
        )


class PoolDescriptor(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """What a reader needs to map a peer's pool (the ``pool`` bytes of a direct offer)."""

    host: str
    device: str  # CUDA device uuid, or "cpu"
    shape: list[int]
    dtype: str
    owner_pid: int  # the process that owns the pool: once it is gone its handles are refused
    shm_file: str = ""  # CPU pools
    cuda_ipc: list[Any] | None = None  # CUDA pools: reduce_tensor's fields without the two class objects

    def encode(self) -> bytes:
        return msgspec.msgpack.encode(self)

    @classmethod
    def decode(cls, data: bytes) -> PoolDescriptor:
        """msgspec.DecodeError (a ValueError) for bytes of another shape."""
        return msgspec.msgpack.decode(data, type=cls)


class Release(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """Decode -> prefill: the reader is done with this hold."""

    transfer_id: str
    epoch: str


# The point-to-point transport's control messages (kv_transfer/p2p.py), over a ZMQ DEALER/ROUTER pair.
class PeerPair(msgspec.Struct, tag=True, forbid_unknown_fields=True):
    """Decode -> prefill: build the two-rank group of this pair (the reader is rank 1)."""

    pair: str


class PeerPull(msgspec.Struct, tag=True, forbid_unknown_fields=True):
    """Decode -> prefill: send the blocks of this hold from ``first_block`` on, with this tag."""

    pair: str
    transfer_id: str
    epoch: str
    first_block: int
    tag: int


class PeerRows(msgspec.Struct, tag=True, forbid_unknown_fields=True):
    """Prefill -> decode: the rows follow on the pair's group, [n, L, 2, B, Hkv, D] of this dtype."""

    shape: list[int]
    dtype: str


class PeerRefused(msgspec.Struct, tag=True, forbid_unknown_fields=True):
    """Prefill -> decode: no rows (unknown pair or transfer, lease over, another epoch)."""

    reason: str
