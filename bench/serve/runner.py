"""Drives a benchmark: warm-up, arrivals, concurrency, metrics scrapes, summary."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from bench.serve.arrivals import arrival_offsets
from bench.serve.client import RequestRecord, stream_request
from bench.serve.config import BenchConfig, WorkloadKind
from bench.serve.metrics import Summary, prefix_hit_rate, summarize
from bench.serve.prometheus import Scrape, prefix_hit_delta, scrape
from bench.serve.workloads import BenchRequest, build_workload


class BenchError(RuntimeError):
    """The benchmark cannot run as configured (message says what to change)."""


@dataclass(slots=True)
class BenchResult:
    config: BenchConfig
    model: str
    records: list[RequestRecord]  # measured requests only (no warm-up)
    summary: Summary
    start_time: float  # perf_counter() origin of the measured phase

    @property
    def name(self) -> str:
        return self.config.label or self.config.base_url


async def _resolve_model(session: aiohttp.ClientSession, config: BenchConfig) -> tuple[str, int | None]:
    """Model name and vocab size: from the config, else from the server's /v1/models."""
    model, vocab = config.model, config.workload.vocab_size
    if model is not None and vocab is not None:
        return model, vocab
    url = config.base_url.rstrip("/") + "/v1/models"
    try:
        async with session.get(url) as response:
            response.raise_for_status()
            cards = (await response.json()).get("data") or []
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise BenchError(f"cannot read {url} ({exc}); pass --model and --vocab-size") from exc
    if not cards:
        raise BenchError(f"{url} lists no model; pass --model")
    card = cards[0] if model is None else next((c for c in cards if c.get("id") == model), cards[0])
    return model or card["id"], vocab if vocab is not None else card.get("vocab_size")


async def _scrape_all(session: aiohttp.ClientSession, config: BenchConfig) -> Scrape:
    router_url = config.metrics_url or config.base_url.rstrip("/") + "/metrics"
    texts = await asyncio.gather(scrape(session, router_url), *(scrape(session, u) for u in config.worker_metrics_urls))
    return texts[0], list(texts[1:])


def _offsets(requests: list[BenchRequest], config: BenchConfig, at_once: bool) -> list[float]:
    if at_once:
        return [0.0] * len(requests)
    if config.workload.kind is WorkloadKind.TRACE and config.request_rate is None:
        return [r.arrival_s or 0.0 for r in requests]
    return arrival_offsets(len(requests), config.request_rate, config.burstiness, config.workload.seed)


async def _dispatch(
    session: aiohttp.ClientSession,
    requests: list[BenchRequest],
    config: BenchConfig,
    model: str,
    *,
    warmup: bool = False,
) -> tuple[list[RequestRecord], float]:
    base = config.base_url.rstrip("/")
    limit = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None
    extra = {"ignore_eos": True} if config.ignore_eos else {}
    total = sum(max(1, len(r.user_turns)) for r in requests)
    records: list[RequestRecord] = []
    bar = _progress_bar(total, config.progress and not warmup)

    async def send(url: str, payload: dict, record: RequestRecord) -> RequestRecord:
        async with limit or contextlib.nullcontext():
            await stream_request(session, url, {"model": model, **extra, **payload}, record)
        records.append(record)
        bar.update(1)
        return record

    async def run(request: BenchRequest, offset: float) -> None:
        await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
        if not request.is_chat:
            payload: dict[str, Any] = {"prompt": request.prompt, "max_tokens": request.max_tokens}
            await send(base + "/v1/completions", payload, RequestRecord(request.index, 0, request.prompt_len, request.max_tokens))
            return
        # Multi-turn: each turn carries the whole history, answers included.
        messages: list[dict] = []
        failed = False
        for turn, user in enumerate(request.user_turns):
            record = RequestRecord(request.index, turn, request.prompt_len, request.max_tokens)
            if failed:
                record.error = "skipped: an earlier turn of this conversation failed"
                records.append(record)
                bar.update(1)
                continue
            messages.append({"role": "user", "content": user})
            payload = {"messages": list(messages), "max_tokens": request.max_tokens}
            failed = not (await send(base + "/v1/chat/completions", payload, record)).success
            messages.append({"role": "assistant", "content": record.text})

    offsets = _offsets(requests, config, at_once=warmup)
    start = time.perf_counter()
    try:
        await asyncio.gather(*(run(r, o) for r, o in zip(requests, offsets)))
    finally:
        bar.close()
    return records, start


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm  # imported late: `splitserve --help` stays fast

    return tqdm(total=total, disable=not enabled, file=sys.stderr, unit="req", desc="bench")


async def run_benchmark(config: BenchConfig) -> BenchResult:
    """Run one benchmark against `config.base_url` and return its records and summary."""
    connector = aiohttp.TCPConnector(limit=0)  # concurrency is ours to set, not the pool's
    timeout = aiohttp.ClientTimeout(total=config.request_timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        model, vocab = await _resolve_model(session, config)
        workload = replace(config.workload, vocab_size=vocab)
        try:
            requests = build_workload(workload)
            # Warm-up uses another seed so it does not pre-fill the cache with measured prompts.
            warmup = build_workload(replace(workload, seed=workload.seed + 1), config.warmup) if config.warmup else []
        except (ValueError, OSError) as exc:
            raise BenchError(str(exc)) from exc
        if warmup:
            await _dispatch(session, warmup, config, model, warmup=True)
        before = await _scrape_all(session, config)
        records, start = await _dispatch(session, requests, config, model)
        after = await _scrape_all(session, config)
    records.sort(key=lambda r: (r.index, r.turn))
    summary = summarize(records, config.slo)
    delta = prefix_hit_delta(before, after)
    summary.prefix_hit_rate = prefix_hit_rate(*delta) if delta else None
    return BenchResult(replace(config, model=model, workload=workload), model, records, summary, start)


async def run_sweep(config: BenchConfig, rates: list[float | None]) -> list[BenchResult]:
    """One run per request rate, one after the other (None = everything at once)."""
    return [await run_benchmark(replace(config, request_rate=rate)) for rate in rates]


async def run_compare(config: BenchConfig, targets: list[tuple[str, str]]) -> list[BenchResult]:
    """The same workload against several deployments (name, base URL), one after the other."""
    results = []
    for name, url in targets:
        # Each deployment is read from its own /metrics.
        target = replace(config, label=name, base_url=url, metrics_url=None, worker_metrics_urls=[])
        results.append(await run_benchmark(target))
    return results
