"""Dashboards and alerts against a running local stack (`splitserve up`) and a real Prometheus.

Starts `splitserve up` (1 prefill + 1 decode worker, tiny demo model), a `prometheus`
server on 127.0.0.1 that scrapes every component each second and loads the chart's
alert rules, sends a few OpenAI completions, then asks Prometheus for every dashboard
expression. Skipped until every command `splitserve up` launches exists.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from deploy_support import (
    ALERT_RULES,
    RATE_INTERVAL,
    Render,
    alert_rules,
    dashboard_queries,
    metric_names,
)

from contracts.ports import free_port

pytestmark = pytest.mark.slow

SCRAPE_INTERVAL_S = 1
QUERY_WINDOW = "60s"  # stands in for Grafana's $__rate_interval; spans the whole traffic burst
READY_TIMEOUT_S = 240


def wait_for(
    condition: Any, timeout_s: float, what: str, process: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what}: process exited with code {process.returncode}\n{log_tail(log) if log else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout_s:.0f}s\n{log_tail(log) if log else ''}")
        time.sleep(0.3)


def stop(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM our own child (its process group), then SIGKILL what is left."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def log_tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def prometheus_config(targets: dict[str, str], rule_file: Path) -> str:
    """One scrape job per component: instance = host:port, job = component name."""
    return yaml.safe_dump(
        {
            "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
            "rule_files": [str(rule_file)],
            "scrape_configs": [
                {"job_name": name, "static_configs": [{"targets": [address]}]} for name, address in targets.items()
            ],
        },
        sort_keys=False,
    )


def start_prometheus(targets: dict[str, str], workdir: Path) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: install the `prometheus` package (apt-get install -y prometheus)")
    config = workdir / "prometheus.yml"
    config.write_text(prometheus_config(targets, ALERT_RULES))
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, 30, "prometheus ready", process, log)
    return process, url


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    reply = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert reply["status"] == "success", f"{expr}: {reply}"
    return reply["data"]["result"]


def exported_series(address: str) -> set[str]:
    """Sample names (with _bucket/_sum/_count/_total) a /metrics endpoint serves."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://{address}/metrics", timeout=5).text
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("up")
    state_file = workdir / "state.json"
    log = workdir / "up.log"
    # --colocate-threshold 0: every request crosses prefill -> decode, whatever the model's tokenizer;
    # --kv-transport store: the KV goes through the store, so its dashboards have data too
    argv = [sys.executable, "-m", "splitserve.cli", "up", "--prefill", "1", "--decode", "1", "--colocate-threshold", "0",
            "--kv-transport", "store",
            "--port", str(free_port()), "--state-file", str(state_file), "--log-dir", str(workdir / "logs"),
            "--ready-timeout", str(READY_TIMEOUT_S)]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(state_file.exists, READY_TIMEOUT_S + 30, "splitserve up ready", process, log)
        yield json.loads(state_file.read_text())
    finally:
        stop(process, grace_s=30)


@pytest.fixture(scope="module")
def prometheus(stack: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = start_prometheus(stack["metrics"], tmp_path_factory.mktemp("prometheus"))
    try:
        yield url
    finally:
        stop(process, grace_s=10)


@pytest.fixture(scope="module")
def served_traffic(stack: dict[str, Any], prometheus: str) -> int:
    """Send completions (a shared long prefix, a streamed one, a chat one); wait until Prometheus saw them."""
    wait_for(lambda: len(query(prometheus, "up == 1")) == len(stack["metrics"]), 30, "every component scraped")
    base = stack["url"]
    shared_prefix = "You are a careful assistant. Answer briefly and precisely. " * 8
    prompts = [shared_prefix + "What is a KV cache?", shared_prefix + "What is prefill?", "Hello there"]
    sent = 0
    with httpx.Client(base_url=base, timeout=120) as client:
        for prompt in prompts + prompts[:1]:
            body = {"model": "default", "prompt": prompt, "max_tokens": 8, "temperature": 0}
            reply = client.post("/v1/completions", json=body)
            assert reply.status_code == 200, reply.text
            sent += 1
        body = {"model": "default", "prompt": prompts[1], "max_tokens": 8, "temperature": 0, "stream": True}
        with client.stream("POST", "/v1/completions", json=body) as reply:
            assert reply.status_code == 200
            assert any(line.startswith("data:") for line in reply.iter_lines())
        sent += 1
        chat = {"model": "default", "messages": [{"role": "user", "content": prompts[0]}], "max_tokens": 8}
        assert client.post("/v1/chat/completions", json=chat).status_code == 200
        sent += 1

    def counted() -> bool:
        result = query(prometheus, "sum(splitserve_router_requests_total)")
        return bool(result) and float(result[0]["value"][1]) >= sent

    wait_for(counted, 30, f"prometheus counts {sent} router requests")
    time.sleep(3 * SCRAPE_INTERVAL_S)  # every component scraped again after the last request
    return sent


def test_dashboards_and_alerts_name_only_metrics_the_running_stack_exports(stack: dict[str, Any], served_traffic: int) -> None:
    exported = set().union(*(exported_series(address) for address in stack["metrics"].values()))
    expressions = [(f"{f} / {t}", e) for f, t, e in dashboard_queries()]
    expressions += [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]
    missing = {where: sorted(metric_names(e) - exported) for where, e in expressions if metric_names(e) - exported}
    assert not missing, f"names the stack does not export: {missing}"


def test_every_dashboard_expression_returns_data_from_prometheus(prometheus: str, served_traffic: int) -> None:
    empty = []
    for dashboard, panel, expr in dashboard_queries():
        if not query(prometheus, expr.replace(RATE_INTERVAL, QUERY_WINDOW)):
            empty.append(f"{dashboard} / {panel}: {expr}")
    assert not empty, "expressions without data:\n" + "\n".join(empty)
    generated = query(prometheus, f"sum(increase(splitserve_router_generation_tokens_total[{QUERY_WINDOW}]))")
    assert float(generated[0]["value"][1]) > 0


def test_alert_rules_load_and_evaluate_cleanly_in_prometheus(prometheus: str, served_traffic: int, promtool: str) -> None:
    check = subprocess.run([promtool, "check", "rules", str(ALERT_RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(rules) == {rule["alert"] for rule in alert_rules()}
    for name, rule in rules.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
    firing = [name for name, rule in rules.items() if rule["state"] == "firing"]
    assert "SplitservePoolWithoutReadyWorkers" not in firing  # both pools have a ready worker


def test_the_charts_autoscaling_queries_return_each_pools_saturation(
    prometheus: str, served_traffic: int, render: Render
) -> None:
    """The exact PromQL the KEDA ScaledObjects run (local scrape labels: job="router")."""
    docs = render({"autoscaling": {"mode": "keda", "seriesSelector": 'job="router"'}})
    scaled = {d["metadata"]["name"].rsplit("-", 1)[1]: d for d in docs if d["kind"] == "ScaledObject"}
    assert set(scaled) == {"prefill", "decode"}
    for role, scaled_object in scaled.items():
        expr = scaled_object["spec"]["triggers"][0]["metadata"]["query"]
        result = query(prometheus, expr)
        assert len(result) == 1, f"{role}: {expr} returned {result}"
        value = float(result[0]["value"][1])
        assert 0 <= value < 1, f"{role} saturation {value} on an idle stack"  # idle after the burst: below capacity
