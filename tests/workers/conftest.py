"""Session stack on loopback: embedded kvstore, prefill workers A (offers the device-direct pull and
writes the store in the background: --store-write-budget) and B (store transport only), one decode worker, and an
in-process colocated reference engine with the same model and block size."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.make_model import make_model
from kvstore.embedded import EmbeddedStore
from worker_processes import KV_WAIT_S, WorkerProcess, start_worker, wait_serving



@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_model("llama", tmp_path_factory.mktemp("worker-model") / "tiny", "tiny"))


@pytest.fixture(scope="session")
def store() -> Iterator[EmbeddedStore]:
    s = EmbeddedStore(capacity=256 << 20)
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def stack(model_dir: str, store: EmbeddedStore) -> Iterator[dict[str, WorkerProcess]]:
    workers = {
        "prefill_a": start_worker("prefill", model_dir, store.address, "prefill-a", "--store-write-budget", "1GiB"),
        "prefill_b": start_worker("prefill", model_dir, store.address, "prefill-b", "--kv-transport", "store"),
        "decode": start_worker("decode", model_dir, store.address, "decode-0", "--kv-wait-timeout", str(KV_WAIT_S)),
    }
    try:
        wait_serving(list(workers.values()))
        yield workers
    finally:
        for w in workers.values():
            w.stop()


@pytest.fixture(scope="session")
def reference(model_dir: str) -> LLMEngine:
    return LLMEngine(EngineConfig(model=model_dir, num_kv_blocks=4096))
