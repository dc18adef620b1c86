"""DecodeService.GenerateUnary from a worker's own Generate stream: the whole stream in one message."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator

from contracts.rpc import worker_pb2 as pb


async def whole(chunks: AsyncGenerator[pb.GenerateChunk, None]) -> pb.GenerateChunk:
    """Every token and logprob of ``chunks``, with the finish fields of the last chunk and the
    largest ``num_cached_tokens`` any chunk reported. The stream is closed however this ends
    (a cancelled call runs the stream's own clean-up: its blocks are freed at once)."""
    out = pb.GenerateChunk()
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            out.token_ids.extend(chunk.token_ids)
            out.logprobs.extend(chunk.logprobs)
            out.num_cached_tokens = max(out.num_cached_tokens, chunk.num_cached_tokens)
            if chunk.finish_reason:
                out.finish_reason = chunk.finish_reason
                out.prompt_tokens, out.completion_tokens = chunk.prompt_tokens, chunk.completion_tokens
    return out
