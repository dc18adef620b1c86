"""Tenants stay apart: a request's cache_salt enters every block key (router, workers,
store), so a prompt cached under one salt is never a prefix hit under another."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.slow

PROMPT = " ".join(f"tenant{i}" for i in range(40))  # a few blocks long


def _cached_tokens(url: str, salt: str | None) -> int:
    body = {"model": "default", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 2, "temperature": 0}
    if salt is not None:
        body["cache_salt"] = salt
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_a_different_salt_never_shares_a_cached_block(stack) -> None:
    _cached_tokens(stack.url, "tenant-a")
    assert _cached_tokens(stack.url, "tenant-a") > 0  # the same tenant reuses its prefix
    assert _cached_tokens(stack.url, "tenant-b") == 0
    assert _cached_tokens(stack.url, None) == 0
    assert _cached_tokens(stack.url, "tenant-b") > 0  # b's own prompt is now cached, for b only
