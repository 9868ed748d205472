"""Policy releases end to end on Ray Serve + Postgres: register a better candidate,
watch its shadow estimate rise above the live policy's, promote it, inject a
regression and see the automatic rollback."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from controlplane.config import BanditConfig
from tests.ray_fixtures import ADMIN_KEY, FEEDBACK_KEY, SECRET, Deployed, e2e_config, wait_for

pytestmark = pytest.mark.ray

LIVE, BETTER = "small", "large"  # the demo's worst and best arms
FLOOR = 0.1


@pytest.fixture(scope="module")
def released(ray_session: int, pg_server: Any) -> Iterator[Deployed]:
    """The e2e deployment with a poor live policy (always `small`) under an exploration
    floor, and a gate and rollback window sized for a test."""
    from ray import serve

    from controlplane.cli.launch import APP_NAME, deploy, wait_ready
    from feedback import migrate

    url = pg_server.create_database("banditctl_e2e_rel")
    migrate.upgrade(url)
    data = e2e_config(ray_session).model_dump()
    data["learner"] = {"kind": "fixed", "arm": LIVE}
    data["budgets"] = ()
    data["releases"] = {
        "exploration_floor": FLOOR,
        "min_shadow_decisions": 100,
        "rollback_window": 60,
        "rollback_watch_decisions": 10_000,
        "rollback_check_s": 0.2,
    }
    cfg = BanditConfig.model_validate(data)
    instance = uuid.uuid4().hex
    base = deploy(cfg, url, SECRET, instance_id=instance)
    wait_ready(base, timeout_s=180, instance_id=instance)
    yield Deployed(cfg, url, base)
    serve.delete(APP_NAME)


def _traffic(http: httpx.Client, n: int, quality: dict[str, float], seed: int) -> dict[str, int]:
    """``n`` answers, each rated by a simulated evaluator at its arm's quality."""
    served: list[tuple[str, str]] = []
    for i in range(n):
        body = {"model": "auto", "messages": [{"role": "user", "content": f"q{seed}-{i}: 2+{i}?"}]}
        r = http.post("/chat/completions", json=body)
        assert r.status_code == 200, r.text
        served.append((r.json()["banditctl"]["request_id"], r.json()["banditctl"]["arm"]))
    items = [{"request_id": rid, "quality": quality.get(arm, 0.3)} for rid, arm in served]

    def rated() -> bool:
        r = http.post(
            "/feedback/batch",
            json={"items": items},
            headers={"Authorization": f"Bearer {FEEDBACK_KEY}"},
        )
        return r.status_code == 200  # 404 until the writer stored the decisions

    wait_for(rated, 20, "feedback stored")
    counts: dict[str, int] = {}
    for _, arm in served:
        counts[arm] = counts.get(arm, 0) + 1
    return counts


def test_candidate_shadow_promotion_and_automatic_rollback(released: Deployed) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    good = {LIVE: 0.2, BETTER: 0.9}
    with httpx.Client(base_url=released.api_url, timeout=30) as http:
        r = http.post(
            "/policies/candidates",
            json={"name": "large", "learner": f"fixed:{BETTER}"},
            headers=admin,
        )
        assert r.status_code == 201, r.text
        cid = r.json()["id"]

        counts = _traffic(http, 160, good, seed=0)
        assert counts[LIVE] > 80 and len(counts) == 4  # the floor lets every arm be logged

        def estimated() -> Any:
            c = http.get(f"/policies/candidates/{cid}").json()
            return c if c["estimate"]["n"] >= 150 else None

        cand = wait_for(estimated, 60, "the shadow's picks")
        est = cand["estimate"]
        assert est["dr"]["ci95"][0] > est["live"]["value"]  # clearly better, on the same rows
        series = cand["series"]
        assert [p["n"] for p in series] == sorted(p["n"] for p in series)
        assert series[-1]["dr"]["value"] > series[-1]["live"]["value"]

        r = http.post(f"/policies/candidates/{cid}/promote", headers=admin)
        assert r.status_code == 200, r.text
        promoted = r.json()
        bound = promoted["estimates"]["lower_bound"]
        wait_for(
            lambda: (
                http.get(f"{released.base_url}/healthz").json()["policy_version"]
                >= promoted["version"]
            ),
            30,
            "gateways on the promoted version",
        )
        counts = _traffic(http, 40, good, seed=1)
        assert counts.get(BETTER, 0) > 20  # the promoted policy serves `large`

        # a regression: `large` answers poorly from now on
        _traffic(http, 80, {LIVE: 0.2, BETTER: 0.05}, seed=2)

        def rolled_back() -> Any:
            s = http.get("/stats").json()["releases"]
            return s if s["auto_rollbacks"] >= 1 else None

        stats = wait_for(rolled_back, 60, "the automatic rollback")
        last = stats["last_auto_rollback"]
        assert (
            last["key_id"] == "auto" and last["estimates"]["restored"] == promoted["from_version"]
        )
        assert last["estimates"]["window_mean"] < bound
        wait_for(
            lambda: (
                http.get(f"{released.base_url}/healthz").json()["policy_version"]
                >= last["to_version"]
            ),
            30,
            "gateways on the rollback",
        )
        policy = http.get("/policies/current").json()
        assert policy["version"] >= last["to_version"] and policy["learner"] == "fixed"
        counts = _traffic(http, 30, good, seed=3)
        assert counts.get(LIVE, 0) > counts.get(BETTER, 0)  # `small` again
        metrics = httpx.get(f"{released.base_url}/metrics").text
        assert "banditctl_policy_auto_rollbacks_total 1.0" in metrics
        print(
            f"\nshadow of fixed:{BETTER} over {est['n']} decisions: DR {est['dr']['value']:.3f} "
            f"{[round(v, 3) for v in est['dr']['ci95']]}, live {est['live']['value']:.3f} "
            f"{[round(v, 3) for v in est['live']['ci95']]}; promoted as v{promoted['version']}; "
            f"regression window mean {last['estimates']['window_mean']:.3f} < bound {bound:.3f}: "
            f"v{last['to_version']} restores v{promoted['from_version']}"
        )
        panel = http.get("/policies/releases?candidates=true").json()
        assert panel["summary"]["auto_rollbacks"] == 1
        assert [x["action"] for x in panel["releases"]][:2] == ["rollback", "promote"]
