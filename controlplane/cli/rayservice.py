"""A KubeRay ``RayService`` manifest (``ray.io/v1``) holding a Serve config, for
``banditctl serve-config --format rayservice``.

What it sets, and why:

- ``serveConfigV2``: the Serve config ``serve deploy`` would take, as text (the CRD's type).
- ``rayClusterConfig.authOptions``: Ray token authentication on, its token read from the
  same Secret as the rest (key ``auth_token``), so the operator, every Ray container and
  whoever runs the ``serve`` CLI use one known token; nothing runs with auth disabled.
- every Ray container reads ``DATABASE_URL``, ``BANDITCTL_FEEDBACK_SECRET`` and each
  ``key_env`` and previous feedback-token ``secret_env`` the config names from that Secret
  (key = variable name): the replicas read them where they start, as ``ray start``'s shell exports them on a plain cluster.
- the head advertises the custom resource ``head``, worker pods ``worker``, the names the
  README's ``--resources`` examples pin deployments to.
- a container port named ``serve`` on the Serve HTTP port (the operator's serve Service
  targets it), and Ray's usual ``gcs-server``, ``dashboard`` and ``client`` ports.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import yaml

API_VERSION = "ray.io/v1"
SECRET_KEYS = ("DATABASE_URL", "BANDITCTL_FEEDBACK_SECRET")
HEAD_RESOURCE = "head"
WORKER_RESOURCE = "worker"


def _version(dist: str, default: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return default


def _env(secret: str, names: list[str]) -> list[dict[str, Any]]:
    return [{"name": n, "valueFrom": {"secretKeyRef": {"name": secret, "key": n}}} for n in names]


def _resources_param(resources: dict[str, float]) -> str:
    # ``ray start --resources`` takes JSON; KubeRay passes rayStartParams on a shell command
    # line, so the value carries its own double quotes (as KubeRay's samples write it)
    return '"' + json.dumps(resources).replace('"', '\\"') + '"'


def _container(
    name: str, image: str, env: list[dict[str, Any]], ports: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "env": env,
        "ports": ports,
        "resources": {
            "requests": {"cpu": "2", "memory": "4Gi"},
            "limits": {"cpu": "2", "memory": "4Gi"},
        },
    }


def rayservice(
    serve_config: dict[str, Any],
    *,
    name: str = "banditctl",
    namespace: str | None = None,
    image: str | None = None,
    secret: str = "banditctl",
    workers: int = 1,
) -> dict[str, Any]:
    """The manifest for ``serve_config`` (what ``serve_config.build`` returns)."""
    from controlplane.config import ConfigError

    if workers < 0:
        raise ConfigError(f"--workers {workers}: expected a count >= 0")
    app = serve_config["applications"][0]
    cfg = app["args"]["config"]
    env_names = list(SECRET_KEYS)
    env_names += [k["key_env"] for k in cfg.get("api_keys", ()) if k.get("key_env")]
    previous = cfg.get("auth", {}).get("feedback_tokens", {}).get("previous", ())
    env_names += [p["secret_env"] for p in previous]  # rotated feedback-token secrets
    env = _env(secret, list(dict.fromkeys(env_names)))
    image = image or f"banditctl:{_version('banditctl', 'latest')}"
    port = int(serve_config["http_options"]["port"])
    metadata: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/name": "banditctl"}}
    if namespace:
        metadata["namespace"] = namespace
    head_ports = [
        {"containerPort": 6379, "name": "gcs-server"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
        {"containerPort": port, "name": "serve"},
    ]
    head = {
        "rayStartParams": {
            "dashboard-host": "0.0.0.0",
            "resources": _resources_param({HEAD_RESOURCE: 1}),
        },
        "template": {"spec": {"containers": [_container("ray-head", image, env, head_ports)]}},
    }
    worker = {
        "groupName": "workers",
        "replicas": workers,
        "minReplicas": workers,
        "maxReplicas": max(workers, 1),
        "rayStartParams": {"resources": _resources_param({WORKER_RESOURCE: 1})},
        "template": {
            "spec": {
                "containers": [
                    _container("ray-worker", image, env, [{"containerPort": port, "name": "serve"}])
                ]
            }
        },
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "RayService",
        "metadata": metadata,
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config, sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": _version("ray", "2.60.0"),
                "authOptions": {"mode": "token", "secretName": secret},
                "headGroupSpec": head,
                "workerGroupSpecs": [worker],
            },
        },
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the Serve config inside) as YAML literal blocks; no anchors
    (the containers' shared env list is written out twice)."""

    def ignore_aliases(self, data: Any) -> bool:  # noqa: ARG002
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(manifest: dict[str, Any]) -> str:
    return yaml.dump(manifest, Dumper=_Dumper, sort_keys=False)
