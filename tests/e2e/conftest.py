"""One `splitserve up` stack (kvstore, 1 prefill + 2 decode workers, router) for the whole
end-to-end session, on a tiny random-weight Llama written by `splitserve make-model`."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_stack import CLI, ENV, start_up

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("e2e-model") / "tiny-llama"
    subprocess.run(CLI + ["make-model", "--arch", "llama", "--size", "tiny", str(path)], check=True, env=ENV,
                   capture_output=True)  # fmt: skip
    return str(path)


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e-logs")


@pytest.fixture(scope="session")
def stack(model_dir: str, logs: Path) -> Iterator[dict[str, Any]]:
    proc, state = start_up(model_dir, logs, "--prefill", "1", "--decode", "2")
    try:
        yield state
    finally:
        proc.stop(grace_s=40)
        assert proc.process.returncode == 0, f"`splitserve up` did not stop cleanly:\n{proc.tail()}"
