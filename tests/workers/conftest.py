"""Session stack on loopback: embedded kvstore, prefill workers A (offers the device-direct pull and
writes the store in the background: --store-write-budget) and B (store transport only), one decode worker, and an
in-process colocated reference engine with the same model and block size.

The tests of the store path also run on Mooncake Store (``backend_stack``, parametrised "ours" /
"mooncake"): the same three workers on a real ``mooncake_master`` + memory node, started once when a
test first asks for it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from worker_processes import KV_WAIT_S, WorkerProcess, start_worker, wait_serving

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.make_model import make_model
from kvstore import mooncake_processes
from kvstore.embedded import EmbeddedStore


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_model("llama", tmp_path_factory.mktemp("worker-model") / "tiny", "tiny"))


@pytest.fixture(scope="session")
def store() -> Iterator[EmbeddedStore]:
    s = EmbeddedStore(capacity=256 << 20)
    s.start()
    yield s
    s.stop()


def start_stack(model_dir: str, kvstore: str, tag: str = "", p2p: bool = False) -> dict[str, WorkerProcess]:
    workers = {
        "prefill_a": start_worker("prefill", model_dir, kvstore, f"prefill-a{tag}", "--store-write-budget", "1GiB"),
        "prefill_b": start_worker("prefill", model_dir, kvstore, f"prefill-b{tag}", "--kv-transport", "store"),
        "decode": start_worker("decode", model_dir, kvstore, f"decode-0{tag}", "--kv-wait-timeout", str(KV_WAIT_S)),
    }
    if p2p:  # C: the point-to-point send (a process group of the two workers; gloo here)
        workers["prefill_c"] = start_worker("prefill", model_dir, kvstore, f"prefill-c{tag}", "--kv-transport", "p2p")
    try:
        wait_serving(list(workers.values()))
    except BaseException:
        for w in workers.values():
            w.stop()
        raise
    return workers


@pytest.fixture(scope="session")
def stack(model_dir: str, store: EmbeddedStore) -> Iterator[dict[str, WorkerProcess]]:
    workers = start_stack(model_dir, store.address, p2p=True)
    try:
        yield workers
    finally:
        for w in workers.values():
            w.stop()


@pytest.fixture(scope="session")
def mooncake_stack(model_dir: str) -> Iterator[tuple[dict[str, WorkerProcess], str]]:
    """The same workers on Mooncake Store: mooncake_master + one 256 MiB memory node."""
    cluster = mooncake_processes.start_cluster(1, 256 << 20)
    try:
        workers = start_stack(model_dir, cluster.url, "-mooncake")
        try:
            yield workers, cluster.url
        finally:
            for w in workers.values():
                w.stop()
    finally:
        cluster.stop()


@dataclass(slots=True)
class BackendStack:
    backend: str
    workers: dict[str, WorkerProcess]
    kvstore: str  # what the workers pass to --kvstore (kvstore.backend.open_store opens it)


@pytest.fixture(params=["ours", "mooncake"])
def backend_stack(request: pytest.FixtureRequest) -> BackendStack:
    """The session stack of one store backend (parametrise indirectly to pick one)."""
    if request.param == "ours":
        return BackendStack("ours", request.getfixturevalue("stack"), request.getfixturevalue("store").address)
    workers, url = request.getfixturevalue("mooncake_stack")
    return BackendStack("mooncake", workers, url)


@pytest.fixture(scope="session")
def reference(model_dir: str) -> LLMEngine:
    return LLMEngine(EngineConfig(model=model_dir, num_kv_blocks=4096))
