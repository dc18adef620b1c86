"""KV events: wire format and snapshot resynchronisation over real ZMQ sockets."""

import time

import zmq

from contracts.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, decode_batch, encode_batch
from kvstore.event_publisher import KVEventPublisher, request_snapshot


def test_event_batch_roundtrips_with_big_endian_sequence_numbers():
    events = [
        BlockStored(keys=[b"a" * 16, b"b" * 16], token_ids=[1, 2], medium="gpu"),
        BlockRemoved(keys=[b"a" * 16], medium="gpu"),
        AllBlocksCleared(),
    ]
    frames = encode_batch("worker-1", 258, events, timestamp=12.5)
    assert frames[1] == b"\x00\x00\x00\x00\x00\x00\x01\x02"
    batch = decode_batch(frames)
    assert (batch.topic, batch.seq, batch.timestamp) == ("worker-1", 258, 12.5)
    assert batch.events == events


def test_subscriber_receives_published_events_and_snapshot_matches_state():
    held: dict[str, list[bytes]] = {"gpu": []}
    pub = KVEventPublisher("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "w1", lambda: {m: list(k) for m, k in held.items()})
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, 2000)
    sub.connect(pub.pub_endpoint)
    try:
        time.sleep(0.2)  # PUB/SUB slow joiner
        held["gpu"].append(b"k" * 16)
        pub.publish([BlockStored(keys=[b"k" * 16], medium="gpu")])
        batch = decode_batch(sub.recv_multipart())
        assert batch.seq == 1 and batch.events[0].keys == [b"k" * 16]
        seq, state = request_snapshot(pub.snapshot_endpoint)
        assert seq == 1 and state == {"gpu": [b"k" * 16]}
    finally:
        sub.close()
        pub.close()
