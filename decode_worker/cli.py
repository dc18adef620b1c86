"""`splitserve decode`: run a decode worker (heavy imports happen only when it runs)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("decode", help="run a decode worker (gRPC DecodeService)")
    from engine.server.worker_options import add_worker_flags

    add_worker_flags(p, "decode")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from decode_worker.service import serve
    from engine.server.worker_options import options_from_args

    return serve(options_from_args(args, "decode"))
