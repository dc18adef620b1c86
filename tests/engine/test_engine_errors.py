"""Bad input fails early with an error that says what to do."""

from __future__ import annotations

import json
import shutil

import pytest

from contracts.sampling import InvalidSamplingParams, SamplingParams
from engine.config import EngineConfig
from engine.errors import CheckpointError, PromptTooLong, UnsupportedArchitecture
from engine.llm import LLM
from engine.llm_engine import LLMEngine


@pytest.fixture(scope="module")
def engine(llama_dir) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", kv_cache_bytes=4 << 20, max_model_len=64))


def test_unknown_architecture_lists_supported_ones(llama_dir, tmp_path):
    broken = tmp_path / "gpt"
    shutil.copytree(llama_dir, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitecture, match="LlamaForCausalLM.*Qwen3MoeForCausalLM"):
        LLM(broken)


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "tokenizer.json"])
def test_missing_checkpoint_file_is_named(llama_dir, tmp_path, missing):
    broken = tmp_path / "partial"
    shutil.copytree(llama_dir, broken)
    (broken / missing).unlink()
    with pytest.raises(CheckpointError, match="config.json|safetensors|tokenizer"):
        LLM(broken)


def test_prompt_longer_than_context_is_rejected(engine):
    with pytest.raises(PromptTooLong, match="64"):
        engine.add_request("long", list(range(5, 70)), SamplingParams(temperature=0))
    assert not engine.has_unfinished()


def test_invalid_sampling_params_are_rejected(engine):
    with pytest.raises(InvalidSamplingParams, match="temperature"):
        engine.add_request("bad", [5, 6], SamplingParams(temperature=-1.0))
    with pytest.raises(ValueError, match="vocab|\\[0,"):
        engine.add_request("oov", [5, 10_000], SamplingParams(temperature=0))
