"""Bring the control plane up: database, schema, Ray, Serve, the application.

Used by ``banditctl up`` and ``banditctl demo`` (and the end-to-end tests).
Without ``RAY_ADDRESS`` a local Ray starts in this process (its GCS on a free
port, never Redis's 6379); with it, banditctl joins that cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from controlplane.config import BanditConfig
from controlplane.settings import Settings
from feedback import migrate
from feedback.database import DatabaseHandle

log = logging.getLogger(__name__)
APP_NAME = "banditctl"


@dataclass
class Running:
    config: BanditConfig
    db: DatabaseHandle
    base_url: str  # http://host:port

    @property
    def api_url(self) -> str:
        return self.base_url + "/v1"


def feedback_secret(settings: Settings) -> str:
    """The token secret: BANDITCTL_FEEDBACK_SECRET, else one kept in the data dir."""
    if settings.feedback_secret:
        return settings.feedback_secret
    path = Path(settings.data_dir) / "feedback.secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def init_ray(address: str | None, attempts: int = 3) -> None:
    """Join ``address`` or start a local Ray; a node that times out starting on a
    busy machine is retried (the time-out is Ray's own)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    for attempt in range(1, attempts + 1):
        try:
            if address:
                ray.init(address=address, logging_level=logging.WARNING)
            else:
                ray.init(
                    address="local",
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    log_to_driver=os.environ.get("BANDITCTL_RAY_LOGS", "0") == "1",
                )
            return
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            log.warning("Ray node start timed out (attempt %d of %d); retrying", attempt, attempts)
            ray.shutdown()
            time.sleep(2.0)


def deploy(config: BanditConfig, database_url: str, secret: str, *, blocking: bool = False) -> str:
    from ray import serve

    from deployments.app import build_app

    serve.start(http_options={"host": config.http_host, "port": config.http_port})
    serve.run(
        build_app(config, database_url, secret), name=APP_NAME, route_prefix="/", blocking=blocking
    )
    return f"http://{config.http_host}:{config.http_port}"


def wait_ready(base_url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(base_url + "/healthz", timeout=5)
            if r.status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"gateway at {base_url} not ready after {timeout_s:.0f}s: {last}")


@contextlib.contextmanager
def control_plane(config: BanditConfig, settings: Settings) -> Iterator[Running]:
    """Start everything; on exit shut Serve and Ray down and release the database."""
    with settings.database() as db:
        migrate.upgrade(db.url)
        init_ray(settings.ray_address)
        from ray import serve

        try:
            base = deploy(config, db.url, feedback_secret(settings))
            wait_ready(base)
            yield Running(config=config, db=db, base_url=base)
        finally:
            with contextlib.suppress(Exception):
                serve.shutdown()  # type: ignore[no-untyped-call]
            import ray

            with contextlib.suppress(Exception):
                ray.shutdown()
