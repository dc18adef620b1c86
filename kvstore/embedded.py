"""Embedded mode: a master and one storage node inside the calling process.

For one machine, tests and `splitserve up`. The servers run on a private event
loop thread, so synchronous and asynchronous callers can both use them.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

from kvstore.master import MasterServer
from kvstore.master_config import MasterConfig
from kvstore.node import NodeServer
from kvstore.node_config import NodeConfig


class EmbeddedStore:
    def __init__(self, capacity: int = 1 << 30, master: MasterConfig | None = None) -> None:
        base = master or MasterConfig(events_port=0)  # 0: any free port; see events_endpoint
        self.master_config = replace(base, host="127.0.0.1", port=0, metrics_port=None)
        self.capacity = capacity
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kvstore-embedded", daemon=True)
        self.master: MasterServer | None = None
        self.node: NodeServer | None = None
        self.address = ""

    def start(self) -> str:
        """Start master and node; returns the master's gRPC address."""
        self._thread.start()
        self.address = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self.address

    async def _start(self) -> str:
        self.master = MasterServer(self.master_config)
        address = await self.master.start()
        node_config = NodeConfig(master=address, capacity=self.capacity, host="127.0.0.1", port=0, metrics_port=None)
        self.node = NodeServer(node_config)
        await self.node.start()
        return address

    @property
    def events_endpoint(self) -> str:
        """ZMQ PUB endpoint of the store's KV events ("" when events are off)."""
        publisher = self.master.publisher if self.master else None
        return publisher.pub_endpoint if publisher else ""

    @property
    def snapshot_endpoint(self) -> str:
        publisher = self.master.publisher if self.master else None
        return publisher.snapshot_endpoint if publisher else ""

    def stop(self) -> None:
        async def _stop() -> None:
            if self.node is not None:
                await self.node.stop(0)
            if self.master is not None:
                await self.master.stop(0)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    def __enter__(self) -> EmbeddedStore:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_embedded(capacity: int = 1 << 30) -> tuple[EmbeddedStore, str]:
    """Start an embedded store; returns it (call .stop()) and the master address."""
    store = EmbeddedStore(capacity)
    return store, store.start()
