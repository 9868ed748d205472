"""Shared by the API key, rate limit and budget tests: a two-arm config with price tables,
a stub pool that charges by them, fake clocks, and an app around a GatewayCore (no Ray)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import text

from controlplane.admission import Admission
from controlplane.api import create_app
from controlplane.config import BanditConfig, parse_config
from controlplane.gateway_core import GatewayCore
from controlplane.learner_loop import arm_records
from controlplane.limits import estimate_prompt_tokens
from controlplane.tokens import FeedbackTokens
from feedback.repositories import arms as arms_repo

COMPLETION_TOKENS = 40
PRICES = {"cheap": 1.0, "dear": 10.0}  # USD per 1k tokens, prompt and completion alike
JOULES_PER_TOKEN = {"cheap": 1.0, "dear": 20.0}
MESSAGES = [{"role": "user", "content": "Write a haiku about routers."}]
BODY: dict[str, Any] = {"model": "auto", "messages": MESSAGES, "max_tokens": COMPLETION_TOKENS}
PROMPT_TOKENS = estimate_prompt_tokens(BODY)
TOKENS = PROMPT_TOKENS + COMPLETION_TOKENS


def cost(arm: str) -> float:
    """What one request of ``BODY`` costs on ``arm`` (the stub pool charges this)."""
    return TOKENS * PRICES[arm] / 1000.0


def config(**extra: Any) -> BanditConfig:
    """Two priced arms; a fixed learner that always wants the dear one."""
    data: dict[str, Any] = {
        "arms": [
            {
                "name": arm,
                "model": arm,
                "usd_per_1k_prompt_tokens": price,
                "usd_per_1k_completion_tokens": price,
                "joules_per_token": JOULES_PER_TOKEN[arm],
            }
            for arm, price in PRICES.items()
        ],
        "learner": {"kind": "fixed", "arm": "dear"},
        "featurizer": {"dim": 32},
    }
    data.update(extra)
    return parse_config(data, "<test>")


async def stub_pool(arm: str, body: dict[str, Any]) -> dict[str, Any]:
    pt = estimate_prompt_tokens(body)
    return {
        "text": f"[{arm}] routers hum",
        "prompt_tokens": pt,
        "completion_tokens": COMPLETION_TOKENS,
        "energy_j": JOULES_PER_TOKEN[arm] * (pt + COMPLETION_TOKENS),
        "cost_usd": (pt + COMPLETION_TOKENS) * PRICES[arm] / 1000.0,
    }


@dataclass
class Clocks:
    """A monotonic clock (rate limits) and a wall clock (budget periods), moved together.

    The wall clock starts at the real time: the gateway stamps decisions with the real
    time, and budgets read them back by period."""

    mono: float = 1000.0
    wall: datetime = field(default_factory=lambda: datetime.now(UTC))

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += timedelta(seconds=seconds)


@dataclass
class Gateway:
    http: TestClient
    core: GatewayCore
    admission: Admission
    clocks: Clocks

    def chat(self, key: str | None = None, **body: Any) -> Any:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return self.http.post("/v1/chat/completions", json={**BODY, **body}, headers=headers)

    def decisions(self) -> list[dict[str, Any]]:
        """Every decision row, after writing what the log holds."""
        assert self.core.writer.flush()
        with self.core.engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM decisions ORDER BY created_at"))
            return [dict(r._mapping) for r in rows]


def gateway(engine: Any, cfg: BanditConfig, clocks: Clocks | None = None) -> Gateway:
    """The HTTP app around a GatewayCore with the stub pool; enter ``.http`` to use it."""
    clocks = clocks or Clocks()
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, arm_records(cfg))
    core = GatewayCore(cfg, engine, stub_pool, FeedbackTokens("unit-secret-0123456789", 60))
    admission = Admission(cfg, engine, clock=lambda: clocks.mono, now=lambda: clocks.wall)
    app = create_app(core, start_background=False, admission=admission)
    return Gateway(TestClient(app), core, admission, clocks)
