"""`splitserve prefill`: run a prefill worker (heavy imports happen only when it runs)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("prefill", help="run a prefill worker (gRPC PrefillService)")
    from engine.server.worker_options import add_worker_flags

    add_worker_flags(p, "prefill")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from engine.server.worker_options import options_from_args
    from prefill_worker.service import serve

    return serve(options_from_args(args, "prefill"))
