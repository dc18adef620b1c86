"""`python -m kvstore kvstore-master|kvstore-node ...`: the store's commands without the rest of the CLI."""

from __future__ import annotations

import argparse
import sys

from kvstore.cli import register


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvstore")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
