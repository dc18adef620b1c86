"""`splitserve` command line: each component registers its own subcommands.

A component's ``cli`` module exposes ``register(subparsers)``; it must import
nothing heavy at module level so that ``splitserve --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMPONENT_CLIS = (
    "engine.cli",  # generate, make-model
    "kvstore.cli",  # kvstore-master, kvstore-node
    "prefill_worker.cli",  # prefill
    "decode_worker.cli",  # decode
    "router.cli",  # router
    "splitserve.up",  # up
    "bench.cli",  # bench serve / compare
    "simulator.cli",  # sim
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splitserve", description="Disaggregated prefill/decode LLM serving")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMPONENT_CLIS:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
