"""`splitserve sim`: simulated prefill/decode workers (and optionally routers) on this machine."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sim", help="simulated prefill/decode workers speaking the worker gRPC API")
    p.add_argument("--prefill", type=int, default=8, help="simulated prefill workers")
    p.add_argument("--decode", type=int, default=8, help="simulated decode workers")
    p.add_argument("--profile", default="h200-llama-3.1-8b", help="shipped profile name or a profile .json path")
    p.add_argument("--speedup", type=float, default=1.0, help="simulated seconds per wall second")
    p.add_argument("--capacity-blocks", type=int, default=None, help="KV blocks per worker (default: the profile's)")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--router-port", type=int, default=None, help="also start a `splitserve router` on this port")
    p.add_argument("--policy", default="kv-aware", help="router policy (a shipped scheduler config)")
    p.add_argument("--scheduler-config", default=None, help="router scheduler config file (overrides --policy)")
    p.add_argument("--model-dir", default=None, help="where the router's tokenizer/config go (default: a temp dir)")
    p.add_argument("--state-file", default=None, help="write the worker addresses (and router URL) as JSON once ready")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import signal
    import tempfile
    import threading
    from pathlib import Path

    from simulator.cluster import ClusterConfig
    from simulator.launch import ClusterThread, SimLaunchError, start_router
    from simulator.model_dir import write_sim_model_dir
    from simulator.profile import ProfileError, load_profile

    try:
        profile = load_profile(args.profile)
    except ProfileError as exc:
        raise SystemExit(f"splitserve sim: {exc}") from exc
    config = ClusterConfig(
        profile, args.prefill, args.decode, args.speedup, args.block_size, capacity_blocks=args.capacity_blocks
    )
    workdir = Path(args.model_dir or tempfile.mkdtemp(prefix="splitserve-sim-"))
    cluster = ClusterThread.start(config)
    router = None
    try:
        state = cluster.cluster.describe()
        if args.router_port is not None:
            model_dir = write_sim_model_dir(workdir / "model")
            policy = ["--scheduler-config", args.scheduler_config] if args.scheduler_config else ["--policy", args.policy]
            router = start_router(model_dir, cluster.cluster, workdir / "router.log", policy, port=args.router_port)
            state["router"] = router.url
        text = json.dumps(state, indent=2)
        if args.state_file:
            Path(args.state_file).write_text(text + "\n")
        print(text, flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        stop.wait()
    except SimLaunchError as exc:
        raise SystemExit(f"splitserve sim: {exc}") from exc
    finally:
        if router is not None:
            router.stop()
        cluster.stop()
    return 0
