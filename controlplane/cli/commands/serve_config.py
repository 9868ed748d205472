"""``banditctl serve-config -o serve.yaml``: a Ray Serve config for ``serve deploy``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml


def register(sub: Any) -> None:
    p = sub.add_parser("serve-config", help="write a Ray Serve config file for `serve deploy`")
    p.add_argument("--config", help="banditctl YAML config (default: the bundled demo scenario)")
    p.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    p.add_argument("--database-url", help="embed this URL (default: DATABASE_URL on the cluster)")
    p.add_argument("--host", default="0.0.0.0", help="where Serve's proxies listen")
    p.add_argument("--port", type=int, help="HTTP port (default: the config's http_port)")
    p.add_argument("--working-dir", help="runtime_env working_dir to ship the code (default: none)")
    p.set_defaults(func=run)


def build(
    config_path: str | None,
    database_url: str | None,
    host: str,
    port: int | None,
    working_dir: str | None,
) -> dict[str, Any]:
    """The Serve config; its ``http_options`` and the embedded config name the same host and
    port: ``port``, else the config's ``http_port``."""
    from controlplane.cli.demo import demo_config
    from controlplane.config import load_config

    cfg = load_config(config_path) if config_path else demo_config()
    cfg = cfg.model_copy(update={"http_host": host, "http_port": port or cfg.http_port})
    args: dict[str, Any] = {
        "config": cfg.model_dump(mode="json"),
        "feedback_secret_env": "BANDITCTL_FEEDBACK_SECRET",
    }
    if database_url:
        args["database_url"] = database_url
    app: dict[str, Any] = {
        "name": "banditctl",
        "route_prefix": "/",
        "import_path": "deployments.serve_entry:app_builder",
        "args": args,
    }
    if working_dir:
        app["runtime_env"] = {"working_dir": working_dir}
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": cfg.http_host, "port": cfg.http_port},
        "applications": [app],
    }


def run(args: argparse.Namespace) -> int:
    from controlplane.config import ConfigError

    try:
        doc = build(args.config, args.database_url, args.host, args.port, args.working_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = yaml.safe_dump(doc, sort_keys=False)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w") as f:
            f.write(text)
        print(f"wrote {args.output}; deploy with: serve deploy {args.output}")
    return 0
