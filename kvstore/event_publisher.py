"""KV events on ZMQ: the publisher (PUB + a REP socket for snapshots) and the snapshot request.

The events and their wire format are contracts/kv_events.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from contracts.internal_auth import secure_zmq_client, secure_zmq_server
from contracts.kv_events import BlockKey, KVEvent, decode_snapshot, encode_batch, encode_snapshot

SNAPSHOT_REQUEST = b"snapshot"


class KVEventPublisher:
    """PUB socket for event batches plus a REP socket that serves snapshots.

    ``snapshot`` returns the publisher's full state {medium: [keys]}; it is called
    under the same lock as ``publish`` so that a snapshot and its sequence number
    agree. Thread-safe: callers may publish from any thread.
    """

    def __init__(
        self,
        pub_endpoint: str,
        snapshot_endpoint: str,
        topic: str,
        snapshot: Callable[[], dict[str, list[BlockKey]]],
    ) -> None:
        import zmq  # imported here so that the event records need no ZMQ (engine-only installs)

        self.topic = topic
        self._snapshot = snapshot
        self._ctx: zmq.Context = zmq.Context.instance()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        secure_zmq_server(self._pub)
        self._pub.bind(pub_endpoint)
        self.pub_endpoint = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._rep = self._ctx.socket(zmq.REP)
        self._rep.setsockopt(zmq.LINGER, 0)
        secure_zmq_server(self._rep)
        self._rep.bind(snapshot_endpoint)
        self.snapshot_endpoint = self._rep.getsockopt_string(zmq.LAST_ENDPOINT)
        self._lock = threading.Lock()
        self._seq = 0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve_snapshots, name=f"kv-snapshot-{topic}", daemon=True)
        self._thread.start()

    @property
    def seq(self) -> int:
        return self._seq

    def publish(self, events: list[KVEvent]) -> None:
        if not events or self._closed.is_set():
            return
        with self._lock:
            self._seq += 1
            self._pub.send_multipart(encode_batch(self.topic, self._seq, events))

    def _serve_snapshots(self) -> None:
        import zmq

        poller = zmq.Poller()
        poller.register(self._rep, zmq.POLLIN)
        while not self._closed.is_set():
            if not poller.poll(100):
                continue
            try:
                self._rep.recv()
                with self._lock:
                    payload = encode_snapshot(self._seq, self._snapshot())
                self._rep.send(payload)
            except zmq.ZMQError:
                if self._closed.is_set():
                    return
                raise

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self._pub.close()
        self._rep.close()


def request_snapshot(endpoint: str, timeout_s: float = 2.0) -> tuple[int, dict[str, list[BlockKey]]]:
    """Ask a publisher's snapshot socket for its full state; raises TimeoutError."""
    import zmq

    sock: zmq.Socket = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
    secure_zmq_client(sock)
    sock.connect(endpoint)
    try:
        sock.send(SNAPSHOT_REQUEST)
        snapshot = decode_snapshot(sock.recv())
        return snapshot.seq, snapshot.keys
    except zmq.Again as exc:
        raise TimeoutError(f"no KV snapshot from {endpoint} within {timeout_s}s") from exc
    finally:
        sock.close()
