"""Every supported architecture matches Hugging Face transformers on the same random weights."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from contracts.sampling import SamplingParams
from engine.llm import LLM

PROMPTS = [
    [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23],  # > 1 block
    [100, 3, 77],
    [42],
    list(range(200, 240)),
]
NEW_TOKENS = 32


def hf_greedy(model, prompt: list[int]) -> list[int]:
    model.generation_config.eos_token_id = None  # like ignore_eos: eos may be generated but does not stop
    out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=0)
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("case", ["llama3", "mistral", "qwen2", "qwen3", "qwen3-moe", "llama-sharded"])
def test_greedy_output_equals_transformers_generate(checkpoints, case):
    model_dir = checkpoints[case]
    llm = LLM(model_dir, dtype="float32", kv_cache_bytes=4 << 20)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True))
    for prompt, out in zip(PROMPTS, outs):
        assert out.output_token_ids == hf_greedy(hf, prompt), f"{case} diverged on prompt {prompt[:4]}..."
        assert out.finish_reason == "length"


@pytest.mark.parametrize("case", ["llama3", "qwen3-moe"])
def test_logprobs_close_to_transformers_in_fp32(checkpoints, case):
    model_dir = checkpoints[case]
    llm = LLM(model_dir, dtype="float32", kv_cache_bytes=4 << 20)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prompt = PROMPTS[0]
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=5))[0]
    full = torch.tensor([prompt + out.output_token_ids])
    with torch.no_grad():
        ref = torch.log_softmax(hf(full).logits[0].float(), dim=-1)  # [T, V]
    engine = LLMEngineLogprobs.collect(llm, prompt)
    for i, step in enumerate(engine):
        row = ref[len(prompt) - 1 + i]
        assert step.logprob == pytest.approx(row[step.token_id].item(), abs=1e-4)
        top_ids = [t for t, _ in step.top]
        assert top_ids == row.topk(5).indices.tolist()
        assert [lp for _, lp in step.top] == pytest.approx(row.topk(5).values.tolist(), abs=1e-4)


class LLMEngineLogprobs:
    @staticmethod
    def collect(llm: LLM, prompt: list[int]):
        engine = llm.engine
        engine.add_request("lp", prompt, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=5))
        steps = []
        while engine.has_unfinished():
            for out in engine.step():
                steps += out.new_logprobs or []
        return steps
