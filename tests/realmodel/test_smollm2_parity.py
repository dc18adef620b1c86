"""Our engine on the real SmolLM2 GGUF equals Hugging Face transformers loading the same file.

transformers dequantises the GGUF itself (its own name mapping and Q/K un-permutation), so it is an
independent reference for engine/gguf_checkpoint.py as well as for the model code.

Greedy equality is checked teacher-forced: one transformers forward over prompt + our 32 tokens must
pick, at every position, the token we generated. By induction that is exactly "transformers' greedy
generation gives the same 32 tokens", at one forward per prompt instead of 32.
"""

from __future__ import annotations

import pytest
import torch
from realmodel_prompts import NEW_TOKENS, QUESTIONS, chat

from contracts.sampling import SamplingParams
from engine.llm import LLM
from router.tokenization import PromptTokenizer

# fp32 on CPU, same dequantised weights: differences come only from summation order (attention, matmul
# blocking). Measured max |diff| over 8 prompts x 32 steps x top-5: 4.3e-5 (torch 2.13 CPU, 2026-12);
# the bound leaves ~20x room for other CPUs' kernels.
LOGPROB_TOLERANCE = 1e-3
TOP_K = 5


@pytest.fixture(scope="module")
def reference(smollm2_gguf):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32)
    return tok, model.eval()


@pytest.fixture(scope="module")
def engine_outputs(smollm2_dir):
    llm = LLM(str(smollm2_dir), dtype="float32", device="cpu", kv_cache_bytes=64 << 20)
    router_tokenizer = PromptTokenizer.from_dir(smollm2_dir)  # what the router sends for a chat request
    prompts = [router_tokenizer.apply_chat_template(chat(q)) for q in QUESTIONS]
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=TOP_K)
    try:
        collected: dict[str, list] = {}
        for i, prompt in enumerate(prompts):
            llm.engine.add_request(f"q{i}", prompt, params)
        while llm.engine.has_unfinished():
            for out in llm.engine.step():
                collected.setdefault(out.request_id, []).extend(out.new_logprobs or [])
        steps = [collected[f"q{i}"] for i in range(len(prompts))]
    finally:
        llm.engine.shutdown()
    return prompts, steps


def test_chat_prompt_tokens_equal_transformers_gguf_tokenizer(engine_outputs, reference):
    prompts, _ = engine_outputs
    tok, _ = reference
    for question, ours in zip(QUESTIONS, prompts):
        text = tok.apply_chat_template(chat(question), add_generation_prompt=True, tokenize=False)
        theirs = tok.encode(text, add_special_tokens=False)
        assert ours == theirs, f"chat template or tokenizer differs on {question!r}"


def test_greedy_tokens_and_logprobs_equal_transformers(engine_outputs, reference):
    prompts, steps = engine_outputs
    _, model = reference
    worst = 0.0
    for question, prompt, prompt_steps in zip(QUESTIONS, prompts, steps):
        tokens = [s.token_id for s in prompt_steps]
        assert len(tokens) == NEW_TOKENS
        with torch.no_grad():
            logits = model(torch.tensor([prompt + tokens[:-1]])).logits[0, len(prompt) - 1 :]  # [NEW_TOKENS, V]
        ref = torch.log_softmax(logits.float(), dim=-1)
        assert ref.argmax(-1).tolist() == tokens, f"greedy tokens diverge from transformers on {question!r}"
        for row, step in zip(ref, prompt_steps):
            for token_id, logprob in step.top:
                worst = max(worst, abs(logprob - row[token_id].item()))
            assert [t for t, _ in step.top][0] == row.topk(TOP_K).indices[0].item()
    print(f"max |logprob difference| over {len(QUESTIONS)}x{NEW_TOKENS} steps x top-{TOP_K}: {worst:.2e}")
    assert worst < LOGPROB_TOLERANCE, f"top-{TOP_K} logprobs differ from transformers by up to {worst:.2e}"


def test_answers_a_factual_question(engine_outputs, smollm2_dir):
    from transformers import AutoTokenizer

    prompts, steps = engine_outputs
    answer = AutoTokenizer.from_pretrained(smollm2_dir).decode([s.token_id for s in steps[0]])
    assert "Paris" in answer, answer
