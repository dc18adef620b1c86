"""A tiny checkpoint directory (tokenizer, chat template, config) for router tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

MAX_MODEL_LEN = 128


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    from engine.make_model import write_tokenizer

    path = tmp_path_factory.mktemp("tiny-model")
    eos = write_tokenizer(path, vocab_size=384)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 384,
        "max_position_embeddings": MAX_MODEL_LEN,
        "eos_token_id": eos,
    }
    (path / "config.json").write_text(json.dumps(config))
    return path
