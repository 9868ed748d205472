"""What runs on the operator's machine: the ``banditctl`` command line.

This module is the entry point (``main``, ``build_parser``). Each subcommand
lives in its own module under ``controlplane.cli.commands`` and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int``.
Adding a command is one module and one entry in :data:`COMMANDS`. Nothing is
imported or started until a command runs. Beside the commands:
:mod:`controlplane.cli.launch` brings the control plane up (database, schema,
Ray, Serve) and :mod:`controlplane.cli.demo` holds the demo's scenario and
traffic. The running core (config, API, gateway, learner loop) is the rest of
``controlplane``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand name -> module under controlplane.cli.commands
COMMANDS: dict[str, str] = {
    "db": "db",
    "status": "status",
    "simulate": "simulate",
    "simulate-cache": "simulate_cache",
    "demo": "demo",
    "up": "up",
    "serve-config": "serve_config",
    "adapters": "adapters",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="banditctl",
        description="Route LLM traffic with contextual bandits on Ray Serve and PostgreSQL.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in dict.fromkeys(COMMANDS.values()):
        importlib.import_module(f"controlplane.cli.commands.{module}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
