"""The `splitserve generate` / `make-model` commands."""

from __future__ import annotations

import json

from splitserve.cli import main


def test_make_model_then_generate_prints_json(tmp_path, capsys):
    model_dir = tmp_path / "m"
    assert main(["make-model", "--arch", "qwen3", str(model_dir)]) == 0
    assert "random" in capsys.readouterr().out.lower()
    assert main(["generate", "--model", str(model_dir), "--prompt", "Hello world", "--max-tokens", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompt_token_ids"] and 1 <= len(out["output_token_ids"]) <= 5
    assert out["finish_reason"] in ("stop", "length")
    assert isinstance(out["text"], str)


def test_generate_is_greedy_by_default(llama_dir, capsys):
    args = ["generate", "--model", str(llama_dir), "--prompt", "The quick brown fox", "--max-tokens", "8", "--json"]
    main(args)
    first = json.loads(capsys.readouterr().out)
    main(args)
    assert json.loads(capsys.readouterr().out) == first
