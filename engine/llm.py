"""Offline batch API: ``LLM(model_dir).generate(prompts, params) -> [RequestOutput]``."""

from __future__ import annotations

from contracts.sampling import SamplingParams
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput


class LLM:
    def __init__(self, model: str, **config) -> None:
        self.engine = LLMEngine(EngineConfig(model=str(model), **config))
        self.tokenizer = self.engine.tokenizer

    @property
    def fingerprint(self) -> str:
        return self.engine.fingerprint

    def generate(
        self,
        prompts: list[str] | list[list[int]],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in prompt order."""
        if isinstance(sampling_params, list) and len(sampling_params) != len(prompts):
            raise ValueError(f"got {len(sampling_params)} sampling params for {len(prompts)} prompts; pass one or one each")
        tokens = [self.tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompts]
        return run_to_completion(self.engine, tokens, sampling_params, prefix=f"generate-{id(self)}")


def run_to_completion(
    engine: LLMEngine,
    prompts: list[list[int]],
    sampling_params: SamplingParams | list[SamplingParams] | None = None,
    prefix: str = "g",
) -> list[RequestOutput]:
    """Add every prompt, step the engine until all finish; final outputs in prompt order."""
    ids = []
    for i, prompt in enumerate(prompts):
        params = sampling_params[i] if isinstance(sampling_params, list) else sampling_params
        ids.append(f"{prefix}-{i}")
        engine.add_request(ids[-1], prompt, params)
    final: dict[str, RequestOutput] = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                final[out.request_id] = out
    return [final[i] for i in ids]
