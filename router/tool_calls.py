"""Tool calling: which tools the chat template sees, the grammar that forces a call, and
parsing the model's text back into OpenAI `tool_calls` (whole, or as streamed deltas).

tool_choice:
  * "none": tools are not rendered and nothing is parsed;
  * "auto" (the default with tools): free text; calls in the model's own format are parsed
    out (Hermes ``<tool_call>{json}</tool_call>`` as Qwen uses, or Llama 3 JSON);
  * "required": the grammar forces a JSON array of ``{"name", "arguments"}`` objects, one
    per call (vLLM's approach), so any model can call tools whatever its format;
  * named: the grammar forces the named function's arguments object; the text is the call.
"""

from __future__ import annotations

import enum
import json
import re
import uuid
from dataclasses import dataclass, field

from router import protocol as p
from router.errors import APIError
from router.guide_request import Guide

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_PYTHON_TAG = "<|python_tag|>"


class ToolFormat(enum.Enum):
    HERMES = "hermes"
    LLAMA3_JSON = "llama3_json"


def detect_format(chat_template: str | None) -> ToolFormat:
    """The call format the model was trained on, read from its chat template (Hermes otherwise)."""
    if chat_template and (_PYTHON_TAG in chat_template or "ipython" in chat_template):
        return ToolFormat.LLAMA3_JSON
    return ToolFormat.HERMES


def with_tools_prompt(messages: list[dict], tools: list[dict]) -> list[dict]:
    """For a chat template that ignores `tools` (SmolLM2's, say): describe them in a system
    turn in the Hermes format, the one the parser reads back, as Qwen's templates do."""
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    prompt = (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n"
        f"You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{listing}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        f"{HERMES_OPEN}{HERMES_CLOSE} XML "
        f'tags:\n{HERMES_OPEN}\n{{"name": <function-name>, "arguments": <args-json-object>}}\n{HERMES_CLOSE}'
    )
    if messages and messages[0]["role"] in ("system", "developer"):
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{prompt}"}, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


@dataclass(slots=True)
class ParsedCall:
    name: str
    arguments: str  # JSON text
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def to_openai(self) -> p.ToolCall:
        return p.ToolCall(id=self.id, function=p.FunctionCall(name=self.name, arguments=self.arguments))


@dataclass(slots=True)
class ToolPlan:
    mode: str  # "auto" | "required" | "named"
    tools: list[dict]  # as the chat template receives them
    format: ToolFormat
    guide: Guide | None = None  # set for "required" and "named"
    named: str | None = None


def _arguments_schema(tool: p.Tool) -> dict:
    return tool.function.parameters or {"type": "object"}


def plan_tools(req: p.ChatCompletionRequest, fmt: ToolFormat) -> ToolPlan | None:
    """The request's tool plan; None when no tool may be called (no tools, or tool_choice none)."""
    choice = req.tool_choice
    if not req.tools:
        if choice not in (None, "none"):
            raise APIError(400, "tool_choice needs a non-empty 'tools' list", param="tool_choice")
        return None
    if choice == "none":
        return None
    forced = choice == "required" or isinstance(choice, p.NamedToolChoice)
    if forced and (req.response_format is not None and req.response_format.type != "text"):
        raise APIError(400, "a forced tool_choice cannot be combined with response_format", param="tool_choice")
    tools = [t.model_dump(exclude_none=True) for t in req.tools]
    if isinstance(choice, p.NamedToolChoice):
        by_name = {t.function.name: t for t in req.tools}
        tool = by_name.get(choice.function.name)
        if tool is None:
            raise APIError(
                400, f"tool_choice names {choice.function.name!r}, which is not in tools {sorted(by_name)}", param="tool_choice"
            )
        guide = Guide("json_schema", json.dumps(_arguments_schema(tool)), "tools")
        return ToolPlan("named", tools, fmt, guide, tool.function.name)
    if choice == "required":
        items = [{"type": "object", "properties": {"name": {"enum": [t.function.name]}, "arguments": _arguments_schema(t)},
                  "required": ["name", "arguments"], "additionalProperties": False} for t in req.tools]  # fmt: skip
        schema = {"type": "array", "minItems": 1, "items": {"anyOf": items}}
        if not req.parallel_tool_calls:
            schema["maxItems"] = 1
        return ToolPlan("required", tools, fmt, Guide("json_schema", json.dumps(schema), "tools"))
    return ToolPlan("auto", tools, fmt)


def _call_from_json(obj: object) -> ParsedCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    return ParsedCall(obj["name"], args if isinstance(args, str) else json.dumps(args))


def parse_calls(text: str, plan: ToolPlan) -> tuple[str | None, list[ParsedCall]]:
    """A whole answer -> (content, calls). Text that does not parse stays content, calls = []."""
    if plan.mode == "named":
        return None, [ParsedCall(plan.named or "", text)]
    if plan.mode == "required":
        try:
            calls = [_call_from_json(c) for c in json.loads(text)]
        except (json.JSONDecodeError, TypeError):
            return text, []
        return (None, calls) if calls and all(calls) else (text, [])  # type: ignore[return-value]
    if plan.format is ToolFormat.HERMES:
        return _parse_hermes(text)
    return _parse_llama3(text)


def _parse_hermes(text: str) -> tuple[str | None, list[ParsedCall]]:
    start = text.find(HERMES_OPEN)
    if start < 0:
        return text, []
    calls = []
    for body in _HERMES_CALL.findall(text[start:]):
        try:
            call = _call_from_json(json.loads(body))
        except json.JSONDecodeError:
            return text, []
        if call is None:
            return text, []
        calls.append(call)
    content = text[:start].strip()
    return content or None, calls


def _parse_llama3(text: str) -> tuple[str | None, list[ParsedCall]]:
    body = text.strip().removeprefix(_PYTHON_TAG).strip()
    if not body.startswith("{"):
        return text, []
    calls = []
    decoder = json.JSONDecoder()
    pos = 0
    while pos < len(body):  # one object, or several separated by ";" (Llama 3.2's parallel calls)
        try:
            obj, end = decoder.raw_decode(body, pos)
        except json.JSONDecodeError:
            return text, []
        call = _call_from_json(obj)
        if call is None:
            return text, []
        calls.append(call)
        pos = end
        while pos < len(body) and body[pos] in "; \n\t":
            pos += 1
    return None, calls


class ToolCallStream:
    """One choice's text deltas -> content deltas and tool-call deltas as the OpenAI client expects:
    the first delta of a call holds its index, id, type and name; later ones append arguments."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.text = ""  # everything seen
        self.sent = 0  # chars of `text` already sent as content
        self.called = False
        self._named: ParsedCall | None = None

    def feed(self, delta: str) -> tuple[str, list[p.ToolCallDelta]]:
        self.text += delta
        if self.plan.mode == "named":
            return "", self._named_delta(delta)
        if self.plan.mode == "required":
            return "", []  # the array is parsed whole at the end
        return self._content(), []

    def _named_delta(self, delta: str) -> list[p.ToolCallDelta]:
        deltas = []
        if self._named is None:
            self._named = ParsedCall(self.plan.named or "", "")
            self.called = True
            deltas.append(
                p.ToolCallDelta(
                    index=0, id=self._named.id, type="function", function=p.FunctionCallDelta(name=self._named.name, arguments="")
                )
            )
        if delta:
            deltas.append(p.ToolCallDelta(index=0, function=p.FunctionCallDelta(arguments=delta)))
        return deltas

    def _content(self) -> str:
        """Content that surely is not part of a call: holds back a possible call opening."""
        if self.plan.format is ToolFormat.HERMES:
            at = self.text.find(HERMES_OPEN)
            if at >= 0:
                safe = at
            else:  # keep back a tail that may grow into "<tool_call>"
                safe = len(self.text)
                for k in range(min(len(HERMES_OPEN) - 1, len(self.text)), 0, -1):
                    if HERMES_OPEN.startswith(self.text[-k:]):
                        safe = len(self.text) - k
                        break
        else:
            head = self.text.lstrip()
            looks_like_call = head.startswith("{") or head.startswith(_PYTHON_TAG) or _PYTHON_TAG.startswith(head)
            safe = self.sent if looks_like_call else len(self.text)
        out, self.sent = self.text[self.sent : max(safe, self.sent)], max(safe, self.sent)
        return out

    def finish(self) -> tuple[str, list[p.ToolCallDelta]]:
        """At the end of the choice: remaining content and the parsed calls, whole."""
        if self.plan.mode == "named":
            return "", self._named_delta("") if self._named is None else []
        content, calls = parse_calls(self.text, self.plan)
        if not calls:
            rest, self.sent = self.text[self.sent :], len(self.text)
            return rest, []
        self.called = True
        # only Hermes keeps content beside calls: the text before the first "<tool_call>"
        rest = self.text[self.sent : self.text.find(HERMES_OPEN)] if content else ""
        self.sent = len(self.text)
        deltas = [p.ToolCallDelta(index=i, id=c.id, type="function",
                                  function=p.FunctionCallDelta(name=c.name, arguments=c.arguments))
                  for i, c in enumerate(calls)]  # fmt: skip
        return rest, deltas
