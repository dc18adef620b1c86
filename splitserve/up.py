"""`splitserve up`: the whole stack on one machine as processes.

kvstore master + storage node, N prefill workers, M decode workers and the router,
each the same entry point that the Helm chart runs in a pod. Progress is shown
until every component reports healthy; Ctrl-C or SIGTERM stops everything.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEMO_MODEL_ARCH = "llama"


@dataclass(slots=True)
class Component:
    name: str
    argv: list[str]
    grpc_port: int | None = None  # health-checked with grpc.health.v1
    http_port: int | None = None  # health-checked with GET /health
    metrics_port: int | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)


@dataclass(slots=True)
class StackInfo:
    """What a running stack exposes; written to --state-file for tests and tools."""

    url: str
    model: str
    kvstore: str
    prefill: list[str]
    decode: list[str]
    metrics: dict[str, str]
    pids: dict[str, int]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_model_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "splitserve" / f"demo-{DEMO_MODEL_ARCH}-small"


def ensure_demo_model(path: Path) -> None:
    if (path / "config.json").exists():
        return
    print(f"[up] writing a tiny random-weight demo model to {path}", flush=True)
    cmd = [sys.executable, "-m", "splitserve.cli", "make-model", "--arch", DEMO_MODEL_ARCH, "--size", "small", str(path)]
    subprocess.run(cmd, check=True)


def plan_stack(args: argparse.Namespace, model: str) -> list[Component]:
    py = [sys.executable, "-m", "splitserve.cli"]
    host = "127.0.0.1"
    master_port, master_metrics, events_port = free_port(), free_port(), free_port()
    master = f"{host}:{master_port}"
    comps = [
        Component(
            "kvstore-master",
            py + ["kvstore-master", "--host", host, "--port", str(master_port), "--metrics-port", str(master_metrics),
                  "--events-port", str(events_port)],
            grpc_port=master_port, metrics_port=master_metrics,
        )
    ]
    node_port, node_metrics = free_port(), free_port()
    comps.append(Component(
        "kvstore-node",
        py + ["kvstore-node", "--master", master, "--capacity", args.kvstore_capacity, "--host", host,
              "--port", str(node_port), "--advertise-host", host, "--metrics-port", str(node_metrics)],
        grpc_port=node_port, metrics_port=node_metrics,
    ))
    for role, count in (("prefill", args.prefill), ("decode", args.decode)):
        for i in range(count):
            port, metrics, events = free_port(), free_port(), free_port()
            argv = py + [role, "--model", model, "--kvstore", master, "--host", host, "--port", str(port),
                         "--advertise-host", host, "--metrics-port", str(metrics), "--kv-events-port", str(events),
                         "--worker-id", f"{role}-{i}"]
            if args.tensor_parallel_size > 1:
                argv += ["--tensor-parallel-size", str(args.tensor_parallel_size)]
            comps.append(Component(f"{role}-{i}", argv, grpc_port=port, metrics_port=metrics))
    prefill = ",".join(f"{host}:{c.grpc_port}" for c in comps if c.name.startswith("prefill-"))
    decode = ",".join(f"{host}:{c.grpc_port}" for c in comps if c.name.startswith("decode-"))
    router = py + ["router", "--model", model, "--decode", decode, "--host", args.host, "--port", str(args.port),
                   "--policy", args.policy]
    if prefill:
        router += ["--prefill", prefill]
    comps.append(Component("router", router, http_port=args.port, metrics_port=args.port))
    return comps


def grpc_healthy(port: int) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def http_healthy(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def healthy(comp: Component) -> bool:
    if comp.grpc_port is not None:
        return grpc_healthy(comp.grpc_port)
    return comp.http_port is not None and http_healthy(comp.http_port)


class Stack:
    def __init__(self, comps: list[Component], log_dir: Path) -> None:
        self.comps = comps
        self.log_dir = log_dir

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for comp in self.comps:
            log = open(self.log_dir / f"{comp.name}.log", "wb")
            # own process group: Ctrl-C in the terminal reaches `up`, which stops children in order
            comp.process = subprocess.Popen(comp.argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
            log.close()

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(self.comps)
        while pending:
            for comp in list(pending):
                if comp.process.poll() is not None:
                    tail = (self.log_dir / f"{comp.name}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{comp.name} exited with code {comp.process.returncode}:\n{tail}")
                if healthy(comp):
                    pending.remove(comp)
                    print(f"[up] {comp.name:<15} ready", flush=True)
            if pending and time.monotonic() > deadline:
                names = ", ".join(c.name for c in pending)
                raise TimeoutError(f"not ready after {timeout_s:.0f}s: {names} (logs in {self.log_dir})")
            if pending:
                time.sleep(0.3)

    def first_exited(self) -> Component | None:
        return next((c for c in self.comps if c.process and c.process.poll() is not None), None)

    def stop(self, grace_s: float = 15.0) -> None:
        # router first (stop taking traffic), then workers (drain), then the store
        for comp in reversed(self.comps):
            if comp.process and comp.process.poll() is None:
                comp.process.send_signal(signal.SIGTERM)
                try:
                    comp.process.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    comp.process.kill()
                    comp.process.wait()

    def info(self, url: str, model: str) -> StackInfo:
        by_prefix = lambda p: [f"127.0.0.1:{c.grpc_port}" for c in self.comps if c.name.startswith(p)]  # noqa: E731
        return StackInfo(
            url=url, model=model, kvstore=by_prefix("kvstore-master")[0], prefill=by_prefix("prefill-"),
            decode=by_prefix("decode-"),
            metrics={c.name: f"127.0.0.1:{c.metrics_port}" for c in self.comps if c.metrics_port},
            pids={c.name: c.process.pid for c in self.comps if c.process},
        )


def demo_request(url: str) -> None:
    import httpx

    body = {"model": "default", "messages": [{"role": "user", "content": "Hello! Who are you?"}], "max_tokens": 24,
            "temperature": 0}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
    print("[up] demo request -> " + json.dumps(reply, indent=2), flush=True)


def run_up(args: argparse.Namespace) -> int:
    model = Path(args.model) if args.model else default_model_dir()
    if not args.model:
        ensure_demo_model(model)
    if args.ray:
        from splitserve.ray_launcher import run_on_ray

        return run_on_ray(args, str(model))
    log_dir = Path(args.log_dir) if args.log_dir else Path.cwd() / "runs" / time.strftime("up-%Y%m%d-%H%M%S")
    stack = Stack(plan_stack(args, str(model)), log_dir)
    stopping = False

    def on_signal(signum, frame):  # noqa: ARG001
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    url = f"http://{args.host if args.host != '0.0.0.0' else '127.0.0.1'}:{args.port}"
    print(f"[up] starting {len(stack.comps)} processes (logs in {log_dir})", flush=True)
    stack.start()
    try:
        stack.wait_ready(args.ready_timeout)
        info = stack.info(url, str(model))
        if args.state_file:
            Path(args.state_file).write_text(json.dumps(asdict(info), indent=2))
        print(f"[up] serving on {url}  (model {model})")
        print(f"[up] try: curl {url}/v1/chat/completions -H 'Content-Type: application/json' "
              "-d '{\"model\": \"default\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}'", flush=True)
        if args.demo_request:
            demo_request(url)
        while not stopping:
            dead = stack.first_exited()
            if dead:
                print(f"[up] {dead.name} exited with code {dead.process.returncode}; stopping", flush=True)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        print("[up] shutting down", flush=True)
        stack.stop()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("up", help="start kvstore, workers and router on this machine")
    p.add_argument("--model", help="HF checkpoint directory (default: a tiny random demo model)")
    p.add_argument("--prefill", type=int, default=1, help="prefill workers (0 = colocated only)")
    p.add_argument("--decode", type=int, default=1, help="decode workers")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--policy", default="kv-aware", choices=["kv-aware", "round-robin", "random"])
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--kvstore-capacity", default="1GiB")
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument("--log-dir", help="where component logs go (default ./runs/up-<time>)")
    p.add_argument("--state-file", help="write endpoints and pids as JSON once ready")
    p.add_argument("--demo-request", action="store_true", help="send one chat completion once ready and print it")
    p.add_argument("--ray", action="store_true", help="place the components as Ray actors (needs the ray extra)")
    p.set_defaults(func=run_up)
