"""Every PromQL expression of the dashboards and alert rules parses and names only exported metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from deploy_support import (
    ALERT_RULES,
    DASHBOARD_DIR,
    REPO,
    alert_rules,
    as_recording_rules,
    dashboard_queries,
    documented_metrics,
    metric_names,
)


def test_metric_name_extraction_ignores_functions_labels_ranges_and_numbers() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, role) (rate(a_seconds_bucket{role="decode"}[5m])))'
        " / ignoring(mode) group_left sum(rate(b_total[1m] offset 5m)) > 1e9 or vector(0)"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total"}


def test_the_metric_contract_is_read_from_interfaces_md(interfaces_text: str) -> None:
    metrics = documented_metrics(interfaces_text)
    assert metrics["splitserve_router_time_to_first_token_seconds"] == "histogram"
    assert metrics["splitserve_router_e2e_request_latency_seconds"] == "histogram"
    assert metrics["splitserve_worker_kv_usage_ratio"] == "gauge"
    assert metrics["splitserve_worker_kv_transfer_bytes_total"] == "counter"
    assert metrics["splitserve_kvstore_operation_seconds"] == "histogram"
    assert len(metrics) >= 35


def test_alert_rules_file_passes_promtool(promtool: str) -> None:
    result = subprocess.run([promtool, "check", "rules", str(ALERT_RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_cover_latency_errors_kv_saturation_and_empty_pools() -> None:
    names = " ".join(metric for rule in alert_rules() for metric in metric_names(rule["expr"]))
    for metric in (
        "splitserve_router_time_to_first_token_seconds_bucket",
        "splitserve_router_requests_total",
        "splitserve_worker_kv_usage_ratio",
        "splitserve_kvstore_used_bytes",
        "splitserve_router_ready_workers",
    ):
        assert metric in names


def test_every_dashboard_expression_parses(promtool: str, tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 40
    rules = tmp_path / "dashboard_rules.yaml"
    rules.write_text(as_recording_rules([expr for _, _, expr in queries], window="1m"))
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_promtool_check_rejects_a_malformed_expression(promtool: str, tmp_path: Path) -> None:
    rules = tmp_path / "bad.yaml"
    rules.write_text(as_recording_rules(["sum(rate(splitserve_router_requests_total[$__rate_interval])"], "1m"))
    assert subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True).returncode != 0


def test_dashboards_and_alerts_name_only_documented_metrics(allowed_series: set[str]) -> None:
    expressions = [(f"{f} / {t}", e) for f, t, e in dashboard_queries()]
    expressions += [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]
    for where, expr in expressions:
        names = metric_names(expr)
        assert names, f"{where}: selects no metric: {expr}"
        assert names <= allowed_series, f"{where}: not in docs/interfaces.md: {sorted(names - allowed_series)}"


def test_dashboards_cover_every_documented_metric(interfaces_text: str) -> None:
    used = {name for _, _, e in dashboard_queries() for name in metric_names(e)}
    for metric, kind in documented_metrics(interfaces_text).items():
        wanted = f"{metric}_bucket" if kind == "histogram" else metric
        if kind == "histogram" and wanted not in used:
            wanted = f"{metric}_sum"  # a mean panel (sum / count) also shows the histogram
        assert wanted in used, f"no dashboard panel shows {metric}"


def test_committed_dashboards_equal_the_generator_output(tmp_path: Path) -> None:
    script = REPO / "deploy" / "grafana" / "build_dashboards.py"
    code = f"import json, runpy; print(json.dumps(runpy.run_path({str(script)!r})['render_all']()))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    generated = json.loads(result.stdout)
    committed = {p.name: p.read_text() for p in DASHBOARD_DIR.glob("*.json")}
    assert committed == generated, "run `python deploy/grafana/build_dashboards.py` and commit the JSON"


@pytest.mark.parametrize("path", sorted(DASHBOARD_DIR.glob("*.json")), ids=lambda p: p.name)
def test_dashboards_use_a_datasource_variable_and_unique_panel_ids(path: Path) -> None:
    dashboard = yaml.safe_load(path.read_text())
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])
