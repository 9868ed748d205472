"""Fallbacks: a request whose arm fails is retried on the next arm the policy picks.

Three fake upstreams (one per arm) behind the in-process gateway; killing one mid-run
must leave every client request answered by another arm, each attempt logged as its
own decision (its own propensity, the shared first request id, its attempt number) and
the failed one credited with quality 0.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import pytest

from controlplane.config import parse_config
from feedback.repositories import reward_stream
from tests.compat.conftest import Gateway, running_gateway
from tests.compat.fake_upstream import FakeUpstream

ASK = [{"role": "user", "content": "name a river"}]


@pytest.fixture
def upstreams() -> Iterator[dict[str, FakeUpstream]]:
    fakes = {name: FakeUpstream().start() for name in ("a", "b", "c")}
    yield fakes
    for fake in fakes.values():
        fake.stop()


def _config(fakes: dict[str, FakeUpstream], fallbacks: int) -> Any:
    arms = [{"name": n, "model": f"model-{n}", "backend": "openai", "base_url": f.base_url,
             "max_retries": 0, "timeout_s": 5.0} for n, f in fakes.items()]  # fmt: skip
    return parse_config(
        {
            "arms": arms,
            "routes": {"pair": ["a", "b"], "trio": ["a", "b", "c"]},
            "learner": {"kind": "random"},
            "featurizer": {"dim": 32},
            "gateway": {"fallbacks": fallbacks, "seed": 3, "log_flush_s": 0.05},
            "auth": {"open_chat": True},
        }
    )


@pytest.fixture
def gateway(upstreams, db_url, tmp_path) -> Iterator[Gateway]:
    with running_gateway(_config(upstreams, 2), db_url, tmp_path, upstreams["a"]) as gw:
        yield gw


def _attempts(gw: Gateway, first: str) -> list[dict[str, Any]]:
    return gw.rows(
        "SELECT d.request_id, d.arm_id, d.attempt, d.fallback_of, d.propensity, o.status "
        "FROM decisions d JOIN outcomes o USING (request_id) "
        "WHERE d.request_id = :r OR d.fallback_of = :r ORDER BY d.attempt",
        r=first,
    )


def _first_id(meta: dict[str, Any]) -> str:
    return str(meta.get("fallback_of") or meta["request_id"])


def test_killing_an_upstream_mid_run_leaves_every_request_answered(gateway, upstreams):
    client = gateway.client()
    metas = []
    for i in range(24):
        if i == 8:
            upstreams["a"].stop()  # arm a's upstream dies mid-run
        r = client.chat.completions.create(model="pair", messages=ASK)
        assert r.choices[0].message.content == f"model-{r.model} heard: name a river"
        metas.append(r.model_extra["banditctl"])
    after = metas[8:]
    assert all(m["arm"] == "b" for m in after)  # every answer after the kill: arm b
    fell_back = [m for m in after if m.get("attempt") == 2]
    assert fell_back, "the policy never picked the dead arm: no fallback exercised"
    for m in fell_back:
        rows = _attempts(gateway, m["fallback_of"])
        assert [(r["attempt"], r["arm_id"], r["status"]) for r in rows] == [
            (1, "a", "error"), (2, "b", "ok")]  # fmt: skip
        first, second = rows
        assert str(first["request_id"]) == m["fallback_of"] and first["fallback_of"] is None
        assert str(second["request_id"]) == m["request_id"]
        assert str(second["fallback_of"]) == m["fallback_of"]
        assert first["propensity"] == pytest.approx(0.5)  # a among a, b
        assert second["propensity"] == pytest.approx(1.0)  # b, the only arm left
        assert m["failed_arms"] == ["a"] and m["propensity"] == pytest.approx(1.0)
    # the failed attempts are credited with quality 0, the served ones wait for feedback
    with gateway.engine.begin() as conn:
        later = datetime.now(UTC) + timedelta(days=1)  # past the feedback window
        credited = {str(r.request_id): r for r in reward_stream.claim_reward_events(
            conn, gateway.core.config.objective, later, limit=100_000)}  # fmt: skip
    for m in fell_back:
        failed = credited[m["fallback_of"]]
        assert (failed.credit_kind, failed.quality, failed.arm_id) == ("error", 0.0, "a")
        served = credited.get(m["request_id"])
        assert served is None or served.credit_kind != "error"
    registry = gateway.core.instruments.registry
    assert registry.get_sample_value("banditctl_fallbacks_total") == len(fell_back)


def test_a_stream_falls_back_before_its_first_token_only(gateway, upstreams):
    client = gateway.client()
    upstreams["a"].fail_times = 1_000  # a answers 500 at once: before any token
    served = []
    for _ in range(6):
        chunks = list(client.chat.completions.create(model="pair", messages=ASK, stream=True))
        meta = chunks[0].model_extra["banditctl"]
        served.append(meta)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert meta["arm"] == "b" and text == "model-b heard: name a river"
    assert any(m.get("attempt") == 2 for m in served)

    upstreams["a"].fail_times = 0
    upstreams["b"].fail_after = upstreams["a"].fail_after = 1  # both break after a token
    with pytest.raises(openai.APIError, match="mid-stream"):
        list(client.chat.completions.create(model="pair", messages=ASK, stream=True))
    [last] = gateway.rows("SELECT request_id FROM decisions ORDER BY created_at DESC LIMIT 1")
    assert [r["attempt"] for r in _attempts(gateway, str(last["request_id"]))] == [1]


def test_fallbacks_are_bounded_never_repeat_an_arm_and_skip_the_clients_errors(
    upstreams, db_url, tmp_path
):
    upstreams["a"].stop()
    upstreams["b"].stop()
    with running_gateway(_config(upstreams, 1), db_url, tmp_path, upstreams["c"]) as gw:
        client = gw.client()
        outcomes = []
        for _ in range(12):
            before = datetime.now(UTC)
            try:
                r = client.chat.completions.create(model="trio", messages=ASK)
                outcomes.append(("ok", r.model_extra["banditctl"]))
            except openai.InternalServerError as exc:
                assert exc.status_code == 502
                [row] = gw.rows("SELECT request_id FROM decisions WHERE created_at >= :t "
                                "AND attempt = 1", t=before)  # fmt: skip
                outcomes.append(("502", {"request_id": str(row["request_id"])}))
        for kind, meta in outcomes:
            rows = _attempts(gw, _first_id(meta))
            arms = [r["arm_id"] for r in rows]
            assert len(arms) == len(set(arms)) <= 2  # one fallback at most, never the same arm
            assert [r["attempt"] for r in rows] == list(range(1, len(rows) + 1))
            if kind == "ok":
                assert arms[-1] == "c" and rows[-1]["status"] == "ok"
            else:
                assert "c" not in arms and all(r["status"] == "error" for r in rows)
        assert {k for k, _ in outcomes} == {"ok", "502"}

        upstreams["c"].reject = {"message": "bad tools", "param": "tools"}
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="c", messages=ASK)
        [row] = gw.rows("SELECT request_id FROM decisions ORDER BY created_at DESC LIMIT 1")
        assert len(_attempts(gw, str(row["request_id"]))) == 1  # the request's fault: no retry
    assert uuid.UUID(outcomes[0][1]["request_id"])
