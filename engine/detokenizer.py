"""Incremental detokenization and stop conditions for one request.

IncrementalDetokenizer decodes only a short window of recent tokens each step:
`prefix_offset..read_offset` is text already emitted (kept as context, because
tokenizers render a token differently at the start of a string, e.g. SentencePiece
leading spaces), `read_offset..` is new. Text ending in U+FFFD is an incomplete
UTF-8 character split across byte-level tokens and is held back until complete.
"""

from __future__ import annotations

from typing import Any

from contracts.sampling import SamplingParams

_REPLACEMENT_CHAR = "\ufffd"
_PROMPT_CONTEXT_TOKENS = 5  # prompt tokens decoded as context before the first output


def _is_rust_tokenizer(obj: Any) -> bool:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return False
    return isinstance(obj, Tokenizer)


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer  # transformers PreTrainedTokenizerBase
        # a fast tokenizer's Rust backend decodes the same text without the Python wrapper's
        # per-call conversions (4-5x less host time per token at batch 256)
        backend = getattr(tokenizer, "_tokenizer", None)
        self._backend_decode = getattr(backend, "decode", None) if _is_rust_tokenizer(backend) else None
        self.skip_special_tokens = skip_special_tokens
        self._num_prompt = len(prompt_token_ids)
        self._token_ids = list(prompt_token_ids[-_PROMPT_CONTEXT_TOKENS:])  # context + output
        self._prefix_offset = 0
        self._read_offset = len(self._token_ids)
        self._text = ""

    @property
    def text(self) -> str:
        """Output text finalised so far (excludes held-back incomplete characters)."""
        return self._text

    @property
    def output_token_ids(self) -> list[int]:
        start = min(self._num_prompt, _PROMPT_CONTEXT_TOKENS)
        return self._token_ids[start:]

    def add(self, token_ids: list[int]) -> str:
        """Append new tokens; return the newly finalised text (may be empty)."""
        self._token_ids.extend(token_ids)
        prefix_text = self._decode(self._prefix_offset, self._read_offset)
        new_text = self._decode(self._prefix_offset, len(self._token_ids))
        if new_text.endswith(_REPLACEMENT_CHAR):
            return ""  # a multi-byte character is still incomplete
        return self._emit(prefix_text, new_text)

    def finish(self) -> str:
        """Flush held-back text at the end of the request (incomplete bytes become U+FFFD)."""
        prefix_text = self._decode(self._prefix_offset, self._read_offset)
        new_text = self._decode(self._prefix_offset, len(self._token_ids))
        return self._emit(prefix_text, new_text)

    def _emit(self, prefix_text: str, new_text: str) -> str:
        delta = new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._token_ids)
        self._text += delta
        return delta

    def _decode(self, start: int, end: int) -> str:
        if start >= end:
            return ""
        if self._backend_decode is not None:
            return self._backend_decode(self._token_ids[start:end], skip_special_tokens=self.skip_special_tokens)
        return self.tokenizer.decode(
            self._token_ids[start:end],
            skip_special_tokens=self.skip_special_tokens,
            clean_up_tokenization_spaces=False,
        )


class StopChecker:
    """Decides when a request finishes; call `check` after every detokenizer step."""

    def __init__(self, params: SamplingParams, eos_token_ids: set[int]) -> None:
        self.params = params
        self.eos_token_ids = set(eos_token_ids)
        self._stop_token_ids = set(params.stop_token_ids)
        self._checked_len = 0  # chars of text already searched for stop strings

    def check(self, output_token_ids: list[int], text: str) -> tuple[str | None, int | None]:
        """Return (finish_reason, truncate_at): ("stop"|"length"|None, index into text or None)."""
        params = self.params
        num_tokens = len(output_token_ids)
        checked_len, self._checked_len = self._checked_len, len(text)
        if num_tokens < params.min_tokens or num_tokens == 0:
            return ("length", None) if num_tokens >= params.max_tokens else (None, None)
        last = output_token_ids[-1]
        if (last in self.eos_token_ids and not params.ignore_eos) or last in self._stop_token_ids:
            return "stop", None
        truncate_at = self._find_stop_string(text, checked_len)
        if truncate_at is not None:
            return "stop", truncate_at
        if num_tokens >= params.max_tokens:
            return "length", None
        return None, None

    def _find_stop_string(self, text: str, checked_len: int) -> int | None:
        """Earliest stop string that ends in the new text (text[checked_len:])."""
        best: int | None = None
        for stop in self.params.stop:
            # A match ending after checked_len starts at or after checked_len - len(stop) + 1.
            index = text.find(stop, max(0, checked_len - len(stop) + 1))
            if index != -1 and (best is None or index < best):
                best = index
        return best

    def safe_prefix_len(self, text: str) -> int:
        """Chars of `text` safe to stream: all but the longest suffix that may begin a stop string."""
        held = 0
        for stop in self.params.stop:
            for size in range(min(len(stop) - 1, len(text)), held, -1):
                if text.endswith(stop[:size]):
                    held = size
                    break
        return len(text) - held
