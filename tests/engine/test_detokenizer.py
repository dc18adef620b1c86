"""Incremental detokenization (split UTF-8 characters) and stop conditions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from contracts.sampling import SamplingParams
from engine.detokenizer import IncrementalDetokenizer, StopChecker

OUTPUT_TEXT = "héllo 世界 🙂, the end. STOP here héllo 世界 🙂"


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """Tiny byte-level BPE: so few merges that CJK and emoji stay split into byte tokens."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=280, special_tokens=["<eos>"], show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(["the stop here, the end. STOP hello world " * 3, "héllo 世界 🙂"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")


def encode(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def test_fixture_splits_multibyte_characters_across_tokens(tokenizer: PreTrainedTokenizerFast) -> None:
    assert any("\ufffd" in tokenizer.decode([t]) for t in encode(tokenizer, "世界"))


@pytest.mark.parametrize("prompt", ["say: ", "héllo 世", ""])
def test_one_token_at_a_time_equals_decoding_all_at_once(tokenizer: PreTrainedTokenizerFast, prompt: str) -> None:
    output_ids = encode(tokenizer, OUTPUT_TEXT)
    detok = IncrementalDetokenizer(tokenizer, encode(tokenizer, prompt))
    deltas = [detok.add([token_id]) for token_id in output_ids]
    assert "".join(deltas) == detok.text == tokenizer.decode(output_ids) == OUTPUT_TEXT
    assert not any("\ufffd" in delta for delta in deltas)  # never half a character
    assert "" in deltas  # some steps held back an incomplete character


def test_adding_several_tokens_at_once_gives_the_same_text(tokenizer: PreTrainedTokenizerFast) -> None:
    output_ids = encode(tokenizer, OUTPUT_TEXT)
    detok = IncrementalDetokenizer(tokenizer, encode(tokenizer, "hi"))
    for start in range(0, len(output_ids), 3):
        detok.add(output_ids[start : start + 3])
    assert detok.text == OUTPUT_TEXT


def test_special_tokens_are_skipped_by_default(tokenizer: PreTrainedTokenizerFast) -> None:
    detok = IncrementalDetokenizer(tokenizer, [])
    detok.add(encode(tokenizer, "the end"))
    assert detok.add([tokenizer.eos_token_id]) == ""
    assert detok.text == "the end"
    kept = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=False)
    kept.add(encode(tokenizer, "the end") + [tokenizer.eos_token_id])
    assert kept.text == "the end<eos>"


def test_finish_flushes_an_incomplete_trailing_character(tokenizer: PreTrainedTokenizerFast) -> None:
    detok = IncrementalDetokenizer(tokenizer, [])
    char_ids = encode(tokenizer, " 世")  # space, then 3 byte tokens
    assert detok.add(encode(tokenizer, "ok")) == "ok"
    assert detok.add(char_ids[:-1]) == ""  # the character's last byte never came
    tail = detok.finish()
    assert tail.startswith(" ") and tail.endswith("\ufffd")
    assert detok.text == "ok" + tail


class DecodeRecorder:
    """Wraps a tokenizer and records how many tokens each decode call receives."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast) -> None:
        self.tokenizer = tokenizer
        self.lengths: list[int] = []

    def decode(self, token_ids: list[int], **kwargs: Any) -> str:
        self.lengths.append(len(token_ids))
        text = self.tokenizer.decode(token_ids, **kwargs)
        assert isinstance(text, str)  # one sequence in, one string out
        return text


def test_each_step_decodes_only_a_short_window(tokenizer: PreTrainedTokenizerFast) -> None:
    recorder = DecodeRecorder(tokenizer)
    output_ids = encode(tokenizer, OUTPUT_TEXT * 4)
    detok = IncrementalDetokenizer(recorder, encode(tokenizer, "a long prompt " * 10))
    for token_id in output_ids:
        detok.add([token_id])
    assert detok.text == OUTPUT_TEXT * 4
    assert max(recorder.lengths) <= 12 < len(output_ids)


def run_until_stop(
    tokenizer: PreTrainedTokenizerFast, params: SamplingParams, text: str, extra_ids: Sequence[int] = ()
) -> tuple[str | None, str, int]:
    """Stream `text` token by token; return (finish_reason, final text, tokens consumed)."""
    detok = IncrementalDetokenizer(tokenizer, [])
    checker = StopChecker(params, {tokenizer.eos_token_id})
    output: list[int] = []
    for token_id in encode(tokenizer, text) + list(extra_ids):
        output.append(token_id)
        detok.add([token_id])
        reason, truncate_at = checker.check(output, detok.text)
        if reason is not None:
            return reason, detok.text[:truncate_at], len(output)
    return None, detok.text, len(output)


def test_stop_string_spanning_tokens_truncates_the_text(tokenizer: PreTrainedTokenizerFast) -> None:
    params = SamplingParams(max_tokens=200, stop=["zzz", "lo 世界"])
    assert len(encode(tokenizer, "lo 世界")) > 3  # really spans several tokens
    reason, text, _ = run_until_stop(tokenizer, params, OUTPUT_TEXT)
    assert (reason, text) == ("stop", "hél")


def test_earliest_stop_string_wins(tokenizer: PreTrainedTokenizerFast) -> None:
    params = SamplingParams(max_tokens=200, stop=["end. STOP", "the end"])
    assert run_until_stop(tokenizer, params, "so, the end. STOP") == ("stop", "so, ", 5)


def test_eos_and_stop_token_ids_finish_with_stop(tokenizer: PreTrainedTokenizerFast) -> None:
    eos = tokenizer.eos_token_id
    stop_id = encode(tokenizer, "!")[0]
    assert run_until_stop(tokenizer, SamplingParams(), "ok", [eos])[:2] == ("stop", "ok")
    assert run_until_stop(tokenizer, SamplingParams(stop_token_ids=[stop_id]), "ok!!")[0] == "stop"
    ignoring = SamplingParams(ignore_eos=True, max_tokens=100)
    assert run_until_stop(tokenizer, ignoring, "ok", [eos, eos])[0] is None


def test_max_tokens_finishes_with_length(tokenizer: PreTrainedTokenizerFast) -> None:
    reason, _, consumed = run_until_stop(tokenizer, SamplingParams(max_tokens=4), OUTPUT_TEXT)
    assert (reason, consumed) == ("length", 4)


def test_no_stop_before_min_tokens(tokenizer: PreTrainedTokenizerFast) -> None:
    eos = tokenizer.eos_token_id
    checker = StopChecker(SamplingParams(min_tokens=3, stop=["x"]), {eos})
    assert checker.check([eos], "x") == (None, None)
    assert checker.check([eos, 7], "xa") == (None, None)
    assert checker.check([eos, 7, eos], "xab") == ("stop", None)
    late = StopChecker(SamplingParams(min_tokens=2, stop=["x"]), {eos})
    assert late.check([7], "x") == (None, None)  # an early match is not reported later
    assert late.check([7, 8], "xa") == (None, None)
    assert late.check([7, 8, 9], "xax") == ("stop", 2)


def test_safe_prefix_len_holds_back_a_partial_stop_string() -> None:
    checker = StopChecker(SamplingParams(stop=["world", "wonder", "!!"]), set())
    assert checker.safe_prefix_len("hello wor") == len("hello ")
    assert checker.safe_prefix_len("hello wo") == len("hello ")
    assert checker.safe_prefix_len("hello!") == len("hello")
    assert checker.safe_prefix_len("hello") == len("hello")
    assert StopChecker(SamplingParams(), set()).safe_prefix_len("hello wor") == len("hello wor")
