"""Random tiny checkpoints, built once per test session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.make_model import make_model

ARCH_CASES: dict[str, dict[str, Any]] = {
    "llama3": dict(arch="llama"),  # llama3 rope scaling, tied embeddings
    "mistral": dict(arch="mistral"),  # untied lm_head
    "qwen2": dict(arch="qwen2"),  # qkv bias
    "qwen3": dict(arch="qwen3"),  # q/k norm
    "qwen3-moe": dict(arch="qwen3-moe"),  # experts, mlp_only_layers=[0]
    "llama-sharded": dict(arch="llama", max_shard_size="100KB", rope_scaling=None, tie_word_embeddings=False),
}


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {name: make_model(model_dir=root / name, seed=i, **kw) for i, (name, kw) in enumerate(ARCH_CASES.items())}


@pytest.fixture(scope="session")
def llama_dir(checkpoints) -> Path:
    return checkpoints["llama3"]


@pytest.fixture(scope="session")
def moe_dir(checkpoints) -> Path:
    return checkpoints["qwen3-moe"]
