"""Helpers and fixtures for the deploy tests: chart rendering, the metric contract, PromQL."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "deploy" / "helm" / "splitserve"
DASHBOARD_DIR = CHART_DIR / "dashboards"
ALERT_RULES = CHART_DIR / "rules" / "alerts.yaml"
INTERFACES_MD = REPO / "docs" / "interfaces.md"
RELEASE = "demo"
NAMESPACE = "llm"

# Grafana's $__rate_interval has no meaning to Prometheus; tests substitute a window.
RATE_INTERVAL = "$__rate_interval"

PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip


# --- the metric contract (docs/interfaces.md) -------------------------------------


def documented_metrics(text: str) -> dict[str, str]:
    """Metric name -> type ("counter" | "gauge" | "histogram") from the Metrics section.

    Each paragraph's first line names the prefix, e.g. "Router (`splitserve_router_`):"; the rest
    lists `name{labels}` items; a "(histograms)" / "(gauges)" marker types the untyped
    items before it, and a name ending in `_total` is a counter.
    """
    section = text.split("## Metrics", 1)[1]
    metrics: dict[str, str] = {}
    for paragraph in re.split(r"\n\s*\n", section):
        header, _, body = paragraph.strip().partition("\n")
        prefix_match = re.search(r"\(`(splitserve_[a-z]+_)`", header)
        if not prefix_match:
            continue
        pending: list[str] = []
        for token in re.finditer(r"`([a-z0-9_]+)(?:\{[^}]*\})?`|\((histograms?|gauges?)\)", body):
            name, marker = token.group(1), token.group(2)
            if name:
                full = prefix_match.group(1) + name
                if name.endswith("_total"):
                    metrics[full] = "counter"
                else:
                    pending.append(full)
            else:
                kind = "histogram" if marker.startswith("histogram") else "gauge"
                metrics.update(dict.fromkeys(pending, kind))
                pending = []
        assert not pending, f"untyped metrics in docs/interfaces.md: {pending}"
    return metrics


def series_names(metrics: dict[str, str]) -> set[str]:
    """Names a PromQL expression may select: histograms via _bucket/_sum/_count."""
    names: set[str] = set()
    for name, kind in metrics.items():
        if kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(name)
    return names


def documented_flags(text: str) -> dict[str, set[str]]:
    """Subcommand -> the `--flags` its row in the command-line table names."""
    flags: dict[str, set[str]] = {}
    for row in re.finditer(r"^\| `splitserve ([a-z-]+)` \|(.*)\|\s*$", text, re.MULTILINE):
        command, cell = row.group(1), row.group(2)
        flags[command] = set(re.findall(r"--[a-z][a-z-]*", cell))
        same_as = re.match(r"\s*same as ([a-z-]+)", cell)
        if same_as:
            flags[command] |= flags[same_as.group(1)]
    return flags


@pytest.fixture(scope="session")
def interfaces_text() -> str:
    return INTERFACES_MD.read_text()


@pytest.fixture(scope="session")
def allowed_series(interfaces_text: str) -> set[str]:
    return series_names(documented_metrics(interfaces_text))


# --- PromQL ---------------------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (strings, matchers, ranges and groupings removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\b(\d+(ms|s|m|h|d|w|y))+\b", " ", text)  # durations (offset 5m, @ modifiers)
    text = re.sub(r"\b\d+(\.\d+)?([eE][+-]?\d+)?\b", " ", text)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        is_call = text[match.end() :].lstrip().startswith("(")
        if not is_call and match.group(0).lower() not in PROMQL_KEYWORDS:
            names.add(match.group(0))
    return names


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expression) for every target of every dashboard."""
    queries: list[tuple[str, str, str]] = []
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            queries.extend((path.name, panel["title"], target["expr"]) for target in panel["targets"])
    return queries


def alert_rules() -> list[dict[str, Any]]:
    rules_file = yaml.safe_load(ALERT_RULES.read_text())
    return [rule for group in rules_file["groups"] for rule in group["rules"]]


def as_recording_rules(exprs: list[str], window: str) -> str:
    """A rules file that makes `promtool check rules` parse each expression."""
    rules = [
        {"record": f"splitserve_dashboard:expr_{i}", "expr": expr.replace(RATE_INTERVAL, window)} for i, expr in enumerate(exprs)
    ]
    return yaml.safe_dump({"groups": [{"name": "dashboard-expressions", "rules": rules}]}, sort_keys=False)


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install the `prometheus` package (apt-get install -y prometheus)")
    return path


# --- chart rendering ------------------------------------------------------------


@pytest.fixture(scope="session")
def chart() -> Any:
    import helm_python

    return helm_python.Chart.load(CHART_DIR)


Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def render(chart: Any) -> Render:
    """Render the chart offline and return its Kubernetes objects."""

    def _render(values: dict[str, Any] | None = None, release: str = RELEASE) -> list[dict[str, Any]]:
        manifests = chart.render(values or {}, name=release, namespace=NAMESPACE, is_install=True)
        docs: list[dict[str, Any]] = []
        for path, text in sorted(manifests.items()):
            if path.endswith("NOTES.txt"):
                continue
            docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
        return docs

    return _render


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = find(docs, kind, name)
    assert len(matches) == 1, f"expected one {kind} {name}, found {[d['metadata']['name'] for d in find(docs, kind)]}"
    return matches[0]


def pod_templates(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Workload name -> pod template of every Deployment and StatefulSet; a LeaderWorkerSet
    contributes its leader template (its name) and its worker template (name + "-ranks")."""
    templates = {}
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            templates[d["metadata"]["name"]] = d["spec"]["template"]
        elif d["kind"] == "LeaderWorkerSet":
            group = d["spec"]["leaderWorkerTemplate"]
            templates[d["metadata"]["name"]] = group["leaderTemplate"]
            templates[d["metadata"]["name"] + "-ranks"] = group["workerTemplate"]
    return templates


def arg_value(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]
