"""Output of a benchmark: a table on stdout, JSON, PNG plots (matplotlib, Agg)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from bench.serve.metrics import e2e, itls, tpot, ttft
from bench.serve.runner import BenchResult

_LATENCIES = (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("itl_s", "ITL"), ("e2e_s", "E2E"))


def _rows(result: BenchResult) -> list[tuple[str, float | None]]:
    s = result.summary
    rows: list[tuple[str, float | None]] = [
        ("completed", s.completed),
        ("failed", s.failed),
        ("duration (s)", s.duration_s),
        ("request throughput (req/s)", s.request_throughput),
        ("output throughput (tok/s)", s.output_throughput),
        ("input throughput (tok/s)", s.input_throughput),
    ]
    for key, title in _LATENCIES:
        dist = getattr(s, key)
        rows += [(f"{title} {stat} (ms)", getattr(dist, stat) * 1000.0) for stat in ("mean", "p50", "p90", "p99")]
    rows += [
        ("goodput (req/s)", s.goodput),
        ("SLO attainment", s.slo_attainment),
        ("prefix hit rate", s.prefix_hit_rate),
    ]
    return rows


def _cell(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:d}" if isinstance(value, int) else f"{value:.3f}"


def format_table(results: list[BenchResult], headers: list[str], ratios: bool = False) -> str:
    """Metrics as rows, one column per result; with `ratios`, x-first-column columns too."""
    columns = [_rows(r) for r in results]
    header = ["metric", *headers]
    if ratios:
        header += [f"{h}/{headers[0]}" for h in headers[1:]]
    lines = []
    for i, (name, _) in enumerate(columns[0]):
        values = [col[i][1] for col in columns]
        cells = [name, *(_cell(v) for v in values)]
        if ratios:
            base = values[0]
            cells += [_cell(v / base) if v is not None and base not in (None, 0) else "-" for v in values[1:]]
        lines.append(cells)
    widths = [max(len(str(row[c])) for row in [header, *lines]) for c in range(len(header))]

    def fmt(row: list) -> str:
        return "  ".join(str(cell).ljust(w) if c == 0 else str(cell).rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))

    return "\n".join([fmt(header), "-" * (sum(widths) + 2 * (len(widths) - 1)), *map(fmt, lines)])


def result_to_dict(result: BenchResult) -> dict:
    """Config, summary and per-request records; times relative to the measured start."""

    def rel(t: float | None) -> float | None:
        return None if t is None else t - result.start_time

    records = []
    for r in result.records:
        records.append(
            {
                "index": r.index,
                "turn": r.turn,
                "prompt_len": r.prompt_len,
                "output_tokens": r.output_tokens,
                "send_s": rel(r.send_time),
                "first_token_s": rel(r.first_token_time),
                "end_s": rel(r.end_time),
                "chunk_s": [rel(t) for t in r.chunk_times],
                "ttft_s": ttft(r),
                "tpot_s": tpot(r),
                "e2e_s": e2e(r),
                "error": r.error,
            }
        )
    config = asdict(result.config)
    return {
        "name": result.name,
        "model": result.model,
        "config": config,
        "summary": result.summary.to_dict(),
        "requests": records,
    }


def write_json(results: list[BenchResult], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([result_to_dict(r) for r in results], indent=1, default=str))


def write_plots(results: list[BenchResult], labels: list[str], out_dir: Path, sweep: bool) -> list[Path]:
    """Latency CDFs, TTFT over time, and (for a rate sweep) throughput against rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for result, label in zip(results, labels):
        done = [r for r in result.records if r.success]
        series = {
            "TTFT": [v for r in done if (v := ttft(r)) is not None],
            "TPOT": [v for r in done if (v := tpot(r)) is not None],
            "ITL": [g for r in done for g in itls(r)],
            "E2E": [v for r in done if (v := e2e(r)) is not None],
        }
        for ax, (title, values) in zip(axes, series.items()):
            values = sorted(v * 1000.0 for v in values)
            if values:
                ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=label)
            ax.set(title=f"{title} CDF", xlabel="ms", ylabel="fraction of requests")
    axes[0].legend()
    fig.tight_layout()
    written.append(out_dir / "latency_cdf.png")
    fig.savefig(written[-1])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    for result, label in zip(results, labels):
        points = [
            (r.send_time - result.start_time, v * 1000.0) for r in result.records if r.success and (v := ttft(r)) is not None
        ]
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=6, label=label)
    ax.set(title="TTFT over time", xlabel="send time (s)", ylabel="TTFT (ms)")
    ax.legend()
    fig.tight_layout()
    written.append(out_dir / "ttft_over_time.png")
    fig.savefig(written[-1])
    plt.close(fig)

    if sweep:
        rates = [r.config.request_rate for r in results]
        fig, ax = plt.subplots(figsize=(6, 4))
        offered = [r if r is not None else math.nan for r in rates]
        ax.plot(offered, [r.summary.request_throughput for r in results], "o-", label="achieved req/s")
        if any(r.summary.goodput is not None for r in results):
            ax.plot(offered, [r.summary.goodput or 0.0 for r in results], "s--", label="goodput req/s")
        ax.set(title="throughput against request rate", xlabel="request rate (req/s)", ylabel="req/s")
        ax.legend()
        fig.tight_layout()
        written.append(out_dir / "throughput_vs_rate.png")
        fig.savefig(written[-1])
        plt.close(fig)
    return written
