"""The point-to-point receiver keeps one link per prefill worker: a restarted worker's old link is closed."""

from __future__ import annotations

import torch
import zmq

from contracts.kv_handle import KVHandle
from kv_transfer.p2p import PeerReceiver, PeerSender


def _handle(sender: PeerSender, transfer_id: str) -> KVHandle:
    return KVHandle(
        model_fingerprint="m",
        dtype="float32",
        block_size=4,
        tp_size=1,
        block_keys=[b"k"],
        tail_key=b"",
        num_tokens=4,
        source_worker="prefill-0",
        transfer_id=transfer_id,
        epoch=sender.epoch,
        peer=sender.offer,
    )


def test_a_restarted_prefill_worker_replaces_its_old_link() -> None:
    ctx = zmq.Context()
    pools = [torch.arange(2 * 2 * 3 * 4 * 1 * 2, dtype=torch.float32).reshape(2, 2, 3, 4, 1, 2) + 1000 * i for i in range(2)]
    before = PeerSender(ctx, pools[0], "127.0.0.1", "127.0.0.1", epoch="e1")
    after = PeerSender(ctx, pools[1], "127.0.0.1", "127.0.0.1", epoch="e2")
    receiver = PeerReceiver(ctx, torch.device("cpu"))
    try:
        before.hold("t1", [2], lease_s=30)
        rows = receiver.pull(_handle(before, "t1"), 0)
        assert torch.equal(rows[0], pools[0][:, :, 2])
        assert list(receiver.links) == [("prefill-0", "e1")]
        old_link = receiver.links[("prefill-0", "e1")]

        after.hold("t2", [1], lease_s=30)  # the same worker id, a new epoch: it restarted
        rows = receiver.pull(_handle(after, "t2"), 0)
        assert torch.equal(rows[0], pools[1][:, :, 1])
        assert list(receiver.links) == [("prefill-0", "e2")]
        assert old_link.socket.closed
    finally:
        receiver.close()
        before.close()
        after.close()
        ctx.term()
