"""The tokenizer and end-of-sequence ids of a checkpoint directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.errors import CheckpointError


def load_tokenizer(model_dir: Path):
    if not (model_dir / "tokenizer.json").is_file() and not (model_dir / "tokenizer.model").is_file():
        raise CheckpointError(f"no tokenizer.json in {model_dir}; copy the tokenizer files of the model next to its weights")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _as_set(value: Any) -> set[int]:
    if value is None:
        return set()
    return {int(v) for v in value} if isinstance(value, list) else {int(value)}


def eos_token_ids(model_dir: Path, tokenizer: Any) -> set[int]:
    """EOS ids: generation_config.json's (may be a list) when it names any, else config.json's, else the
    tokenizer's. The one resolution: the engine stops on these and the router's stop checks use them too."""
    for name in ("generation_config.json", "config.json"):
        path = model_dir / name
        ids = _as_set(json.loads(path.read_text()).get("eos_token_id")) if path.is_file() else set()
        if ids:
            return ids
    return _as_set(getattr(tokenizer, "eos_token_id", None))
