"""KV-event subscriber over real ZMQ sockets: events, gaps, resync, publisher removal."""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from contracts.kv_events import AllBlocksCleared, BlockRemoved, BlockStored
from kvstore.block_key import block_keys
from kvstore.event_publisher import KVEventPublisher
from router.kv_event_subscriber import KVEventSubscriber
from router.prefix_index import PrefixIndex

KEYS = block_keys(list(range(64)), "fp", block_size=4)  # 16 blocks


class Worker:
    """A real publisher plus the state it would report in a snapshot."""

    def __init__(self, topic: str) -> None:
        self.held: dict[str, list[bytes]] = {"gpu": []}
        self.pub = KVEventPublisher("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", topic, self._snapshot)

    def _snapshot(self) -> dict[str, list[bytes]]:
        return {m: list(keys) for m, keys in self.held.items()}

    def store(self, keys: list[bytes]) -> None:
        self.held["gpu"].extend(keys)
        self.pub.publish([BlockStored(keys=keys, medium="gpu")])

    def remove(self, keys: list[bytes]) -> None:
        self.held["gpu"] = [k for k in self.held["gpu"] if k not in keys]
        self.pub.publish([BlockRemoved(keys=keys, medium="gpu")])

    def clear(self) -> None:
        self.held["gpu"] = []
        self.pub.publish([AllBlocksCleared()])


class Relay:
    """A ZMQ forwarder between a publisher and the subscriber that the test can cut:
    while it is down the publisher has no subscriber and its messages are dropped."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.endpoint = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._port = 0

    def start(self) -> None:
        ctx: zmq.Context = zmq.Context.instance()
        xsub, xpub = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
        for s in (xsub, xpub):
            s.setsockopt(zmq.LINGER, 0)
        xsub.connect(self.upstream)
        # zmq closes sockets asynchronously: the port of the last start may still be bound for a moment
        deadline = time.monotonic() + 5
        while True:
            try:
                xpub.bind(f"tcp://127.0.0.1:{self._port or '*'}")
                break
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.endpoint = xpub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._port = int(self.endpoint.rsplit(":", 1)[1])
        self._stop.clear()
        self._thread = threading.Thread(target=self._forward, args=(xsub, xpub), daemon=True)
        self._thread.start()

    def _forward(self, xsub: zmq.Socket, xpub: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(xsub, zmq.POLLIN)
        poller.register(xpub, zmq.POLLIN)
        while not self._stop.is_set():
            for sock, _ in poller.poll(20):
                other = xpub if sock is xsub else xsub
                other.send_multipart(sock.recv_multipart())
        xsub.close()
        xpub.close()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()


@pytest.fixture
def subscriber():
    sub = KVEventSubscriber(PrefixIndex(), snapshot_timeout_s=0.5, retry_interval_s=0.2)
    sub.start()
    yield sub
    sub.close()


def follow(sub: KVEventSubscriber, worker_id: str, worker: Worker, events_endpoint: str | None = None) -> None:
    sub.add_publisher(worker_id, events_endpoint or worker.pub.pub_endpoint, worker.pub.snapshot_endpoint)
    assert sub.wait_for(lambda: sub.is_synced(worker_id))


def test_stored_removed_and_cleared_events_update_the_index(subscriber):
    w1, w2 = Worker("w1"), Worker("w2")
    try:
        follow(subscriber, "w1", w1)
        follow(subscriber, "w2", w2)
        w1.store(KEYS[:8])
        w1.store(KEYS[8:])
        w2.store(KEYS[:5])
        assert subscriber.wait_for(lambda: subscriber.index.match(KEYS) == {"w1": 16, "w2": 5})
        w1.remove(KEYS[10:])
        w2.clear()
        assert subscriber.wait_for(lambda: subscriber.index.match(KEYS) == {"w1": 10})
        assert subscriber.resync_count("w1") == 1  # only the initial snapshot
    finally:
        w1.pub.close()
        w2.pub.close()


def test_state_published_before_subscribing_arrives_through_the_initial_snapshot(subscriber):
    w1 = Worker("w1")
    try:
        w1.store(KEYS[:7])
        follow(subscriber, "w1", w1)
        assert subscriber.index.match(KEYS) == {"w1": 7}
        assert subscriber.last_seq("w1") == 1
    finally:
        w1.pub.close()


def test_a_sequence_gap_triggers_a_resync_that_yields_the_exact_state(subscriber):
    w1 = Worker("w1")
    relay = Relay(w1.pub.pub_endpoint)
    relay.start()
    try:
        follow(subscriber, "w1", w1, events_endpoint=relay.endpoint)
        w1.store(KEYS[:4])
        assert subscriber.wait_for(lambda: subscriber.index.match(KEYS) == {"w1": 4})

        relay.stop()  # these batches are published while the subscriber is cut off
        w1.store(KEYS[4:12])
        w1.remove(KEYS[:2] + KEYS[10:12])
        w1.store(KEYS[:2])
        relay.start()

        # The next batch the subscriber sees jumps in sequence number -> snapshot.
        def publish_until_seen() -> bool:
            w1.store(KEYS[12:13])
            return subscriber.wait_for(lambda: subscriber.resync_count("w1") >= 2, timeout_s=0.3)

        assert any(publish_until_seen() for _ in range(20))
        assert subscriber.wait_for(lambda: subscriber.index.keys_of("w1") == set(w1.held["gpu"]))
        assert subscriber.index.match(KEYS) == {"w1": 10}
    finally:
        relay.stop()
        w1.pub.close()


def test_a_publisher_removed_from_discovery_is_forgotten(subscriber):
    w1, w2 = Worker("w1"), Worker("w2")
    try:
        follow(subscriber, "w1", w1)
        follow(subscriber, "w2", w2)
        w1.store(KEYS)
        w2.store(KEYS[:3])
        assert subscriber.wait_for(lambda: subscriber.index.match(KEYS) == {"w1": 16, "w2": 3})
        subscriber.remove_publisher("w1")
        assert subscriber.wait_for(lambda: subscriber.index.match(KEYS) == {"w2": 3})
        w1.store(KEYS[:1])  # no longer followed
        assert not subscriber.wait_for(lambda: "w1" in subscriber.index.match(KEYS), timeout_s=0.3)
    finally:
        w1.pub.close()
        w2.pub.close()


def rebind(make):
    for _ in range(50):  # a closed ZMQ socket releases its port asynchronously
        try:
            return make()
        except zmq.ZMQError:
            time.sleep(0.05)
    return make()


def test_a_restarted_publisher_is_resynchronised(subscriber):
    w1 = Worker("w1")
    try:
        follow(subscriber, "w1", w1)
        w1.store(KEYS[:6])
        w1.store(KEYS[6:8])
        assert subscriber.wait_for(lambda: subscriber.index.match(KEYS) == {"w1": 8})
        pub_ep, snap_ep = w1.pub.pub_endpoint, w1.pub.snapshot_endpoint
        w1.pub.close()
        w1.held = {"gpu": []}
        w1.pub = rebind(lambda: KVEventPublisher(pub_ep, snap_ep, "w1", w1._snapshot))  # seq restarts at 1

        def publish_until_seen() -> bool:
            w1.store(KEYS[:1])
            return subscriber.wait_for(lambda: subscriber.index.match(KEYS) == {"w1": 1}, timeout_s=0.3)

        assert any(publish_until_seen() for _ in range(20))
    finally:
        w1.pub.close()
