"""`splitserve bench serve` and `splitserve bench compare` (nothing heavy imported here)."""

from __future__ import annotations

import argparse


def _add_common(parser: argparse.ArgumentParser) -> None:
    from bench.serve.config import parse_range, parse_rates, parse_slo

    parser.add_argument("--model", default=None, help="model name (default: first of /v1/models)")
    parser.add_argument("--workload", choices=["random", "shared-prefix", "multi-turn", "trace"], default="random")
    parser.add_argument("--num-requests", type=int, default=100, help="requests (turns, for multi-turn) measured")
    parser.add_argument("--warmup", type=int, default=0, help="requests sent first and left out of the metrics")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=None, help="token ids are < this (default: /v1/models)")
    parser.add_argument("--min-token-id", type=int, default=1000, help="token ids are >= this (skip specials)")
    parser.add_argument("--prompt-format", choices=["tokens", "text"], default="tokens")
    parser.add_argument("--input-len", type=parse_range, default=(128, 512), metavar="MIN[:MAX]")
    parser.add_argument("--output-len", type=parse_range, default=(32, 128), metavar="MIN[:MAX]")
    parser.add_argument("--num-groups", type=int, default=4, help="shared-prefix: prefix groups")
    parser.add_argument("--prefix-len", type=int, default=512, help="shared-prefix: shared tokens per group")
    parser.add_argument("--question-len", type=int, default=64, help="shared-prefix: own tokens per request")
    parser.add_argument("--turns", type=int, default=4, help="multi-turn: user turns per conversation")
    parser.add_argument("--turn-len", type=int, default=64, help="multi-turn: words per user turn")
    parser.add_argument("--trace", default=None, help="trace: Mooncake-format .jsonl path")
    parser.add_argument("--trace-time-scale", type=float, default=1.0, help="multiplies timestamps (0.5 = 2x faster)")
    parser.add_argument("--trace-length-scale", type=float, default=1.0, help="multiplies input lengths and blocks")
    parser.add_argument("--trace-output-scale", type=float, default=1.0, help="multiplies output lengths")
    parser.add_argument(
        "--request-rate",
        type=parse_rates,
        default=[None],
        help="req/s, 'inf', or a sweep '1,2,4' (default: inf; trace: its timestamps)",
    )
    parser.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of arrivals; 1 = Poisson")
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--slo", type=parse_slo, default=None, help="e.g. ttft=500ms,tpot=50ms,e2e=10s")
    parser.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false")
    parser.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request")
    parser.add_argument("--out", default=None, help="directory for JSON and PNG plots")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="serving benchmarks against OpenAI-compatible endpoints")
    commands = bench.add_subparsers(dest="bench_command", metavar="BENCH_COMMAND", required=True)

    serve = commands.add_parser("serve", help="load one deployment (optionally over a sweep of rates)")
    serve.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000")
    serve.add_argument("--metrics-url", default=None, help="router /metrics (default: BASE_URL/metrics)")
    serve.add_argument("--worker-metrics-url", action="append", default=[], help="worker /metrics (repeatable)")
    _add_common(serve)
    serve.set_defaults(func=_serve)

    compare = commands.add_parser("compare", help="the same workload against several deployments")
    compare.add_argument("--targets", required=True, help="NAME=URL,NAME=URL (ratios are to the first)")
    _add_common(compare)
    compare.set_defaults(func=_compare)


def _config(args: argparse.Namespace, base_url: str):
    from bench.serve.config import SLO, BenchConfig, PromptFormat, WorkloadConfig, WorkloadKind

    workload = WorkloadConfig(
        kind=WorkloadKind(args.workload),
        num_requests=args.num_requests,
        seed=args.seed,
        vocab_size=args.vocab_size,
        min_token_id=args.min_token_id,
        prompt_format=PromptFormat(args.prompt_format),
        input_len=args.input_len,
        output_len=args.output_len,
        num_groups=args.num_groups,
        prefix_len=args.prefix_len,
        question_len=args.question_len,
        turns=args.turns,
        turn_len=args.turn_len,
        trace_path=args.trace,
        trace_time_scale=args.trace_time_scale,
        trace_length_scale=args.trace_length_scale,
        trace_output_scale=args.trace_output_scale,
    )
    return BenchConfig(
        base_url=base_url,
        model=args.model,
        workload=workload,
        request_rate=args.request_rate[0],
        burstiness=args.burstiness,
        max_concurrency=args.max_concurrency,
        warmup=args.warmup,
        slo=args.slo or SLO(),
        metrics_url=getattr(args, "metrics_url", None),
        worker_metrics_urls=getattr(args, "worker_metrics_url", []),
        request_timeout_s=args.request_timeout,
        ignore_eos=args.ignore_eos,
        progress=args.progress,
    )


def _finish(results, headers: list[str], args: argparse.Namespace, ratios: bool, sweep: bool) -> int:
    from pathlib import Path

    from bench.serve.report import format_table, write_json, write_plots

    print(format_table(results, headers, ratios=ratios))
    if args.out:
        out = Path(args.out)
        write_json(results, out / "bench.json")
        for path in [out / "bench.json", *write_plots(results, headers, out, sweep)]:
            print(f"wrote {path}")
    return 0 if all(r.summary.completed for r in results) else 1


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from bench.serve.runner import BenchError, run_sweep

    config = _config(args, args.base_url)
    try:
        results = asyncio.run(run_sweep(config, args.request_rate))
    except BenchError as exc:
        raise SystemExit(f"splitserve bench: {exc}") from exc
    headers = [f"rate={'inf' if r is None else f'{r:g}'}" for r in args.request_rate]
    return _finish(results, headers, args, ratios=False, sweep=len(args.request_rate) > 1)


def _compare(args: argparse.Namespace) -> int:
    import asyncio

    from bench.serve.runner import BenchError, run_compare

    if len(args.request_rate) > 1:
        raise SystemExit("splitserve bench compare: give one --request-rate (sweeps are for `bench serve`)")
    targets = []
    for item in args.targets.split(","):
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise SystemExit(f"splitserve bench compare: bad target {item!r}; write NAME=URL")
        targets.append((name.strip(), url.strip()))
    try:
        results = asyncio.run(run_compare(_config(args, targets[0][1]), targets))
    except BenchError as exc:
        raise SystemExit(f"splitserve bench: {exc}") from exc
    return _finish(results, [name for name, _ in targets], args, ratios=True, sweep=False)
