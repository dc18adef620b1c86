"""One streaming request against an OpenAI-compatible server, timed chunk by chunk."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import aiohttp


@dataclass(slots=True)
class RequestRecord:
    """What the client saw of one request. Times are `time.perf_counter()` seconds."""

    index: int
    turn: int = 0
    prompt_len: int = 0  # from usage when the server sends it, else the workload's
    max_tokens: int = 0
    send_time: float = 0.0
    first_token_time: float | None = None
    chunk_times: list[float] = field(default_factory=list)  # chunks that carried output text
    end_time: float | None = None
    output_tokens: int = 0  # usage.completion_tokens; chunk count when usage is missing
    usage_reported: bool = False
    text: str = ""
    error: str | None = None

    @property
    def success(self) -> bool:
        return self.error is None and self.first_token_time is not None


def _chunk_text(choice: dict) -> str:
    if "delta" in choice:  # chat completion chunk
        return choice["delta"].get("content") or ""
    return choice.get("text") or ""


async def stream_request(session: aiohttp.ClientSession, url: str, payload: dict, record: RequestRecord) -> RequestRecord:
    """POST `payload` with stream=true to `url` and fill `record`; never raises on server errors."""
    payload = {**payload, "stream": True, "stream_options": {"include_usage": True}}
    chunks: list[str] = []
    last_choice_time: float | None = None  # of the last chunk that carried a choice, text or not
    record.send_time = time.perf_counter()
    try:
        async with session.post(url, json=payload) as response:
            if response.status != 200:
                body = (await response.text())[:300]
                record.error = f"HTTP {response.status}: {body}"
                return record
            async for raw in response.content:
                now = time.perf_counter()
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    record.error = f"server error: {event['error']}"
                    break
                for choice in event.get("choices") or []:
                    last_choice_time = now
                    text = _chunk_text(choice)
                    if text:
                        record.first_token_time = record.first_token_time or now
                        record.chunk_times.append(now)
                        chunks.append(text)
                usage = event.get("usage")
                if usage:
                    record.output_tokens = int(usage.get("completion_tokens") or 0)
                    record.prompt_len = int(usage.get("prompt_tokens") or record.prompt_len)
                    record.usage_reported = True
            record.end_time = time.perf_counter()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    record.text = "".join(chunks)
    if not record.usage_reported:
        record.output_tokens = len(record.chunk_times)
    if record.error is None and record.first_token_time is None and record.output_tokens > 0:
        # every generated token decoded to no text of its own (e.g. one byte of a UTF-8 character):
        # the answer did arrive, with the last chunk that carried a choice
        record.first_token_time = last_choice_time
    if record.error is None and record.first_token_time is None:
        record.error = "stream ended without any output token"
    return record
