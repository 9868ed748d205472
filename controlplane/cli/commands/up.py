"""``banditctl up``: run the whole control plane locally until Ctrl-C."""

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
        print("Ctrl-C stops.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0
