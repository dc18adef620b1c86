"""A GGUF file as a HF checkpoint directory, converted once and cached by the file's content hash.

Why convert instead of dequantising at every load: every component (prefill and decode
workers, their TP ranks, the router's tokenizer) already reads HF directories, so one
converted directory serves them all, and a restart costs a directory read, not a
dequantisation. The weights are stored dequantised in float32 (what the `gguf` library
gives, exactly); config.json asks for bfloat16 so that GPUs serve half precision by
default while CPUs keep float32 (engine/model_runner.py `resolve_dtype`).

Only the Llama and Qwen2 families are mapped; other architectures get a clear error.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import xxhash

from engine.errors import CheckpointError

if TYPE_CHECKING:
    from gguf import GGUFReader

# GGUF architecture -> (HF architecture class, HF model_type, whether llama.cpp permuted Q/K for its rotary layout)
ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "llama", True),
    "qwen2": ("Qwen2ForCausalLM", "qwen2", False),
}
# GGUF tensor name (after "blk.N.") -> HF name (after "model.layers.N.")
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
log = logging.getLogger(__name__)
# bump when the converted layout changes, so that stale cache entries are not reused
CONVERTER_VERSION = 1


@dataclass(slots=True)
class GGUFModel:
    """What the converter read from the file's metadata."""

    arch: str
    config: dict
    chat_template: str | None
    eos_token_id: int | None
    bos_token_id: int | None


def _gguf() -> ModuleType:
    try:
        import gguf
    except ImportError as exc:
        raise CheckpointError("reading a .gguf model needs the `gguf` package: pip install gguf") from exc
    return gguf


def file_digest(path: Path) -> str:
    """xxh3-128 of the file's bytes: the cache key (a renamed copy hits, an edited file misses)."""
    h = xxhash.xxh3_128()
    with path.open("rb") as f:
        while chunk := f.read(1 << 23):
            h.update(chunk)
    return h.hexdigest()


def cache_root() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "splitserve" / "gguf"


def _field(reader: GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def read_metadata(reader: GGUFReader, source: Path) -> GGUFModel:
    """HF config.json content from the GGUF key/values (llama.cpp's names, prefixed by the architecture)."""
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{source}: GGUF architecture {arch!r} is not supported; supported: {', '.join(ARCHITECTURES)}")
    if _field(reader, f"{arch}.rope.scaling.type", "none") not in ("none", None):
        raise CheckpointError(f"{source}: GGUF rope scaling {_field(reader, f'{arch}.rope.scaling.type')!r} is not supported yet")
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        raise CheckpointError(f"{source}: GGUF rope_freqs (Llama-3 style rope scaling) is not supported yet")
    hf_arch, model_type, _ = ARCHITECTURES[arch]
    hidden = int(_field(reader, f"{arch}.embedding_length"))
    heads = int(_field(reader, f"{arch}.attention.head_count"))
    if "token_embd.weight" not in names:
        raise CheckpointError(f"{source}: no token_embd.weight tensor; is this a complete model file?")
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    vocab = int(embd.shape[1])  # ggml order [hidden, vocab]: the rows the model can actually emit
    eos_field, bos_field = _field(reader, "tokenizer.ggml.eos_token_id"), _field(reader, "tokenizer.ggml.bos_token_id")
    eos = None if eos_field is None else int(eos_field)
    bos = None if bos_field is None else int(bos_field)
    config = {
        "architectures": [hf_arch],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, f"{arch}.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, f"{arch}.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
        "head_dim": int(_field(reader, f"{arch}.attention.key_length", hidden // heads)),
        "max_position_embeddings": int(_field(reader, f"{arch}.context_length")),
        "rms_norm_eps": float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        "vocab_size": vocab,
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
    }
    return GGUFModel(arch, config, _field(reader, "tokenizer.chat_template"), eos, bos)


def hf_tensor_name(gguf_name: str) -> str:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`."""
    base, _, suffix = gguf_name.rpartition(".")
    if base.startswith("blk."):
        _, layer, part = base.split(".", 2)
        if part in _LAYER_NAMES:
            return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{suffix}"
    elif base in _TOP_NAMES:
        return f"{_TOP_NAMES[base]}.{suffix}"
    raise CheckpointError(f"GGUF tensor {gguf_name!r} has no mapping to a Llama/Qwen2 parameter")


def unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (its convert script interleaves each head's two rotary halves).

    w: [n_heads * head_dim, ...]; llama.cpp stored rows as (head, half_dim, 2); HF wants (head, 2, half_dim).
    """
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_tensors(reader: GGUFReader, model: GGUFModel) -> dict[str, torch.Tensor]:
    """Every tensor dequantised to float32 with the `gguf` library, under its HF name, in HF layout."""
    gguf = _gguf()
    permuted = ARCHITECTURES[model.arch][2]
    heads, kv_heads = model.config["num_attention_heads"], model.config["num_key_value_heads"]
    out: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        # ggml shapes list the fastest dimension first; HF [out, in] is the reverse
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(tuple(reversed(t.shape.tolist())))
        if permuted and ".attn_q." in t.name:
            w = unpermute_rotary(w, heads)
        elif permuted and ".attn_k." in t.name:
            w = unpermute_rotary(w, kv_heads)
        out[hf_tensor_name(t.name)] = torch.from_numpy(np.ascontiguousarray(w))
    return out


def _write_tokenizer(source: Path, model: GGUFModel, out: Path) -> None:
    """HF fast tokenizer from the GGUF vocabulary and merges (transformers' GGUF converter), plus its chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    if model.chat_template:
        tok.chat_template = model.chat_template
    tok.save_pretrained(out)


def convert(source: Path, out: Path, digest: str) -> None:
    """Write config.json, generation_config.json, model.safetensors and tokenizer files of `source` into `out`."""
    from safetensors.torch import save_file

    reader = _gguf().GGUFReader(str(source))
    model = read_metadata(reader, source)
    out.mkdir(parents=True, exist_ok=True)
    tensors = read_tensors(reader, model)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_tokenizer(source, model, out)
    config = dict(model.config, gguf_source={"file": source.name, "xxh3_128": digest})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    generation = {"eos_token_id": model.eos_token_id, "bos_token_id": model.bos_token_id}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))


def checkpoint_dir(source: Path) -> Path:
    """The cached HF directory of a .gguf file, converting it on first use.

    Concurrent first uses (a prefill and a decode worker starting together) each convert into a
    private temporary directory and rename it into place; the first rename wins, the rest discard theirs.
    """
    if not source.is_file():
        raise CheckpointError(f"{source}: no such GGUF file")
    digest = file_digest(source)
    target = cache_root() / f"{source.stem}-{digest[:16]}-v{CONVERTER_VERSION}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.warning("converting %s into %s (once; later starts reuse it)", source.name, target)
    # unique even across hosts sharing the cache (pods on one volume), unlike a pid
    tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=target.parent))
    try:
        convert(source, tmp, digest)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
