"""Ray fixtures shared by the end-to-end and browser tests (a pytest plugin, loaded by
``tests/conftest.py``): one local Ray + Serve per test session, one deployed control
plane per module that asks for ``deployed``."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from controlplane.cli.demo import demo_config
from controlplane.config import BanditConfig

SECRET = "e2e-test-secret-0123456789abcdef"
FEEDBACK_KEY = "fb-key-e2e"
ADMIN_KEY = "admin-key-e2e"
READONLY_KEY = "ro-key-e2e"
CHAT_KEY = "chat-key-e2e"  # two requests a minute
BUDGET_TENANT = "e2e-budget"  # a budget that the first answer exhausts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Deployed:
    config: BanditConfig
    db_url: str
    base_url: str

    @property
    def api_url(self) -> str:
        return self.base_url + "/v1"


@pytest.fixture(scope="session")
def ray_session() -> Iterator[int]:
    from controlplane.cli.launch import init_ray, stop_ray

    port = _free_port()
    os.environ["BANDITCTL_E2E_FEEDBACK_KEY"] = FEEDBACK_KEY
    os.environ["BANDITCTL_E2E_ADMIN_KEY"] = ADMIN_KEY
    os.environ["BANDITCTL_E2E_READONLY_KEY"] = READONLY_KEY
    os.environ["BANDITCTL_E2E_CHAT_KEY"] = CHAT_KEY
    node = init_ray(None)
    yield port
    from ray import serve

    serve.shutdown()
    stop_ray(node)  # every process of the node, also those ray.shutdown leaves


def e2e_config(port: int) -> BanditConfig:
    cfg = demo_config()
    return cfg.model_copy(
        update={
            "http_port": port,
            "objective": cfg.objective.model_copy(update={"feedback_window_s": 600.0}),
            # the pools over Serve's actor calls here; the compatibility, fault and residency
            # suites run the default gRPC channel, so that both transports are served in CI
            "gateway": cfg.gateway.model_copy(
                update={"policy_refresh_s": 0.2, "pool_transport": "ray"}
            ),
            "learner_service": cfg.learner_service.model_copy(
                update={
                    "poll_interval_s": 0.05,
                    "snapshot_every_events": 10,
                    "snapshot_every_s": 0.3,
                    "min_snapshot_interval_s": 0.0,
                }
            ),
            "replay": cfg.replay.model_copy(update={"latency_scale": 0.0}),
            "api_keys": (
                {
                    "name": "feedback",
                    "key_env": "BANDITCTL_E2E_FEEDBACK_KEY",
                    "scopes": ["feedback"],
                },
                {"name": "admin", "key_env": "BANDITCTL_E2E_ADMIN_KEY", "scopes": ["admin"]},
                {"name": "readonly", "key_env": "BANDITCTL_E2E_READONLY_KEY", "scopes": []},
                {
                    "name": "chat",
                    "key_env": "BANDITCTL_E2E_CHAT_KEY",
                    "scopes": ["chat"],
                    "requests_per_minute": 2,
                },
            ),
            # chat stays open (demo_config's auth.open_chat): known keys are still limited
            "budgets": ({"tenant": BUDGET_TENANT, "usd": 1e-9, "period": "day"},),
        }
    )


@pytest.fixture(scope="module")
def deployed(ray_session: int, pg_server) -> Iterator[Deployed]:
    from ray import serve

    from controlplane.cli.launch import APP_NAME, deploy, wait_ready
    from feedback import migrate

    url = pg_server.create_database("banditctl_e2e")
    migrate.upgrade(url)
    cfg = BanditConfig.model_validate(e2e_config(ray_session).model_dump())
    instance = uuid.uuid4().hex
    base = deploy(cfg, url, SECRET, instance_id=instance)
    wait_ready(base, timeout_s=180, instance_id=instance)
    yield Deployed(cfg, url, base)
    serve.delete(APP_NAME)


def wait_for(pred: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``pred`` until it returns something truthy (returned); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
