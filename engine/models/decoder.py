"""A Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3, Qwen3-MoE) on paged attention.

Input is the flat batch of a step (StepMetadata); output is hidden states [T, H].
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from engine.attention_layer import PagedAttention
from engine.mlp import GatedMLP
from engine.models.registry import ArchFeatures
from engine.moe import SparseMoE
from engine.norm import RMSNorm
from engine.rotary import RotaryEmbedding, rope_parameters
from engine.step_metadata import StepMetadata
from engine.vocab_embedding import ParallelLMHead, VocabParallelEmbedding


def head_dim_of(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _is_moe_layer(cfg, features: ArchFeatures, layer_idx: int) -> bool:
    if not features.moe or getattr(cfg, "num_experts", 0) <= 0:
        return False
    if layer_idx in (getattr(cfg, "mlp_only_layers", None) or []):
        return False
    return (layer_idx + 1) % getattr(cfg, "decoder_sparse_step", 1) == 0


class DecoderLayer(nn.Module):
    def __init__(self, cfg, features: ArchFeatures, layer_idx: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = PagedAttention(
            cfg.hidden_size,
            cfg.num_attention_heads,
            getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
            head_dim_of(cfg),
            rotary,
            qkv_bias=features.qkv_bias or bool(getattr(cfg, "attention_bias", False)),
            qk_norm_eps=cfg.rms_norm_eps if features.qk_norm else None,
        )
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if _is_moe_layer(cfg, features, layer_idx):
            self.mlp: nn.Module = SparseMoE(
                cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts, cfg.num_experts_per_tok, cfg.norm_topk_prob
            )
        else:
            self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act, bool(getattr(cfg, "mlp_bias", False)))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, meta: StepMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """(this layer's MLP output, the residual stream before it): the caller adds the two.

        Deferring each residual add into the next RMSNorm lets one fused kernel do both;
        ``residual`` is None at the first layer, whose input is the embedding.
        """
        if residual is None:
            residual, h = x, self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm.add_and_norm(x, residual)
        h = self.self_attn(h, meta)
        h, residual = self.post_attention_layernorm.add_and_norm(h, residual)
        return self.mlp(h), residual


class DecoderModel(nn.Module):
    def __init__(self, cfg, features: ArchFeatures) -> None:
        super().__init__()
        theta, scaling = rope_parameters(cfg)
        rotary = RotaryEmbedding(head_dim_of(cfg), theta, scaling)
        self.rotary = rotary  # shared by every layer's attention
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, features, i, rotary) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, meta: StepMetadata) -> torch.Tensor:  # [T, H]
        x = self.embed_tokens(meta.input_ids)
        meta = dataclasses.replace(meta, rope=self.rotary.cos_sin(meta.positions, x.dtype))  # once, not per layer
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, meta)
        if residual is None:  # no layers
            return self.norm(x)
        return self.norm.add_and_norm(x, residual)[0]


class DecoderForCausalLM(nn.Module):
    # HF checkpoint names that load into one fused parameter: name part -> (fused part, shard id)
    packed_modules = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, cfg, features: ArchFeatures) -> None:
        super().__init__()
        self.model = DecoderModel(cfg, features)
        self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size)
        self.tie_word_embeddings = bool(getattr(cfg, "tie_word_embeddings", False))
        if self.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, meta: StepMetadata) -> torch.Tensor:
        return self.model(meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [S, H] -> [S, V] float32
        return self.lm_head(hidden).float()

    def attention_layers(self) -> list[PagedAttention]:
        return [m for m in self.modules() if isinstance(m, PagedAttention)]  # in layer order
