"""Which HF architectures the engine runs, and the per-architecture switches."""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import UnsupportedArchitecture


@dataclass(frozen=True, slots=True)
class ArchFeatures:
    qkv_bias: bool = False  # Qwen2: bias on q/k/v projections
    qk_norm: bool = False  # Qwen3: RMSNorm on q and k heads
    moe: bool = False  # Qwen3-MoE: sparse experts in (some) layers


ARCHITECTURES: dict[str, ArchFeatures] = {
    "LlamaForCausalLM": ArchFeatures(),
    "MistralForCausalLM": ArchFeatures(),
    "Qwen2ForCausalLM": ArchFeatures(qkv_bias=True),
    "Qwen3ForCausalLM": ArchFeatures(qk_norm=True),
    "Qwen3MoeForCausalLM": ArchFeatures(qk_norm=True, moe=True),
}


def arch_features(architectures: list[str] | None) -> tuple[str, ArchFeatures]:
    for name in architectures or []:
        if name in ARCHITECTURES:
            return name, ARCHITECTURES[name]
    raise UnsupportedArchitecture(
        f"config.json architectures {architectures} are not supported; supported: {', '.join(sorted(ARCHITECTURES))}"
    )
