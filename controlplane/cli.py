"""The ``banditctl`` command line.

Each subcommand lives in its own module under ``controlplane.commands`` and
exposes ``register(subparsers)``, which adds its parser and sets
``func(args) -> int``. Adding a command is one module and one entry in
:data:`COMMANDS`. Nothing is imported or started until a command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand name -> module under controlplane.commands
COMMANDS: dict[str, str] = {
    "db": "db",
    "status": "status",
    "simulate": "simulate",
    "simulate-cache": "simulate_cache",
    "demo": "demo",
    "up": "up",
    "serve-config": "serve_config",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="banditctl",
        description="Route LLM traffic with contextual bandits on Ray Serve and PostgreSQL.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in dict.fromkeys(COMMANDS.values()):
        importlib.import_module(f"controlplane.commands.{module}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
