"""The checkpoint directory the real router reads for a simulated cluster: a tokenizer and
a config with the simulated model's vocabulary size and context length (no weights)."""

from __future__ import annotations

import json
from pathlib import Path

SIM_VOCAB_SIZE = 128256  # Llama-3.1's: token-id prompts may use any id below it
SIM_MAX_MODEL_LEN = 262144  # above the longest trace prompt (191k tokens), so that no request is refused


def write_sim_model_dir(path: Path, vocab_size: int = SIM_VOCAB_SIZE, max_model_len: int = SIM_MAX_MODEL_LEN) -> Path:
    """Write (once) a tokenizer and config.json under ``path``; returns ``path``."""
    from engine.make_model import write_tokenizer

    path.mkdir(parents=True, exist_ok=True)
    config_path = path / "config.json"
    if not config_path.exists():
        eos = write_tokenizer(path, vocab_size=512)  # ids the tokenizer lacks decode to nothing
        config = {"architectures": ["LlamaForCausalLM"], "vocab_size": vocab_size, "max_position_embeddings": max_model_len,
                  "eos_token_id": eos}  # fmt: skip
        config_path.write_text(json.dumps(config))
    return path
