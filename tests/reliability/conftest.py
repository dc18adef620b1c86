"""One tiny model and one `splitserve up` stack (1 prefill + 2 decode) for the reliability suite."""

from __future__ import annotations

import pytest

from bench.fault_load import make_tiny_model, start_up


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_tiny_model(tmp_path_factory.mktemp("fault-model") / "tiny-llama")


@pytest.fixture(scope="session")
def stack(model: str, tmp_path_factory: pytest.TempPathFactory):
    stack = start_up(model, tmp_path_factory.mktemp("fault-stack"), "--prefill", "1", "--decode", "2",
                     "--colocate-threshold", "16",
                     # KV through the store, so the store-fault tests exercise the store as a cache
                     "--kv-transport", "store")  # fmt: skip
    yield stack
    assert stack.stop() == 0, stack.tail()


@pytest.fixture(scope="session")
def mooncake_stack(model: str, tmp_path_factory: pytest.TempPathFactory):
    """The same stack with Mooncake Store in place of ours (`up --kvstore-backend mooncake`)."""
    stack = start_up(model, tmp_path_factory.mktemp("fault-stack-mooncake"), "--prefill", "1", "--decode", "2",
                     "--colocate-threshold", "16", "--kv-transport", "store", "--kvstore-backend", "mooncake",
                     "--kvstore-capacity", "64MiB")  # fmt: skip
    yield stack
    assert stack.stop() == 0, stack.tail()
