"""Random-weight checkpoints in HF format with a locally built tokenizer (no downloads).

For tests and demos: the weights are random, so the text is gibberish, but every
file a real checkpoint has is there (config, safetensors, tokenizer, chat template,
generation config with eos).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOS_TOKEN = "<|im_end|>"
_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Serving large language models splits prefill and decode. "
    "A paged cache keeps keys and values in blocks of sixteen tokens; a prefix cache reuses them. "
    "Hello world! How are you today? I am fine, thank you. Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. "
    "Caf\u00e9, na\u00efve, \u00fcber, \u4f60\u597d, \u3053\u3093\u306b\u3061\u306f, emoji \U0001f600.\n"
)
ARCHS = ("llama", "mistral", "qwen2", "qwen3", "qwen3-moe")
SIZES = {
    # hidden, layers, heads, kv heads, head_dim, intermediate, vocab
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        vocab_size=384,
    ),
    "small": dict(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=512,
        vocab_size=1024,
    ),
}


def write_tokenizer(model_dir: Path, vocab_size: int) -> int:
    """Train a byte-level BPE on a built-in text; returns the eos token id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token="<|endoftext|>", bos_token=None, unk_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(model_dir)
    eos = tok.token_to_id(EOS_TOKEN)
    assert eos is not None  # one of the trainer's special tokens
    return eos


def hf_config(arch: str, size: str = "tiny", **overrides):
    """A transformers config object for ``arch`` at ``size`` (overrides win)."""
    import transformers

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    kw: dict[str, Any] = dict(SIZES[size], max_position_embeddings=512, tie_word_embeddings=True, rms_norm_eps=1e-6)
    cls: type[transformers.PretrainedConfig]
    if arch == "llama":
        cls = transformers.LlamaConfig
        kw["rope_scaling"] = {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
    elif arch == "mistral":
        cls = transformers.MistralConfig
        kw["tie_word_embeddings"] = False
    elif arch == "qwen2":
        cls = transformers.Qwen2Config
    elif arch == "qwen3":
        cls = transformers.Qwen3Config
    else:
        cls = transformers.Qwen3MoeConfig
        kw.update(
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=kw["intermediate_size"] // 2,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[0],
        )
    kw.update(overrides)
    return cls(**kw)


def make_model(
    arch: str,
    model_dir: str | Path,
    size: str = "tiny",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | None = None,
    **overrides,
) -> Path:
    """Write a random checkpoint of ``arch`` to ``model_dir``; returns the directory."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    cfg = hf_config(arch, size, **overrides)
    eos = write_tokenizer(model_dir, cfg.vocab_size)
    cfg.eos_token_id = eos
    cfg.bos_token_id = None
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    with torch.no_grad():  # a wider init than HF's 0.02 makes logits peaked, so greedy choices are robust
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.1)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(model_dir, **kwargs)
    GenerationConfig(eos_token_id=eos, pad_token_id=eos).save_pretrained(model_dir)
    (model_dir / "README.md").write_text(
        f"Random {arch} ({size}) weights made by `splitserve make-model`: not a trained model.\n"
    )
    return model_dir


def checkpoint_summary(model_dir: Path) -> dict:
    cfg = json.loads((model_dir / "config.json").read_text())
    size = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    return {"architectures": cfg.get("architectures"), "weights_bytes": size}
