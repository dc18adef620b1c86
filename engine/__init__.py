"""The model executor shared by prefill and decode workers.

``engine.LLM`` / ``engine.LLMEngine`` / ``engine.EngineConfig`` are imported lazily
so that ``splitserve --help`` does not load torch.
"""

from __future__ import annotations

_EXPORTS = {
    "LLM": "engine.llm",
    "LLMEngine": "engine.llm_engine",
    "EngineConfig": "engine.config",
    "RequestOutput": "engine.outputs",
    "SamplingParams": "contracts.sampling",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
