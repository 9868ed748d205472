"""Entry point for ``serve deploy`` (the config ``banditctl serve-config`` writes).

``args``: ``config`` (the banditctl config, inline), optional ``database_url``
(else ``DATABASE_URL`` on the cluster) and the feedback-token secret from the
environment variable named by ``feedback_secret_env``. The schema must be at
head first: ``banditctl db upgrade`` against the same database.
"""

from __future__ import annotations

import os
from typing import Any

from controlplane.config import parse_config
from controlplane.settings import Settings
from deployments.app import build_app


def app_builder(args: dict[str, Any]) -> Any:
    config = parse_config(args["config"], "serve config: args.config")
    url = Settings(
        database_url=args.get("database_url") or os.environ.get("DATABASE_URL")
    ).database_url
    if not url:
        raise ValueError("serve config: set args.database_url or DATABASE_URL on the cluster")
    env = args.get("feedback_secret_env", "BANDITCTL_FEEDBACK_SECRET")
    secret = os.environ.get(env)
    if not secret:
        raise ValueError(
            f"serve config: the environment variable {env} must hold the feedback secret"
        )
    return build_app(config, url, secret)
