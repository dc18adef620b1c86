"""Build OpenAI response bodies and SSE chunks from detokenized token events."""

from __future__ import annotations

import time

from router import protocol as p
from router.generation import ChoiceState, TokenEvent
from router.tokenization import PromptTokenizer
from router.tool_calls import ToolCallStream, ToolPlan, parse_calls


class ResponseBuilder:
    def __init__(
        self,
        request_id: str,
        model: str,
        chat: bool,
        req,
        prompt_tokens: int,
        tokenizer: PromptTokenizer,
        tools: ToolPlan | None = None,
    ) -> None:
        self.id, self.model, self.chat, self.req = request_id, model, chat, req
        self.tools = tools
        self._tool_streams: dict[int, ToolCallStream] = {}
        self.prompt_tokens = prompt_tokens
        self.tok = tokenizer
        self.created = int(time.time())
        self.wants_logprobs = bool(req.logprobs) if chat else req.logprobs is not None
        self.logprobs: dict[int, list] = {}

    # -- logprobs ---------------------------------------------------------------

    def _token(self, token_id: int) -> str:
        if self.req.return_tokens_as_token_ids:
            return f"token_id:{token_id}"
        return self.tok.token_str(token_id)

    def _chat_logprobs(self, event: TokenEvent) -> p.ChatLogprobs | None:
        return p.ChatLogprobs(content=self._chat_token_logprobs(event)) if self.wants_logprobs else None

    def _chat_token_logprobs(self, event: TokenEvent) -> list[p.ChatTokenLogprob]:
        content = []
        for lp in event.logprobs:
            token = self._token(lp.token_id)
            top = [p.TopLogprob(token=self._token(t.token_id), logprob=t.logprob) for t in lp.top]
            content.append(p.ChatTokenLogprob(token=token, logprob=lp.logprob, bytes=list(token.encode()), top_logprobs=top))
        return content

    def _completion_logprobs(self, event: TokenEvent, offset: int) -> p.CompletionLogprobs | None:
        if not self.wants_logprobs:
            return None
        out = p.CompletionLogprobs()
        for lp in event.logprobs:
            token = self._token(lp.token_id)
            out.tokens.append(token)
            out.token_logprobs.append(lp.logprob)
            out.top_logprobs.append({self._token(t.token_id): t.logprob for t in lp.top})
            out.text_offset.append(offset)
            offset += len(token)
        return out

    def _usage(self, states: list[ChoiceState]) -> p.Usage:
        completion = sum(len(s.token_ids) for s in states)
        cached = max((s.num_cached_tokens for s in states), default=0)
        return p.Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion,
            total_tokens=self.prompt_tokens + completion,
            prompt_tokens_details={"cached_tokens": cached},
        )

    # -- non-streaming ----------------------------------------------------------

    def add(self, event: TokenEvent) -> None:
        self.logprobs.setdefault(event.index, []).append(event)

    def final(self, states: list[ChoiceState]) -> p.ChatCompletionResponse | p.CompletionResponse:
        if self.chat:
            chat_choices = []
            for i, s in enumerate(states):
                chat_lps = None
                if self.wants_logprobs:
                    chat_lps = p.ChatLogprobs(content=[c for e in self.logprobs.get(i, []) for c in self._chat_token_logprobs(e)])
                message, finish = p.ChatMessageOut(content=s.text), s.finish_reason
                if self.tools is not None:
                    content, calls = parse_calls(s.text, self.tools)
                    message = p.ChatMessageOut(content=content, tool_calls=[c.to_openai() for c in calls] or None)
                    finish = "tool_calls" if calls and finish == "stop" else finish
                chat_choices.append(p.ChatChoice(index=i, message=message, logprobs=chat_lps, finish_reason=finish))
            return p.ChatCompletionResponse(id=self.id, model=self.model, choices=chat_choices, usage=self._usage(states))
        choices = []
        for i, s in enumerate(states):
            lps = None
            if self.wants_logprobs:
                lps = p.CompletionLogprobs()
                offset = 0
                for e in self.logprobs.get(i, []):
                    part = self._completion_logprobs(e, offset)
                    for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                        getattr(lps, name).extend(getattr(part, name))
                    offset += len(e.text)
            choices.append(p.CompletionChoice(index=i, text=self._echo() + s.text, logprobs=lps, finish_reason=s.finish_reason))
        return p.CompletionResponse(id=self.id, model=self.model, choices=choices, usage=self._usage(states))

    # -- streaming --------------------------------------------------------------

    def _echo(self) -> str:
        """The prompt's text when a completion asks for echo, else ""."""
        if self.chat or not self.req.echo:
            return ""
        prompt = self.req.prompt
        return prompt if isinstance(prompt, str) else self.tok.decode(list(prompt))

    def stream_start(self) -> list[str]:
        if not self.chat:
            if not self._echo():
                return []
            choices = [p.CompletionChoice(index=i, text=self._echo()) for i in range(self.req.n)]
            return [
                p.CompletionResponse(id=self.id, created=self.created, model=self.model, choices=choices).model_dump_json(
                    exclude_none=True
                )
            ]
        return [
            p.ChatCompletionChunk(
                id=self.id,
                created=self.created,
                model=self.model,
                choices=[p.ChatChunkChoice(index=i, delta=p.ChatDelta(role="assistant", content="")) for i in range(self.req.n)],
            ).model_dump_json(exclude_none=True)
        ]

    def _tool_delta(self, event: TokenEvent) -> tuple[p.ChatDelta, str | None]:
        assert self.tools is not None
        stream = self._tool_streams.setdefault(event.index, ToolCallStream(self.tools))
        content, calls = stream.feed(event.text)
        finish = event.finish_reason
        if finish is not None:
            rest, more = stream.finish()
            content, calls = content + rest, calls + more
            finish = "tool_calls" if stream.called and finish == "stop" else finish
        return p.ChatDelta(content=content or None, tool_calls=calls or None), finish

    def stream_chunk(self, event: TokenEvent) -> str | None:
        """One SSE chunk for the event; None when it carries nothing to send (text held back)."""
        if self.chat:
            delta, finish = p.ChatDelta(content=event.text), event.finish_reason
            if self.tools is not None:
                delta, finish = self._tool_delta(event)
                if delta.content is None and delta.tool_calls is None and finish is None and not self.wants_logprobs:
                    return None
            chat_choice = p.ChatChunkChoice(
                index=event.index, delta=delta, logprobs=self._chat_logprobs(event), finish_reason=finish
            )
            return p.ChatCompletionChunk(
                id=self.id, created=self.created, model=self.model, choices=[chat_choice]
            ).model_dump_json(exclude_none=True)
        choice = p.CompletionChoice(
            index=event.index, text=event.text, logprobs=self._completion_logprobs(event, 0), finish_reason=event.finish_reason
        )
        return p.CompletionResponse(id=self.id, created=self.created, model=self.model, choices=[choice]).model_dump_json(
            exclude_none=True
        )

    def stream_usage(self, states: list[ChoiceState]) -> str:
        usage = self._usage(states)
        if self.chat:
            return p.ChatCompletionChunk(
                id=self.id, created=self.created, model=self.model, choices=[], usage=usage
            ).model_dump_json()
        return p.CompletionResponse(id=self.id, created=self.created, model=self.model, choices=[], usage=usage).model_dump_json()
