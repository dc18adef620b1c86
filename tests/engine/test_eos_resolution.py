"""End-of-sequence ids: one resolution, which the engine and the router both use."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.tokenizer_files import eos_token_ids
from router import tokenization

TOKENIZER = SimpleNamespace(eos_token_id=2)


def write(model_dir: Path, config: dict | None, generation: dict | None) -> Path:
    for name, body in (("config.json", config), ("generation_config.json", generation)):
        if body is not None:
            (model_dir / name).write_text(json.dumps(body))
    return model_dir


@pytest.mark.parametrize(
    ("config", "generation", "expected"),
    [
        ({"eos_token_id": 1}, {"eos_token_id": [7, 8]}, {7, 8}),  # generation_config wins (Llama 3 lists two)
        ({"eos_token_id": 1}, {"eos_token_id": []}, {1}),  # an empty list names none: fall through
        ({"eos_token_id": 1}, {}, {1}),
        ({}, None, {2}),  # neither file names one: the tokenizer's
        (None, None, {2}),  # no config.json at all (a GGUF conversion in progress, a bare tokenizer dir)
    ],
)
def test_eos_ids_come_from_the_first_source_that_names_any(tmp_path, config, generation, expected) -> None:
    assert eos_token_ids(write(tmp_path, config, generation), TOKENIZER) == expected


def test_the_router_resolves_eos_with_the_engines_function() -> None:
    assert tokenization.eos_token_ids is eos_token_ids
