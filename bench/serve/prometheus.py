"""Prefix-hit rate from the server's Prometheus /metrics, read before and after a run."""

from __future__ import annotations

import aiohttp

ROUTER_HITS = "splitserve_router_realised_prefix_hit_tokens_total"
ROUTER_PROMPTS = "splitserve_router_prompt_tokens_total"
WORKER_HITS = "splitserve_worker_prefix_cache_hits_total"
WORKER_QUERIES = "splitserve_worker_prefix_cache_queries_total"


def metric_sum(text: str, name: str) -> float | None:
    """Sum of every sample of `name` (all label sets) in Prometheus text format; None if absent."""
    total, found = 0.0, False
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, rest = line.partition(" ") if "{" not in line else line.partition("} ")
        metric = head.split("{", 1)[0]
        if metric != name:
            continue
        total += float(rest.split()[0])
        found = True
    return total if found else None


async def scrape(session: aiohttp.ClientSession, url: str) -> str | None:
    """The /metrics text, or None when the endpoint cannot be read (the run goes on)."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
            return await response.text() if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None


def _counter_pair(texts: list[str | None], hits: str, queries: str) -> tuple[float, float] | None:
    total_hits = total_queries = 0.0
    seen = False
    for text in texts:
        if text is None:
            continue
        h, q = metric_sum(text, hits), metric_sum(text, queries)
        if h is None or q is None:
            continue
        total_hits, total_queries, seen = total_hits + h, total_queries + q, True
    return (total_hits, total_queries) if seen else None


Scrape = tuple[str | None, list[str | None]]  # (router /metrics text, worker /metrics texts)


def prefix_hit_delta(before: Scrape, after: Scrape) -> tuple[float, float] | None:
    """(hit tokens, prompt tokens) gained between two scrapes.

    The router's realised-hit counters are preferred; the workers' prefix-cache
    counters are the fallback. Both scrapes must come from the same source.
    """
    sources = (
        ([before[0]], [after[0]], ROUTER_HITS, ROUTER_PROMPTS),
        (before[1], after[1], WORKER_HITS, WORKER_QUERIES),
    )
    for texts_before, texts_after, hits, queries in sources:
        start, end = _counter_pair(texts_before, hits, queries), _counter_pair(texts_after, hits, queries)
        if start is not None and end is not None:
            return end[0] - start[0], end[1] - start[1]
    return None
