"""Store fixtures for this folder's tests: the backends run as real processes on 127.0.0.1 (store_backends.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from store_backends import BACKENDS, BackendCluster, start_backend

from kvstore import mooncake_processes


@pytest.fixture(params=BACKENDS, scope="module")
def backend_cluster(request: pytest.FixtureRequest) -> Iterator[BackendCluster]:
    """One cluster per backend ("ours", "mooncake") for a whole test module: tests must not kill its nodes."""
    cluster = start_backend(request.param)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def mooncake_url() -> Iterator[str]:
    """A Mooncake master plus one 256 MiB memory node (from the mooncake wheel) on loopback; yields the
    mooncake:// URL that kvstore.backend.open_store takes."""
    cluster = mooncake_processes.start_cluster(1, 256 << 20)
    yield cluster.url
    cluster.stop()
