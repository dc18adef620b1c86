"""Structured output: guided specs (JSON schema, JSON object, regex, choice, EBNF) compiled by
xgrammar into token-level grammars; one matcher per guided request.

Each step the runner asks every guided sequence's matcher for the set of tokens it may sample
next (a packed bitmask, filled on the host while the device runs the forward) and the sampler
masks the logits with it; the engine then advances the matcher by the sampled token.

Across the prefill -> decode handoff the grammar state is rebuilt, not shipped: the decode
worker compiles the same spec, makes a fresh matcher and feeds it the prefill's first token.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from contracts.sampling import InvalidSamplingParams

BITS_PER_WORD = 32


def bitmask_width(vocab_size: int) -> int:
    return -(-vocab_size // BITS_PER_WORD)


def choice_grammar(spec: str) -> str:
    """A JSON list of strings -> an EBNF grammar matching exactly one of them."""
    try:
        choices = json.loads(spec)
    except json.JSONDecodeError as exc:
        raise InvalidSamplingParams(f"guided choice must be a JSON list of strings: {exc}") from exc
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c for c in choices):
        raise InvalidSamplingParams("guided choice must be a non-empty list of non-empty strings")
    # JSON string escaping is also valid EBNF string-literal escaping in xgrammar
    return "root ::= " + " | ".join(json.dumps(c) for c in choices)


# xgrammar 0.2's rule for the characters of a length-bounded string lets raw control
# characters through, which JSON forbids (json.loads rejects them); close that gap.
_LOOSE_STRING_CHAR = r"[^\"\\\r\n]"
_JSON_STRING_CHAR = r"[^\0-\x1f\"\\\r\n]"


def _no_control_chars(ebnf: str) -> str:
    return ebnf.replace(_LOOSE_STRING_CHAR, _JSON_STRING_CHAR)


class GrammarState:
    """The grammar state of one request: which tokens may come next, advanced token by token."""

    __slots__ = ("_matcher",)

    def __init__(self, matcher: Any) -> None:
        self._matcher = matcher

    def accept(self, token_id: int) -> bool:
        """Advance by a sampled token; False if the grammar forbids it (the state is unchanged)."""
        return bool(self._matcher.accept_token(token_id))

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed next tokens into row ``row`` of a [S, W] int32 CPU bitmask."""
        self._matcher.fill_next_token_bitmask(bitmask, row)

    @property
    def is_terminated(self) -> bool:
        """The grammar is complete and a stop token was accepted: nothing may follow."""
        return bool(self._matcher.is_terminated())


class GrammarCompiler:
    """Compiles guided specs for one tokenizer; compiled grammars are cached by xgrammar."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: set[int], max_threads: int = 1) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        # vocab_size is the model's (logits width), which may exceed the tokenizer's
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(eos_token_ids))
        self._compiler = xgr.GrammarCompiler(info, max_threads=max_threads)
        self._lock = threading.Lock()  # the router compiles from worker threads
        self.vocab_size = vocab_size

    def compile(self, kind: str, spec: str) -> Any:
        """A compiled grammar; InvalidSamplingParams naming what is wrong with the spec."""
        try:
            with self._lock:
                return self._compile(kind, spec)
        except InvalidSamplingParams:
            raise
        except (RuntimeError, ValueError, TypeError) as exc:
            what = {"json_schema": "JSON schema", "regex": "regex", "grammar": "EBNF grammar"}.get(kind, kind)
            raise InvalidSamplingParams(f"the {what} cannot be compiled into a grammar: {exc}") from exc

    def _compile(self, kind: str, spec: str) -> Any:
        if kind == "json_object":
            return self._compiler.compile_builtin_json_grammar()
        if kind == "json_schema":
            # compact JSON (no free whitespace): a weak model cannot loop on blanks until max_tokens
            grammar = self._xgr.Grammar.from_json_schema(spec, any_whitespace=False, strict_mode=True)
            return self._compiler.compile_grammar(_no_control_chars(str(grammar)))
        if kind == "regex":
            return self._compiler.compile_regex(spec)
        if kind == "choice":
            return self._compiler.compile_grammar(choice_grammar(spec))
        if kind == "grammar":
            return self._compiler.compile_grammar(spec)
        raise InvalidSamplingParams(f"guided_kind={kind!r} is not supported")

    def state(self, kind: str, spec: str) -> GrammarState:
        return GrammarState(self._xgr.GrammarMatcher(self.compile(kind, spec)))


class BitmaskFiller:
    """Reusable host bitmask for a step's sampled rows; unguided rows allow every token."""

    def __init__(self, vocab_size: int) -> None:
        self.width = bitmask_width(vocab_size)
        self._host = torch.empty(0, self.width, dtype=torch.int32)  # [S, W], grown on demand

    def fill(self, states: list[GrammarState | None]) -> torch.Tensor | None:
        """[S, W] int32 CPU bitmask for the rows' states, or None if no row is guided."""
        if all(s is None for s in states):
            return None
        if self._host.shape[0] < len(states):
            self._host = torch.empty(len(states), self.width, dtype=torch.int32)
            if torch.cuda.is_available():
                self._host = self._host.pin_memory()  # the sampler's copy to the GPU does not block
        bitmask = self._host[: len(states)]
        bitmask.fill_(-1)  # all bits set: every token allowed
        for row, state in enumerate(states):
            if state is not None:
                state.fill(bitmask, row)
        return bitmask


class GrammarPreparer:
    """Builds matchers on a worker thread, off the step loop (xgrammar releases the GIL while it
    compiles): the first guided request pays for the tokenizer tables (~1 s for a 49k vocabulary),
    each new spec for its compile (~10-100 ms); a cached spec is ready at once."""

    def __init__(self, make_compiler: Callable[[], GrammarCompiler]) -> None:
        self._make_compiler = make_compiler
        self._compiler: GrammarCompiler | None = None
        self._compiler_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._pending: dict[str, Future[GrammarState]] = {}  # request id -> its matcher

    def compiler(self) -> GrammarCompiler:
        with self._compiler_lock:
            if self._compiler is None:
                self._compiler = self._make_compiler()
            return self._compiler

    def state_now(self, kind: str, spec: str) -> GrammarState:
        """Compile on the calling thread (tests, benchmarks)."""
        return self.compiler().state(kind, spec)

    def submit(self, request_id: str, kind: str, spec: str) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="grammar")
        self._pending[request_id] = self._executor.submit(self.state_now, kind, spec)

    def take_ready(self) -> list[tuple[str, GrammarState | Exception]]:
        """The requests whose matcher is built (or failed to build) since the last call."""
        done = [rid for rid, future in self._pending.items() if future.done()]
        out: list[tuple[str, GrammarState | Exception]] = []
        for rid in done:
            future = self._pending.pop(rid)
            exc = future.exception()
            out.append((rid, exc if isinstance(exc, Exception) else future.result()))
        return out

    def discard(self, request_id: str) -> None:
        future = self._pending.pop(request_id, None)
        if future is not None:
            future.cancel()

    def __len__(self) -> int:
        return len(self._pending)
