"""OpenAI / vLLM structured-output request fields -> one guided spec for the workers.

The router compiles each spec once (off the event loop) before it places the request, so
that a schema xgrammar cannot compile is a 400 here, not a failure on a worker.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, NamedTuple

from contracts.sampling import InvalidSamplingParams
from engine.structured_output import GrammarCompiler
from router.errors import APIError
from router.tokenization import PromptTokenizer


class Guide(NamedTuple):
    kind: str  # SamplingParams.guided_kind; "" = free text
    spec: str
    param: str = ""  # the request field that asked for it, for error bodies


NO_GUIDE = Guide("", "")


def _schema_text(schema: dict | str, param: str) -> str:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise APIError(400, f"{param} is not valid JSON: {exc}", param=param) from exc
    if not isinstance(schema, dict):
        raise APIError(400, f"{param} must be a JSON object (a JSON schema)", param=param)
    return json.dumps(schema)


def requested_guide(req: Any) -> Guide:
    """(guided_kind, guided_spec) asked for by the request; NO_GUIDE for free text."""
    asked: list[tuple[str, str, str]] = []  # (request field, kind, spec)
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        asked.append(("response_format", "json_object", ""))
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise APIError(400, "response_format json_schema needs json_schema.schema", param="response_format")
        asked.append(("response_format", "json_schema", _schema_text(fmt.json_schema.schema_, "response_format")))
    if req.guided_json is not None:
        asked.append(("guided_json", "json_schema", _schema_text(req.guided_json, "guided_json")))
    if req.guided_regex is not None:
        asked.append(("guided_regex", "regex", req.guided_regex))
    if req.guided_choice is not None:
        asked.append(("guided_choice", "choice", json.dumps(req.guided_choice)))
    if req.guided_grammar is not None:
        asked.append(("guided_grammar", "grammar", req.guided_grammar))
    if len(asked) > 1:
        names = [a[0] for a in asked]
        raise APIError(400, f"give at most one structured-output constraint; got {names}", param=names[1])
    return Guide(asked[0][1], asked[0][2], asked[0][0]) if asked else NO_GUIDE


class GuideValidator:
    """Compiles guided specs with the model's tokenizer to reject bad ones with a 400."""

    def __init__(self, tokenizer: PromptTokenizer) -> None:
        self._tokenizer = tokenizer
        self._compiler: GrammarCompiler | None = None

    async def check(self, guide: Guide) -> None:
        if not guide.kind:
            return
        try:
            await asyncio.to_thread(self._compile, guide.kind, guide.spec)
        except InvalidSamplingParams as exc:
            raise APIError(400, str(exc), param=guide.param, code="invalid_value") from exc

    def _compile(self, kind: str, spec: str) -> None:
        if self._compiler is None:
            tok = self._tokenizer
            self._compiler = GrammarCompiler(tok.tokenizer, tok.vocab_size, tok.eos_token_ids)
        self._compiler.compile(kind, spec)
