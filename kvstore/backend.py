"""The KV store as the workers see it, and how they pick one of its two implementations.

A worker needs five calls of a store (kv_transfer/store.py): ``blocks_exist``,
``wait_for_blocks`` (until blocks another writer is putting are committed), ``get_blocks_into``
(the caller's buffers), ``put_blocks`` (per-key PutResult: STORED / EXISTS / IN_FLIGHT / FAILED)
and ``close``; ``remove_blocks`` is for tools and tests. Both backends give them the same
meaning:

- **ours** (kvstore.sync_client.KVStoreClient): master + storage nodes over gRPC and
  same-host shared memory, or embedded in one process; publishes KV events itself, and its
  master answers ``wait_for_blocks`` at the commit (``when_blocks_committed`` offers that
  wait as a future, so no thread of the reader sits in it).
- **mooncake** (kvstore.mooncake_store.MooncakeStore): a Mooncake Store cluster
  (``mooncake_master`` + memory segments, TCP or RDMA); the writers announce what
  they stored (kvstore/store_tier_events.py).

``open_store`` chooses by address: ``HOST:PORT`` is our master, ``mooncake://...`` a
Mooncake master (kvstore/mooncake_url.py). ``store_address`` turns the
``--kvstore-backend ours|mooncake`` flag plus a ``--kvstore`` address into that address.
Every backend is safe to call from several threads at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from kvstore.block_key import BlockKey, KVLayout
from kvstore.client import PutResult
from kvstore.errors import InvalidRequest
from kvstore.mooncake_url import SCHEME, is_mooncake_url
from kvstore.payload import Payload

BACKENDS = ("ours", "mooncake")


class StoreBackend(Protocol):
    def blocks_exist(self, layout: KVLayout, keys: Sequence[BlockKey]) -> list[bool]: ...

    def wait_for_blocks(self, layout: KVLayout, keys: Sequence[BlockKey], timeout_s: float) -> list[bool]: ...

    def get_blocks_into(self, layout: KVLayout, keys: Sequence[BlockKey], buffers: Sequence[Payload]) -> list[bool]: ...

    def put_blocks(self, layout: KVLayout, blocks: Mapping[BlockKey, Payload]) -> dict[BlockKey, PutResult]: ...

    def remove_blocks(self, layout: KVLayout, keys: Sequence[BlockKey]) -> list[bool]: ...

    def close(self) -> None: ...

    def __enter__(self) -> StoreBackend: ...  # every backend closes itself at the end of a with block

    def __exit__(self, *exc: object) -> None: ...


def open_store(address: str, **options: Any) -> StoreBackend:
    """A connected store client for ``address`` (HOST:PORT -> ours, mooncake://... -> Mooncake).

    ``options`` go to our client (replicas, use_shm, timeout_s, ...); a Mooncake URL
    carries its options in its query string.
    """
    if is_mooncake_url(address):
        if options:
            raise InvalidRequest(f"Mooncake options go in the URL's query string, not as arguments: {sorted(options)}")
        from kvstore.mooncake_store import MooncakeStore

        return MooncakeStore.open(address)
    if "://" in address:
        raise InvalidRequest(f"unknown KV store address {address!r}: use HOST:PORT (our store) or {SCHEME}://MASTER:PORT?...")
    if ":" not in address:
        raise InvalidRequest(f"KV store address {address!r} needs a port: HOST:PORT")
    from kvstore.sync_client import KVStoreClient

    return KVStoreClient(address, **options)


def store_address(backend: str, address: str) -> str:
    """The address ``open_store`` takes for a ``--kvstore-backend`` choice and a ``--kvstore`` value.

    A full URL wins over the flag when both agree; they must not contradict each other.
    """
    if backend not in BACKENDS:
        raise InvalidRequest(f"--kvstore-backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "ours":
        if is_mooncake_url(address):
            raise InvalidRequest(f"--kvstore-backend ours but --kvstore is a Mooncake URL ({address!r})")
        return address
    return address if is_mooncake_url(address) else f"{SCHEME}://{address}"
