"""POST /v1/responses, stateless (store=false semantics): a Responses request becomes a chat
request for the same generation path; the answer is shaped as a Response object, or as the
Responses streaming events (`event:` + `data:` frames, no `[DONE]`).

Not supported (a 400 says so): stored responses (store=true, previous_response_id,
conversation), background mode, tools, include, reasoning options, input items other than
messages.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from router import protocol as p
from router.errors import APIError
from router.generation import ChoiceState, TokenEvent

_UNSUPPORTED = {
    "previous_response_id": "stored responses are not supported (store=false semantics): send the whole conversation as input",
    "conversation": "conversations are not stored here: send the whole conversation as input",
    "background": "background responses are not supported: use stream=true for long answers",
    "tools": "tools are not supported on /v1/responses yet: use /v1/chat/completions with tools",
    "include": "include is not supported",
    "reasoning": "reasoning options are not supported",
}


def to_chat_request(req: p.ResponsesRequest) -> p.ChatCompletionRequest:
    """Check what a stateless server can answer and map the rest onto a chat request."""
    for name, why in _UNSUPPORTED.items():
        if getattr(req, name):
            raise APIError(400, f"{name}: {why}", param=name, code="unsupported_parameter")
    if req.store:
        raise APIError(
            400,
            "store=true is not supported: responses are never stored; pass store=false",
            param="store",
            code="unsupported_parameter",
        )
    messages = [{"role": "system", "content": req.instructions}] if req.instructions else []
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
    else:
        messages += [{"role": m.role, "content": m.text()} for m in req.input]
    if not messages:
        raise APIError(400, "input is empty", param="input")
    fmt = req.text.format if req.text is not None else None
    response_format = None
    if fmt is not None and fmt.type != "text":
        schema = {"name": fmt.name or "response", "schema": fmt.schema_, "strict": fmt.strict}
        response_format = {"type": fmt.type, **({"json_schema": schema} if fmt.type == "json_schema" else {})}
    return p.ChatCompletionRequest(
        model=req.model, messages=messages, max_completion_tokens=req.max_output_tokens, temperature=req.temperature,
        top_p=req.top_p, seed=req.seed, priority=req.priority, stream=req.stream, response_format=response_format,
        user=req.user,
    )  # fmt: skip


class ResponsesBuilder:
    """Response objects and streaming events for one stateless response (n = 1)."""

    def __init__(self, request_id: str, model: str, req: p.ResponsesRequest, prompt_tokens: int) -> None:
        self.id, self.model, self.req = request_id, model, req
        self.item_id = "msg_" + request_id.removeprefix("resp_")
        self.prompt_tokens = prompt_tokens
        self.created = int(time.time())
        self.text = ""
        self._seq = 0

    def _response(self, status: str, states: list[ChoiceState] | None = None) -> dict[str, Any]:
        req = self.req
        fmt = req.text.format.model_dump(by_alias=True, exclude_none=True) if req.text and req.text.format else {"type": "text"}
        body: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": self.created, "status": status, "model": self.model,
            "output": [], "error": None, "incomplete_details": None, "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens, "metadata": req.metadata or {}, "parallel_tool_calls": True,
            "temperature": 1.0 if req.temperature is None else req.temperature, "top_p": 1.0 if req.top_p is None else req.top_p,
            "tool_choice": "auto", "tools": [], "store": False, "text": {"format": fmt}, "usage": None,
        }  # fmt: skip
        if states is None:
            return body
        state = states[0]
        body["output"] = [self._message(state.text, "completed" if state.finish_reason != "length" else "incomplete")]
        if state.finish_reason == "length":
            body["status"] = "incomplete"
            body["incomplete_details"] = {"reason": "max_output_tokens"}
        cached = state.num_cached_tokens
        body["usage"] = {
            "input_tokens": self.prompt_tokens, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": len(state.token_ids), "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.prompt_tokens + len(state.token_ids),
        }  # fmt: skip
        return body

    def _message(self, text: str, status: str) -> dict[str, Any]:
        return {"type": "message", "id": self.item_id, "status": status, "role": "assistant",
                "content": [self._part(text)]}  # fmt: skip

    @staticmethod
    def _part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    # -- the generation path's builder interface ------------------------------

    def add(self, event: TokenEvent) -> None:
        self.text += event.text

    def final_body(self, states: list[ChoiceState]) -> dict[str, Any]:
        return self._response("completed", states)

    def _event(self, kind: str, **fields: Any) -> str:
        self._seq += 1
        return f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': self._seq - 1, **fields})}\n\n"

    def stream_start(self) -> list[str]:
        ids = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        return [
            self._event("response.created", response=self._response("in_progress")),
            self._event("response.in_progress", response=self._response("in_progress")),
            self._event("response.output_item.added", output_index=0,
                        item={**self._message("", "in_progress"), "content": []}),
            self._event("response.content_part.added", **ids, part=self._part("")),
        ]  # fmt: skip

    def stream_chunk(self, event: TokenEvent) -> str | None:
        self.text += event.text
        if not event.text:
            return None
        ids = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        return self._event("response.output_text.delta", **ids, delta=event.text, logprobs=[])

    def stream_end(self, states: list[ChoiceState]) -> list[str]:
        final = self._response("completed", states)
        item = final["output"][0]
        ids = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        return [
            self._event("response.output_text.done", **ids, text=self.text, logprobs=[]),
            self._event("response.content_part.done", **ids, part=item["content"][0]),
            self._event("response.output_item.done", output_index=0, item=item),
            self._event("response.completed" if final["status"] == "completed" else "response.incomplete", response=final),
        ]


async def responses_sse(
    builder: ResponsesBuilder,
    events: AsyncIterator[TokenEvent],
    states: list[ChoiceState],
    failure: tuple[type[BaseException], ...],
) -> AsyncIterator[str]:
    """The Responses event stream; a worker failure mid-stream ends it with an `error` event."""
    try:
        for frame in builder.stream_start():
            yield frame
        async for event in events:
            chunk = builder.stream_chunk(event)
            if chunk is not None:
                yield chunk
        for frame in builder.stream_end(states):
            yield frame
    except failure as exc:
        yield builder._event("error", code="worker_failed", message=str(exc), param=None)
