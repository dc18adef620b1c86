"""KV blocks in Mooncake Store, through the same calls the workers make on our store.

``MooncakeStore`` offers what engine/server/kv_transfer.py uses of
kvstore.sync_client.KVStoreClient — blocks_exist, get_blocks_into, put_blocks, close —
with the same meaning, on top of ``mooncake.store.MooncakeDistributedStore``
(pip package ``mooncake-transfer-engine-non-cuda``; the CUDA builds work the same):

- objects are named with our kvstore.block_key.store_key, so content addressing and
  layout separation are identical for both backends;
- bytes move with batch_put_from / batch_get_into straight from and into the caller's
  buffers (no staging copy); the buffers are registered with the transfer engine for the
  call (RDMA needs it; for TCP it is a few microseconds);
- Mooncake's put returns success both for a new object and for a key that already
  exists or that another client is still writing, so keys it accepted are checked with
  one exists call: not yet readable -> PutStatus.IN_FLIGHT, as our store reports it;
- a miss (never written, evicted, its segment's node gone, transfer failed) reads as
  False, never as other bytes: Mooncake holds a read lease while it copies.

Mooncake publishes no KV events in our format; see kvstore/store_tier_events.py.
Thread-safe: the Mooncake client serves concurrent calls (the worker's transfer pool).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from kvstore.block_key import BlockKey, KVLayout, store_key
from kvstore.client import PutResult, PutStatus
from kvstore.errors import InvalidRequest, NoStorageNodes, PutExpired, StoreError, StoreFull
from kvstore.mooncake_url import MooncakeURL
from kvstore.payload import DestinationBuffer, Payload, readable_view

# Mooncake's ErrorCode values (mooncake-store/include/types.h) that we tell apart.
_NO_AVAILABLE_HANDLE = -200  # no room, even after eviction
_SEGMENT_NOT_FOUND = -101  # no memory mounted in the cluster
_INVALID_KEY = -400
_INVALID_PARAMS = -600  # e.g. the caller's buffer is smaller than the object
_LEASE_EXPIRED = -707
# a get with these is a miss: not ready, not found, replica gone / lost, transfer failed, or the
# read outlived its lease (the bytes may have been reused: never hand them out)
_MISSES = {-703, -704, -710, -712, -800, _LEASE_EXPIRED}
_RPC_FAIL = -900
POLL_S = 0.002  # wait_for_blocks: Mooncake has no commit notification

INSTALL_HINT = (
    "pip install mooncake-transfer-engine-non-cuda (CPU) or mooncake-transfer-engine (CUDA); "
    "its shared libraries need Debian's libibverbs1 librdmacm1 libnuma1 (make system-deps-mooncake)"
)


def mooncake_error(code: int, what: str) -> StoreError:
    """Our specific error for a Mooncake error code."""
    if code == _NO_AVAILABLE_HANDLE:
        return StoreFull(f"{what}: Mooncake has no room even after eviction (code {code})")
    if code == _SEGMENT_NOT_FOUND:
        return NoStorageNodes(
            f"{what}: no memory segment is mounted in the Mooncake cluster (start mooncake_client, or set segment= in the URL)"
        )
    if code in (_INVALID_KEY, _INVALID_PARAMS):
        return InvalidRequest(f"{what}: Mooncake rejected the request as invalid (code {code})")
    if code == _LEASE_EXPIRED:
        return PutExpired(f"{what}: the Mooncake lease expired before the transfer finished (code {code})")
    if code == _RPC_FAIL:
        return NoStorageNodes(f"{what}: the Mooncake master did not answer (code {code})")
    return StoreError(f"{what}: Mooncake error code {code}")


def _address(view: memoryview) -> int:
    return np.frombuffer(view, dtype=np.uint8).ctypes.data if len(view) else 0


class MooncakeStore:
    """A client of one Mooncake cluster; ``open`` joins it from a mooncake:// URL."""

    def __init__(self, url: MooncakeURL, store: Any) -> None:
        from mooncake.store import ReplicateConfig

        self.url = url
        self._store = store
        self._config = ReplicateConfig()
        self._config.replica_num = url.replicas
        self._registered: dict[tuple[int, int], int] = {}  # (address, size) -> calls using it
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, url: str | MooncakeURL) -> MooncakeStore:
        """Join the cluster: NoStorageNodes when the master cannot be reached."""
        parsed = url if isinstance(url, MooncakeURL) else MooncakeURL.parse(url)
        # Mooncake logs every setup step at INFO to the worker's stderr; keep warnings and errors.
        os.environ.setdefault("MC_LOG_LEVEL", "WARNING")
        try:
            from mooncake.store import MooncakeDistributedStore
        except ImportError as exc:
            raise StoreError(f"the Mooncake backend needs the mooncake package: {INSTALL_HINT} ({exc})") from exc
        _check_reachable(parsed.endpoints(), wait_s=parsed.wait_s)
        store = MooncakeDistributedStore()
        rc = store.setup(
            parsed.local_hostname(),
            parsed.metadata_server,
            parsed.segment,
            parsed.local_buffer,
            parsed.protocol,
            parsed.device,
            parsed.master,
        )
        if rc != 0:
            raise NoStorageNodes(
                f"cannot join the Mooncake master at {parsed.master} (metadata {parsed.metadata}): setup returned {rc}"
            )
        return cls(parsed, store)

    # ---- the worker-facing calls (same names and meaning as KVStoreClient's) ------------------
    def blocks_exist(self, layout: KVLayout, keys: Sequence[BlockKey]) -> list[bool]:
        """Whether each block is readable now; takes no lease."""
        return self._exist([store_key(layout, k) for k in keys])

    def wait_for_blocks(self, layout: KVLayout, keys: Sequence[BlockKey], timeout_s: float) -> list[bool]:
        """Whether each block is readable, waiting up to ``timeout_s`` for all of them.

        Mooncake's master tells no one about a commit, so this polls (every 2 ms); our store's
        master answers at the commit instead (kvstore/client.py wait_committed).
        """
        names = [store_key(layout, k) for k in keys]
        deadline = time.monotonic() + timeout_s
        found = self._exist(names)
        while not all(found) and time.monotonic() < deadline:
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
            found = self._exist(names)
        return found

    def get_blocks_into(self, layout: KVLayout, keys: Sequence[BlockKey], buffers: Sequence[Payload]) -> list[bool]:
        """Read each block into the caller's buffer; True where found.

        An absent block leaves its buffer untouched; after a failed transfer (node lost) the
        buffer's bytes are unspecified, and the block reads as a miss all the same.
        """
        if len(keys) != len(buffers):
            raise InvalidRequest(f"get_into: {len(keys)} keys but {len(buffers)} buffers")
        if not keys:
            return []
        names = [store_key(layout, k) for k in keys]
        dests = [DestinationBuffer(b) for b in buffers]
        ptrs, sizes = [_address(d.view) for d in dests], [len(d.view) for d in dests]
        with self._registration(ptrs, sizes):
            codes = self._store.batch_get_into(names, ptrs, sizes)
        found = []
        for name, dest, code in zip(names, dests, codes):
            if code >= 0:
                dest.finish()
            elif code == _INVALID_PARAMS:
                raise InvalidRequest(f"get_into: object {name!r} is larger than its {len(dest.view)}-byte buffer")
            elif code not in _MISSES:
                raise mooncake_error(code, f"get_into {name!r}")
            found.append(code >= 0)
        return found

    def put_blocks(self, layout: KVLayout, blocks: Mapping[BlockKey, Payload]) -> dict[BlockKey, PutResult]:
        """Store blocks (immutable, content-addressed); per-key STORED / IN_FLIGHT / FAILED."""
        if not blocks:
            return {}
        keys = list(blocks)
        names = [store_key(layout, k) for k in keys]
        views = [readable_view(blocks[k]) for k in keys]
        ptrs, sizes = [_address(v) for v in views], [len(v) for v in views]
        if 0 in sizes:
            raise InvalidRequest("put: a KV block of 0 bytes cannot be stored")
        with self._registration(ptrs, sizes):
            codes = self._store.batch_put_from(names, ptrs, sizes, self._config)
        results: dict[BlockKey, PutResult] = {}
        accepted = [i for i, code in enumerate(codes) if code == 0]
        readable = self._exist([names[i] for i in accepted]) if accepted else []
        for i, ok in zip(accepted, readable):
            results[keys[i]] = PutResult(PutStatus.STORED if ok else PutStatus.IN_FLIGHT)
        for i, code in enumerate(codes):
            if code != 0:
                results[keys[i]] = PutResult(PutStatus.FAILED, mooncake_error(code, f"put {names[i]!r}"))
        return {k: results[k] for k in keys}

    def remove_blocks(self, layout: KVLayout, keys: Sequence[BlockKey]) -> list[bool]:
        """Remove blocks now, even if a reader holds a lease; True where one was removed."""
        if not keys:
            return []
        codes = self._store.batch_remove([store_key(layout, k) for k in keys], True)
        return [c == 0 for c in codes]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._store.close()

    def __enter__(self) -> MooncakeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- plumbing ---------------------------------------------------------------------------------
    def _exist(self, names: list[str]) -> list[bool]:
        if not names:
            return []
        codes = self._store.batch_is_exist(names)
        if any(c < 0 for c in codes):
            raise NoStorageNodes(
                f"exists: the Mooncake master at {self.url.master} did not answer for {sum(c < 0 for c in codes)} key(s)"
            )
        return [c == 1 for c in codes]

    @contextmanager
    def _registration(self, ptrs: list[int], sizes: list[int]) -> Iterator[None]:
        """Register the caller's memory with the transfer engine for one call.

        Buffers are merged into contiguous ranges (a request's rows are usually one tensor,
        so one registration). Counted per range: concurrent calls over the same rows
        register it once and the last one out unregisters it.
        """
        ranges = _merged_ranges(ptrs, sizes)
        with self._lock:
            for r in ranges:
                if self._registered.get(r, 0) == 0 and self._store.register_buffer(r[0], r[1]) != 0:
                    continue  # not registrable (TCP copies from any memory); RDMA would report a per-key error
                self._registered[r] = self._registered.get(r, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                for r in ranges:
                    count = self._registered.get(r, 0)
                    if count == 1:
                        del self._registered[r]
                        self._store.unregister_buffer(r[0])
                    elif count > 1:
                        self._registered[r] = count - 1


def _check_reachable(endpoints: list[str], timeout_s: float = 3.0, wait_s: float = 10.0) -> None:
    """Fail fast: Mooncake's setup retries an unreachable master for minutes. One endpoint must answer.

    A refused connection is tried again for ``wait_s``: a master started beside its workers
    (``splitserve up``) may still be binding its port.
    """
    deadline = time.monotonic() + wait_s
    while True:
        errors = []
        for endpoint in endpoints:
            host, port = endpoint.rsplit(":", 1)
            try:
                socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
                return
            except (OSError, ValueError) as exc:
                errors.append(f"{endpoint}: {exc}")
        if time.monotonic() >= deadline:
            raise NoStorageNodes(f"cannot reach the Mooncake master ({'; '.join(errors)})")
        time.sleep(0.2)


def _merged_ranges(ptrs: list[int], sizes: list[int]) -> list[tuple[int, int]]:
    """[(address, size)] covering every buffer, adjacent or overlapping ones merged."""
    spans = sorted((p, p + s) for p, s in zip(ptrs, sizes) if s > 0)
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end - start) for start, end in merged]
