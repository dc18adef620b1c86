"""The tokenizer and end-of-sequence ids of a checkpoint directory."""

from __future__ import annotations

import json
from pathlib import Path

from engine.errors import CheckpointError


def load_tokenizer(model_dir: Path):
    if not (model_dir / "tokenizer.json").is_file() and not (model_dir / "tokenizer.model").is_file():
        raise CheckpointError(
            f"no tokenizer.json in {model_dir}; copy the tokenizer files of the model next to its weights"
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _as_set(value) -> set[int]:
    if value is None:
        return set()
    return {int(v) for v in value} if isinstance(value, list) else {int(value)}


def eos_token_ids(model_dir: Path, tokenizer) -> set[int]:
    """EOS ids from generation_config.json (preferred, may be a list), else config / tokenizer."""
    gen = model_dir / "generation_config.json"
    if gen.is_file():
        ids = _as_set(json.loads(gen.read_text()).get("eos_token_id"))
        if ids:
            return ids
    ids = _as_set(json.loads((model_dir / "config.json").read_text()).get("eos_token_id"))
    return ids or _as_set(getattr(tokenizer, "eos_token_id", None))
