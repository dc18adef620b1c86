"""Reading a HF checkpoint directory: config, fingerprint, and weights into the parallel layers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
import xxhash
from safetensors import safe_open
from torch import nn

from engine.errors import CheckpointError
from engine.weight_loader import ShardId, weight_loader

WEIGHT_GLOB = "*.safetensors"


def _require(model_dir: Path, name: str) -> Path:
    path = model_dir / name
    if not path.is_file():
        raise CheckpointError(
            f"{path} not found; --model must be a HF checkpoint directory with config.json, "
            "*.safetensors and tokenizer files (try `splitserve make-model` for a test model)"
        )
    return path


def weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [_require(model_dir, n) for n in names]
    else:
        files = sorted(model_dir.glob(WEIGHT_GLOB))
    if not files:
        raise CheckpointError(f"no *.safetensors weights in {model_dir}; only safetensors checkpoints are supported")
    return files


def load_hf_config(model_dir: Path):
    _require(model_dir, "config.json")
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir)


def fingerprint(model_dir: Path, load_format: str = "safetensors") -> str:
    """Stable model identity: xxh3 of config.json plus the weight files' names and sizes.

    Random ("dummy") weights differ per process, so their fingerprint says so and
    never matches a real checkpoint's.
    """
    h = xxhash.xxh3_128()
    h.update(_require(model_dir, "config.json").read_bytes())
    if load_format == "dummy":
        h.update(b"\0dummy-weights")
        return h.hexdigest()
    for path in weight_files(model_dir):
        h.update(f"\0{path.name}:{path.stat().st_size}".encode())
    return h.hexdigest()


@torch.no_grad()
def init_dummy_weights(model: nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """Fill every parameter with seeded random values on its own device (no checkpoint read)."""
    gen = None
    for name, param in model.named_parameters():
        if gen is None or gen.device != param.device:
            gen = torch.Generator(device=param.device).manual_seed(seed)
        if name.endswith("norm.weight") or param.dim() == 1 and "norm" in name:
            param.fill_(1.0)
        else:
            param.normal_(0.0, std, generator=gen)


def _tensors(model_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    for path in weight_files(model_dir):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def _expand_fused_experts(name: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """transformers-5 style 3-D expert tensors -> per-expert HF names."""
    prefix = name.rsplit(".", 1)[0]
    if name.endswith("experts.gate_up_proj"):  # [E, 2I, H]
        for e, w in enumerate(tensor):
            gate, up = w.chunk(2, dim=0)
            yield f"{prefix}.{e}.gate_proj.weight", gate
            yield f"{prefix}.{e}.up_proj.weight", up
    elif name.endswith("experts.down_proj"):  # [E, H, I]
        for e, w in enumerate(tensor):
            yield f"{prefix}.{e}.down_proj.weight", w
    else:
        yield name, tensor


def _copy_loader(param: nn.Parameter, full: torch.Tensor) -> None:
    """Replicated parameters (norms): the shard is the whole tensor."""
    if param.shape != full.shape:
        raise CheckpointError(
            f"weight of shape {tuple(full.shape)} does not fit parameter {tuple(param.shape)}; config.json disagrees "
            "with the weights"
        )
    param.data.copy_(full)


def load_weights(model: nn.Module, model_dir: Path) -> None:
    """Load every parameter through its weight_loader; raise if any is missing."""
    params = dict(model.named_parameters())
    packed: dict[str, tuple[str, ShardId]] = getattr(model, "packed_modules", {})
    tied = getattr(model, "tie_word_embeddings", False)
    loaded: set[str] = set()
    for raw_name, raw in _tensors(model_dir):
        for name, tensor in _expand_fused_experts(raw_name, raw):
            if tied and name == "lm_head.weight":
                continue
            target, shard = name, None
            for part, (fused, shard_id) in packed.items():
                if f".{part}." in name:
                    target, shard = name.replace(f".{part}.", f".{fused}."), shard_id
                    break
            param = params.get(target)
            if param is None:
                if target.endswith("rotary_emb.inv_freq"):
                    continue
                if ".experts." in target:
                    continue  # an expert this rank does not own
                raise CheckpointError(
                    f"checkpoint tensor {raw_name!r} matches no model parameter; is config.json the one of these weights?"
                )
            loader = weight_loader(param)
            if loader is not None:
                loader(param, tensor, shard)
            elif shard is None:
                _copy_loader(param, tensor)
            else:
                raise CheckpointError(f"checkpoint tensor {raw_name!r} is shard {shard!r} of {target!r}, which has no shards")
            loaded.add(target)
    missing = sorted(n for n in params if n not in loaded and not (tied and n == "lm_head.weight"))
    # a fused parameter counts as loaded once any of its shards is; partial fused loads are a checkpoint bug
    if missing:
        raise CheckpointError(f"weights missing from {model_dir}: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
