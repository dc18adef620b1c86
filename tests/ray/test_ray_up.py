"""`splitserve up --ray`: kvstore, workers and router as Ray actors serve a completion, and SIGTERM removes them.

The test owns a local Ray cluster (ray.init in this process, shut down after the
module) and points `up` at it through RAY_ADDRESS, so it never touches another
cluster on the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from contracts.ports import free_port

ray = pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[dev]' (ray[default]) to run these")
pytestmark = pytest.mark.timeout(120)  # a hung actor or rendezvous fails here, not at the suite timeout

CLI = [sys.executable, "-m", "splitserve.cli"]
COMPONENTS = {"kvstore-master", "kvstore-node", "prefill-0", "decode-0", "router"}


@pytest.fixture(scope="module")
def ray_address():
    # one logical CPU per component actor; they mostly wait, so more than the machine's cores is fine
    ray.init(num_cpus=len(COMPONENTS), include_dashboard=False, log_to_driver=False, namespace="splitserve-test")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ray-up") / "tiny"
    subprocess.run(CLI + ["make-model", "--arch", "llama", "--size", "tiny", str(path)], check=True, timeout=120)
    return path


def router_health(url: str) -> dict | None:
    try:
        reply = httpx.get(f"{url}/health", timeout=1)
    except httpx.HTTPError:
        return None
    return reply.json() if reply.status_code == 200 else None


def our_actors() -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"] in COMPONENTS}


def test_up_on_ray_serves_a_completion_and_sigterm_removes_its_actors(ray_address, tiny_model, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, RAY_ADDRESS=ray_address, PYTHONUNBUFFERED="1")
    argv = CLI + ["up", "--ray", "--model", str(tiny_model), "--port", str(port), "--kv-cache-bytes", "16MiB",
                  "--log-dir", str(tmp_path / "components"), "--ready-timeout", "90"]  # fmt: skip
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not ((h := router_health(url)) and all(h["ready_workers"].get(r) for r in ("prefill", "decode"))):
            assert up.poll() is None, f"up --ray exited with {up.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"router not ready with both workers:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        assert our_actors() == COMPONENTS  # every component is a live, named Ray actor

        body = {"model": "default", "prompt": "Hello, Ray", "max_tokens": 8, "temperature": 0, "ignore_eos": True}
        reply = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        assert answer["object"] == "text_completion"
        assert answer["usage"]["completion_tokens"] == 8
        assert isinstance(answer["choices"][0]["text"], str)

        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
    deadline = time.monotonic() + 15  # Ray reports a killed actor as gone asynchronously
    while our_actors() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert our_actors() == set()
    assert router_health(url) is None  # the router's process is gone with its actor
