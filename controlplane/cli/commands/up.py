"""``banditctl up``: run the whole control plane locally until Ctrl-C or SIGTERM.

Exits 2 when the HTTP port is taken (nothing started); on SIGINT or SIGTERM it stops
the app, Ray and the embedded database it started and exits 130 or 143
(:mod:`controlplane.cli.launch`)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "up", help="run the control plane (local Ray; embedded Postgres unless DATABASE_URL)"
    )
    p.add_argument("--config", help="banditctl YAML config (default: the bundled demo scenario)")
    p.add_argument("--port", type=int, help="HTTP port (default: the config's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from controlplane.cli.demo import demo_config
    from controlplane.cli.launch import control_plane
    from controlplane.config import ConfigError, load_config
    from controlplane.settings import get_settings

    logging.basicConfig(level=logging.WARNING)
    try:
        config = load_config(args.config) if args.config else demo_config()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.port:
        config = config.model_copy(update={"http_port": args.port})
    with control_plane(config, get_settings()) as running:
        print(f"gateway   : {running.api_url}")
        print(f"dashboard : {running.base_url}/dashboard")
        if running.ray_temp_dir:
            print(f"ray logs  : {running.ray_temp_dir}/session_latest/logs")
        print("Ctrl-C stops.", flush=True)
        while True:  # until a signal: control_plane stops everything and exits 130 or 143
            time.sleep(3600)
