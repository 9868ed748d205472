"""What runs on the operator's machine: the ``banditctl`` command line.

This module is the entry point (``main``, ``build_parser``). Each subcommand
lives in its own module under ``controlplane.cli.commands`` and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int``.
Adding a command is one module, one entry in :data:`COMMANDS` and its examples in
:data:`EXAMPLES` (shown under its ``--help``). Nothing is imported or started until
a command runs (``--version`` reads the installed package's metadata only when
asked). Beside the commands:
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
    "ope": "ope",
    "demo": "demo",
    "up": "up",
    "serve-config": "serve_config",
    "adapters": "adapters",
}

# subcommand name -> real invocations, printed under its --help
EXAMPLES: dict[str, tuple[str, ...]] = {
    "": (
        "banditctl demo --requests 300      # bring it up, send traffic, watch it learn",
        "banditctl status                   # the database and what is running",
    ),
    "db": (
        "banditctl db upgrade                    # the schema to head",
        "banditctl db prune-snapshots --dry-run  # which policy versions retention compacts",
        "banditctl db prune-log --older-than 90d --archive /backup/banditctl  # request log retention",
    ),
    "status": (
        "banditctl status",
        "banditctl status --url http://gateway.internal:8000 --migrate",
    ),
    "simulate": (
        "banditctl simulate --dataset synthetic --learners linucb,lints,random --seeds 3",
        "banditctl simulate --dataset routerbench/ --pattern '*_train.csv' --plot replay.png",
    ),
    "simulate-cache": (
        "banditctl simulate-cache --scenario drift --seeds 3",
        "banditctl simulate-cache --policies polar+,lru --plot drift.png --json drift.json",
    ),
    "ope": (
        "banditctl ope --dataset synthetic --logging-policy random --candidates fixed:large,linucb,lints --seeds 3",
        "banditctl ope --since 7d --route auto --candidates current,linucb:alpha=0.1 --weights quality=1,cost_usd=-50",
    ),
    "demo": (
        "banditctl demo --requests 300 --json out.json   # summarise and exit",
        "banditctl demo --requests 300 --seeds 3        # three fresh runs, each figure's range",
        "banditctl demo                                  # 1,000 requests, then keep serving",
    ),
    "up": (
        "banditctl up --config banditctl.yaml",
        "DATABASE_URL=postgresql://user:pass@db:5432/banditctl banditctl up --port 8080",
    ),
    "serve-config": (
        "banditctl serve-config --config banditctl.yaml -o serve.yaml",
        "banditctl serve-config --database-url postgresql+psycopg://u:p@db/banditctl --port 8000",
        "banditctl serve-config --config banditctl.yaml --resources Gateway=head -o serve.yaml",
        "banditctl serve-config --config banditctl.yaml --format rayservice -o rayservice.yaml",
    ),
    "adapters": (
        "banditctl adapters make --n 4 --ranks 4,8,16 --out ~/.banditctl/adapters",
        "banditctl adapters make --n 2 --steps 8 --threads 1 --out /tmp/adapters --seed 1",
    ),
}


def examples(name: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name])


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, but text with line breaks (the examples) is kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "\n".join(indent + line for line in text.splitlines())
        return super()._fill_text(text, width, indent)


class _Version(argparse.Action):
    """``--version``: the installed distribution's version, looked up only when asked."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_args: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("banditctl")
        except PackageNotFoundError:
            found = "unknown (not installed: pip install -e .)"
        print(f"banditctl {found}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="banditctl",
        description="Route LLM traffic with contextual bandits on Ray Serve and PostgreSQL.",
        epilog=examples(""),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in dict.fromkeys(COMMANDS.values()):
        importlib.import_module(f"controlplane.cli.commands.{module}").register(sub)
    for name, command in sub.choices.items():
        command.formatter_class = HelpFormatter
        if name in EXAMPLES and command.epilog is None:
            command.epilog = examples(name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
