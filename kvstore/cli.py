"""`splitserve kvstore-master` and `splitserve kvstore-node` (flags: docs/interfaces.md).

Nothing heavy at module level: servers are imported when a command runs. Each
process prints one line "<command> listening on HOST:PORT" once it serves.
"""

from __future__ import annotations

import argparse
import re

from contracts.sizes import parse_size

HASH_LANE = {"auto": None, "on": True, "off": False}  # --hash-lane -> NodeConfig.hash_lane


def parse_duration(text: str) -> float:
    """'10s', '500ms', '2m' or a plain number of seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 10s, 500ms)")
    return float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]


def register(subparsers: argparse._SubParsersAction) -> None:
    master = subparsers.add_parser("kvstore-master", help="KV store master (metadata, allocation, leases, eviction)")
    master.add_argument("--host", default="0.0.0.0")
    master.add_argument("--port", type=int, default=50051, help="gRPC port (0: any free port)")
    master.add_argument("--metrics-port", type=int, default=9100, help="Prometheus /metrics (0: off)")
    master.add_argument("--events-port", type=int, default=5560, help="ZMQ PUB of KV events; snapshots on +1 (0: off)")
    master.add_argument("--heartbeat-timeout", type=parse_duration, default=10.0)
    master.add_argument("--put-timeout", type=parse_duration, default=30.0, help="reclaim uncommitted puts after this")
    master.add_argument("--lease-ttl", type=parse_duration, default=2.0)
    master.set_defaults(func=_run_master)

    node = subparsers.add_parser("kvstore-node", help="KV store storage node (memory segment)")
    node.add_argument("--master", required=True, help="master HOST:PORT")
    node.add_argument("--capacity", type=parse_size, default=parse_size("4GiB"))
    node.add_argument("--host", default="0.0.0.0")
    node.add_argument("--port", type=int, default=50061, help="gRPC port (0: any free port)")
    node.add_argument("--advertise-host", default=None, help="host clients dial (default: --host, or 127.0.0.1)")
    node.add_argument("--metrics-port", type=int, default=9101, help="Prometheus /metrics (0: off)")
    node.add_argument(
        "--data-port", type=int, default=0, help="raw-TCP data plane for remote clients (0: any free port, -1: off)"
    )
    node.add_argument(
        "--hash-lane",
        choices=sorted(HASH_LANE),
        default="auto",
        help="data plane: hash on a helper thread beside each socket thread (auto: with 4 or more cores)",
    )
    node.set_defaults(func=_run_node)


def _run_master(args: argparse.Namespace) -> int:
    from kvstore.master import MasterServer
    from kvstore.master_config import MasterConfig

    config = MasterConfig(
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port or None,
        events_port=args.events_port or None,
        heartbeat_timeout_s=args.heartbeat_timeout,
        put_timeout_s=args.put_timeout,
        lease_ttl_s=args.lease_ttl,
    )
    return _serve("kvstore-master", MasterServer(config), config.metrics_port)


def _run_node(args: argparse.Namespace) -> int:
    from kvstore.node import NodeServer
    from kvstore.node_config import NodeConfig

    config = NodeConfig(
        data_port=None if args.data_port < 0 else args.data_port,
        hash_lane=HASH_LANE[args.hash_lane],
        master=args.master,
        capacity=args.capacity,
        host=args.host,
        port=args.port,
        advertise_host=args.advertise_host,
        metrics_port=args.metrics_port or None,
    )
    return _serve("kvstore-node", NodeServer(config), config.metrics_port)


def _serve(name: str, server, metrics_port: int | None) -> int:
    """Run a server until SIGTERM / SIGINT, then stop it gracefully."""
    import asyncio
    import logging
    import signal

    from prometheus_client import start_http_server

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if metrics_port:
            start_http_server(metrics_port)
        address = await server.start()
        print(f"{name} listening on {address}", flush=True)
        await stop.wait()
        await server.stop(2.0)

    asyncio.run(main())
    return 0
