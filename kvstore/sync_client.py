"""Synchronous KV store client: AsyncKVStoreClient on a private event-loop thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from kvstore.block_key import BlockKey, KVLayout, store_key
from kvstore.client import AsyncKVStoreClient, PutResult
from kvstore.payload import Payload

T = TypeVar("T")


class KVStoreClient:
    """Blocking facade with the same methods as AsyncKVStoreClient; thread-safe."""

    def __init__(self, master_addr: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kvstore-client", daemon=True)
        self._thread.start()

        async def make() -> AsyncKVStoreClient:
            return AsyncKVStoreClient(master_addr, **options)

        self._client = self._run(make())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def put(self, items: Mapping[str, Payload], replicas: int | None = None) -> dict[str, PutResult]:
        return self._run(self._client.put(items, replicas))

    def get(self, keys: Sequence[str]) -> dict[str, bytes | None]:
        return self._run(self._client.get(keys))

    def get_into(self, keys: Sequence[str], buffers: Sequence[Payload]) -> list[bool]:
        return self._run(self._client.get_into(keys, buffers))

    def exists(self, keys: Sequence[str]) -> list[bool]:
        return self._run(self._client.exists(keys))

    def remove(self, keys: Sequence[str]) -> list[bool]:
        return self._run(self._client.remove(keys))

    def pin(self, keys: Sequence[str]) -> list[bool]:
        return self._run(self._client.pin(keys))

    def unpin(self, keys: Sequence[str]) -> list[bool]:
        return self._run(self._client.unpin(keys))

    def stats(self) -> Any:
        return self._run(self._client.stats())

    def put_blocks(self, layout: KVLayout, blocks: Mapping[BlockKey, Payload]) -> dict[BlockKey, PutResult]:
        return self._run(self._client.put_blocks(layout, blocks))

    def get_blocks(self, layout: KVLayout, keys: Sequence[BlockKey]) -> list[bytes | None]:
        return self._run(self._client.get_blocks(layout, keys))

    def get_blocks_into(self, layout: KVLayout, keys: Sequence[BlockKey], buffers: Sequence[Payload]) -> list[bool]:
        return self._run(self._client.get_blocks_into(layout, keys, buffers))

    def blocks_exist(self, layout: KVLayout, keys: Sequence[BlockKey]) -> list[bool]:
        return self._run(self._client.blocks_exist(layout, keys))

    def wait_for_blocks(self, layout: KVLayout, keys: Sequence[BlockKey], timeout_s: float) -> list[bool]:
        """Whether each block is committed, waiting up to ``timeout_s`` for all (told by the master, no polling)."""
        return self._run(self._client.wait_for_blocks(layout, keys, timeout_s))

    def when_blocks_committed(self, layout: KVLayout, keys: Sequence[BlockKey], timeout_s: float) -> Future[list[bool]]:
        """``wait_for_blocks`` without blocking the caller: the wait runs on the client's event loop."""
        return asyncio.run_coroutine_threadsafe(self._client.wait_for_blocks(layout, keys, timeout_s), self._loop)

    def remove_blocks(self, layout: KVLayout, keys: Sequence[BlockKey]) -> list[bool]:
        return self._run(self._client.remove([store_key(layout, k) for k in keys]))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> KVStoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
