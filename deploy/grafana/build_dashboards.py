"""Build the chart's Grafana dashboards (deploy/helm/splitserve/dashboards/*.json).

The JSON files are committed (the chart loads them with .Files.Get); this script is
their source. Run it after editing a panel: `python deploy/grafana/build_dashboards.py`.
tests/deploy checks that the committed files equal its output, that every expression
parses, and that it names only exported metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

DASHBOARD_DIR = Path(__file__).resolve().parents[1] / "helm" / "splitserve" / "dashboards"
RATE = "$__rate_interval"
QUANTILES = (0.5, 0.9, 0.99)
SERVER_ERRORS = '{status=~"5.."}'
DECODE = '{role="decode"}'


@dataclass(slots=True)
class Panel:
    title: str
    targets: list[tuple[str, str]]  # (PromQL expression, legend)
    unit: str = "short"
    description: str = ""


@dataclass(slots=True)
class Dashboard:
    uid: str
    title: str
    panels: list[Panel] = field(default_factory=list)


def quantiles(histogram: str, by: str = "", selector: str = "") -> list[tuple[str, str]]:
    """p50/p90/p99 of a histogram, optionally per label(s) in `by`."""
    group = f"le, {by}" if by else "le"
    legend_prefix = "".join(f"{{{{{label.strip()}}}}} " for label in by.split(",") if label.strip())
    return [
        (
            f"histogram_quantile({q}, sum by ({group}) (rate({histogram}_bucket{selector}[{RATE}])))",
            f"{legend_prefix}p{round(q * 100)}",
        )
        for q in QUANTILES
    ]


MASTER = '{component="master"}'  # the master counts every transfer, shared-memory ones included


def rate(counter: str, by: str = "", selector: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({counter}{selector}[{RATE}]))"


OVERVIEW = Dashboard(
    "splitserve-overview",
    "splitserve / Overview",
    [
        Panel("Request rate by status", [(rate("splitserve_router_requests_total", "status"), "{{status}}")], "reqps"),
        Panel(
            "Error ratio (5xx)",
            [
                (
                    f"({rate('splitserve_router_requests_total', selector=SERVER_ERRORS)} or vector(0))"
                    f" / {rate('splitserve_router_requests_total')}",
                    "5xx / all",
                )
            ],
            "percentunit",
        ),
        Panel("Time to first token", quantiles("splitserve_router_time_to_first_token_seconds"), "s"),
        Panel("Inter-token latency", quantiles("splitserve_router_inter_token_latency_seconds"), "s"),
        Panel("End-to-end request latency", quantiles("splitserve_router_e2e_request_latency_seconds"), "s"),
        Panel(
            "Tokens per second",
            [
                (rate("splitserve_router_prompt_tokens_total"), "prompt"),
                (rate("splitserve_router_generation_tokens_total"), "generation"),
            ],
            "short",
        ),
        Panel("Ready workers per pool", [("max by (role) (splitserve_router_ready_workers)", "{{role}}")], "short"),
        Panel(
            "Pool saturation (autoscaling signal)",
            [("max by (role) (splitserve_router_pool_saturation_ratio)", "{{role}}")],
            "short",
            "Mean worker saturation per pool, 1 = at capacity: prefill by queued prompt tokens (or predicted TTFT"
            " against the SLO), decode by KV usage and waiting requests. The chart's KEDA / HPA options scale on it.",
        ),
    ],
)

ROUTING = Dashboard(
    "splitserve-routing",
    "splitserve / Routing and KV cache",
    [
        Panel(
            "Prefix hit rate: predicted vs realised",
            [
                (
                    f"{rate('splitserve_router_predicted_prefix_hit_tokens_total')} / "
                    f"{rate('splitserve_router_prompt_tokens_total')}",
                    "predicted",
                ),
                (
                    f"{rate('splitserve_router_realised_prefix_hit_tokens_total')} / "
                    f"{rate('splitserve_router_prompt_tokens_total')}",
                    "realised",
                ),
            ],
            "percentunit",
            "Share of prompt tokens the scheduler expected to find cached, and the share workers did find.",
        ),
        Panel(
            "Worker prefix-cache hit rate",
            [
                (
                    f"{rate('splitserve_worker_prefix_cache_hits_total', 'role')}"
                    f" / {rate('splitserve_worker_prefix_cache_queries_total', 'role')}",
                    "{{role}}",
                )
            ],
            "percentunit",
        ),
        Panel(
            "Prefix index size (blocks)",
            [
                ("max by (instance) (splitserve_router_index_blocks)", "{{instance}}"),
                ("max by (instance) (splitserve_router_index_store_tier_blocks)", "{{instance}} store tier"),
            ],
        ),
        Panel("Decisions by mode", [(rate("splitserve_router_decisions_total", "mode"), "{{mode}}")], "ops"),
        Panel(
            "P/D split (share of requests)",
            [
                (
                    f"{rate('splitserve_router_decisions_total', 'mode', selector=DECODE)}"
                    f" / ignoring(mode) group_left {rate('splitserve_router_decisions_total', selector=DECODE)}",
                    "{{mode}}",
                )
            ],
            "percentunit",
            "Every request gets exactly one decode decision; its mode says whether prefill ran on the prefill pool.",
        ),
        Panel(
            "Decisions per worker",
            [(rate("splitserve_router_decisions_total", "role, worker"), "{{role}} {{worker}}")],
            "ops",
        ),
        Panel("Scheduling latency", quantiles("splitserve_router_scheduling_latency_seconds"), "s"),
    ],
)

WORKERS = Dashboard(
    "splitserve-workers",
    "splitserve / Workers",
    [
        Panel(
            "Running and waiting requests",
            [
                ("sum by (role, instance) (splitserve_worker_running_requests)", "running {{role}} {{instance}}"),
                ("sum by (role, instance) (splitserve_worker_waiting_requests)", "waiting {{role}} {{instance}}"),
            ],
        ),
        Panel(
            "KV cache usage",
            [("max by (role, instance) (splitserve_worker_kv_usage_ratio)", "{{role}} {{instance}}")],
            "percentunit",
        ),
        Panel(
            "Queued prefill tokens",
            [("sum by (role, instance) (splitserve_worker_queued_prefill_tokens)", "{{role}} {{instance}}")],
        ),
        Panel(
            "Mean batch size",
            [
                (
                    f"{rate('splitserve_worker_batch_size_sum', 'role')} / {rate('splitserve_worker_batch_size_count', 'role')}",
                    "{{role}}",
                )
            ],
        ),
        Panel("Step time", quantiles("splitserve_worker_step_duration_seconds", "role"), "s"),
        Panel("Queue time", quantiles("splitserve_worker_queue_seconds", "role"), "s"),
        Panel("Prefill time", quantiles("splitserve_worker_prefill_seconds", "role"), "s"),
        Panel("Worker time to first token", quantiles("splitserve_worker_time_to_first_token_seconds", "role"), "s"),
        Panel("Worker inter-token latency", quantiles("splitserve_worker_inter_token_latency_seconds", "role"), "s"),
        Panel(
            "Worker tokens per second",
            [
                (rate("splitserve_worker_prompt_tokens_total", "role"), "prompt {{role}}"),
                (rate("splitserve_worker_generation_tokens_total", "role"), "generation {{role}}"),
            ],
        ),
    ],
)

KVSTORE = Dashboard(
    "splitserve-kvstore",
    "splitserve / KV store",
    [
        Panel(
            "Capacity and use",
            [
                ("sum by (instance) (splitserve_kvstore_capacity_bytes)", "capacity {{instance}}"),
                ("sum by (instance) (splitserve_kvstore_used_bytes)", "used {{instance}}"),
            ],
            "bytes",
        ),
        Panel("Objects", [("sum by (instance) (splitserve_kvstore_objects)", "{{instance}}")]),
        Panel(
            "Store transfer (GB/s)",
            [
                (rate("splitserve_kvstore_received_bytes_total", selector=MASTER) + " / 1e9", "received"),
                (rate("splitserve_kvstore_sent_bytes_total", selector=MASTER) + " / 1e9", "sent"),
            ],
            "short",
        ),
        Panel(
            "Worker KV transfer (GB/s)",
            [
                (
                    f"{rate('splitserve_worker_kv_transfer_bytes_total', 'role, direction, transport')} / 1e9",
                    "{{role}} {{direction}} {{transport}}",
                )
            ],
            "short",
        ),
        Panel("Worker KV transfer time", quantiles("splitserve_worker_kv_transfer_seconds", "role, transport"), "s"),
        Panel(
            "Decode KV handoff (import -> KV in the pool)",
            quantiles("splitserve_worker_kv_handoff_seconds", "transport"),
            "s",
            "A prefilled request's import reaching the decode engine until its KV is in the engine's pool.",
        ),
        Panel(
            "Store hit ratio",
            [
                (
                    f"{rate('splitserve_kvstore_hits_total')}"
                    f" / ({rate('splitserve_kvstore_hits_total')} + {rate('splitserve_kvstore_misses_total')})",
                    "hits / lookups",
                )
            ],
            "percentunit",
        ),
        Panel("Evictions per second", [(rate("splitserve_kvstore_evictions_total"), "evictions")], "ops"),
        Panel("Store operation latency p99", quantiles("splitserve_kvstore_operation_seconds", "op")[2:], "s"),
    ],
)

DASHBOARDS = (OVERVIEW, ROUTING, WORKERS, KVSTORE)


def panel_json(panel: Panel, panel_id: int) -> dict:
    width, height = 12, 8
    index = panel_id - 1
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": height, "w": width, "x": (index % 2) * width, "y": (index // 2) * height},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend, "range": True}
            for i, (expr, legend) in enumerate(panel.targets)
        ],
    }


def dashboard_json(dashboard: Dashboard) -> dict:
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "tags": ["splitserve"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                }
            ]
        },
        "panels": [panel_json(panel, i + 1) for i, panel in enumerate(dashboard.panels)],
    }


def render_all() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{d.uid.removeprefix('splitserve-')}.json": json.dumps(dashboard_json(d), indent=2) + "\n" for d in DASHBOARDS}


def main() -> None:
    DASHBOARD_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in render_all().items():
        (DASHBOARD_DIR / name).write_text(text)
        print(f"wrote {DASHBOARD_DIR / name}")


if __name__ == "__main__":
    main()
