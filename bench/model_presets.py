"""Real model shapes with random weights, for GPU benchmarks (no weights can be downloaded here).

A preset writes config.json + a small tokenizer into a directory; the engine then
runs it with ``load_format="dummy"`` (random weights made on the device).
"""

from __future__ import annotations

from pathlib import Path

PRESETS: dict[str, tuple[str, dict]] = {
    "llama-3.1-8b": (
        "llama",
        dict(
            hidden_size=4096,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            intermediate_size=14336,
            vocab_size=128256,
            max_position_embeddings=131072,
            tie_word_embeddings=False,
            rope_scaling={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            rope_theta=500000.0,
            rms_norm_eps=1e-5,
            dtype="bfloat16",
        ),
    ),
    "qwen3-30b-a3b": (
        "qwen3-moe",
        dict(
            hidden_size=2048,
            num_hidden_layers=48,
            num_attention_heads=32,
            num_key_value_heads=4,
            head_dim=128,
            intermediate_size=6144,
            moe_intermediate_size=768,
            num_experts=128,
            num_experts_per_tok=8,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            vocab_size=151936,
            max_position_embeddings=40960,
            tie_word_embeddings=False,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            dtype="bfloat16",
        ),
    ),
}


def write_preset(name: str, model_dir: str | Path, **overrides) -> Path:
    """Write ``name``'s config (and a tokenizer) to ``model_dir``; weights are left out on purpose."""
    from engine.make_model import hf_config, write_tokenizer

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    arch, shape = PRESETS[name]
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    cfg = hf_config(arch, "tiny", **{**shape, **overrides})
    cfg.architectures = [type(cfg).__name__.replace("Config", "ForCausalLM")]
    cfg.eos_token_id = write_tokenizer(model_dir, 1024)
    cfg.save_pretrained(model_dir)
    (model_dir / "README.md").write_text(f"{name} shapes, config only: run with load_format=dummy (random weights).\n")
    return model_dir
