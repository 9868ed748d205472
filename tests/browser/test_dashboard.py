"""The dashboard in headless Chromium (Debian's package) against a deployed control plane.

Real deployment (Ray Serve + Postgres): the empty state, then demo traffic and
feedback through the HTTP API; the figures on the page must equal the API's;
"try a prompt"; rollback refused without the admin scope, accepted with it.
One arm and 50 arms: the same page with the policy/overview/residency answers
replaced through Playwright's route interception (deploying 50 arms adds
nothing the page would see differently). Screenshots go to docs/screenshots/.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import subprocess
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ray_fixtures import ADMIN_KEY, FEEDBACK_KEY, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
REQUESTS = 240


def _ensure_chromium() -> None:
    if os.path.exists(CHROMIUM):
        return
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, check=False,
                       timeout=600)  # fmt: skip
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent and could not be installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _ensure_chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    p = ctx.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    yield p
    ctx.close()
    assert not errors, f"JavaScript errors: {errors}"


@pytest.fixture(scope="module")
def api(deployed) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=deployed.base_url, timeout=30) as c:
        yield c


def _open(page, base_url: str, min_refresh: int = 1) -> None:
    page.goto(base_url + "/dashboard")
    page.wait_for_function(f"Number(document.body.dataset.refreshed || 0) >= {min_refresh}")


def _settled_refresh(page) -> None:
    """Wait for the next complete refresh (the data behind it is quiescent)."""
    n = int(page.evaluate("Number(document.body.dataset.refreshed || 0)"))
    page.wait_for_function(f"Number(document.body.dataset.refreshed || 0) > {n}", timeout=15000)


def _shot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def _text(page, selector: str) -> str:
    return page.locator(selector).first.inner_text().strip()


def _num(page, selector: str) -> float | None:
    v = page.locator(selector).first.get_attribute("data-value")
    return None if v is None else float(v)


# the page's formatting (dashboard.js), for the API's numbers: Number.toFixed rounds
# the exact binary value half away from zero (Python's format rounds half to even)
def _fixed(v: float | None, d: int) -> str:
    if v is None:
        return "–"
    return str(Decimal(v).quantize(Decimal(1).scaleb(-d), rounding=ROUND_HALF_UP))


def _int(v: float | None) -> str:
    return "–" if v is None else f"{math.floor(v + 0.5):,}"  # Math.round


def _pct(v: float | None) -> str:
    return "–" if v is None else _fixed(v * 100, 1) + "%"


_wait = functools.partial(wait_for, timeout=60.0)


# ---------------------------------------------------------------- real deployment


@pytest.mark.usefixtures("api")
def test_empty_dashboard(deployed, page):
    _open(page, deployed.base_url)
    assert _text(page, '[data-metric="requests"]') == "0"
    assert _text(page, '[data-metric="mean_reward"]') == "–"
    assert page.locator("#arms-empty").is_visible()
    assert page.locator("#feedback-empty").is_visible()
    assert page.locator("#residency-empty").is_visible()
    assert page.locator("#learning-empty").is_visible()
    assert not page.locator("#banner").is_visible()
    _shot(page, "dashboard-empty.png")


@pytest.fixture(scope="module")
def traffic(deployed, api):
    from controlplane.cli.demo import run_traffic
    from learners.replay.dataset import dataset_for

    r = deployed.config.replay
    ds = dataset_for(r.dataset, r.synthetic_rows, r.seed)
    arm_models = {a.name: a.model for a in deployed.config.arms}
    result = run_traffic(deployed.api_url, ds, arm_models, REQUESTS, seed=1, concurrency=8)
    assert not result.errors, result.errors[:3]

    def caught_up() -> bool:
        o = api.get("/v1/dashboard/overview").json()
        return (
            o["answered"] == REQUESTS
            and o["learner_lag"]["events_behind"] == 0
            and o["learner"]["events_applied"] == result.feedback_posted
        )

    _wait(caught_up, what="the learner to credit all rated answers")
    return result


def test_figures_shown_equal_the_api(deployed, api, page, traffic):
    _open(page, deployed.base_url)
    _settled_refresh(page)
    o = api.get("/v1/dashboard/overview").json()
    assert o["requests"] == REQUESTS and o["feedback"] == traffic.feedback_posted
    assert _text(page, '[data-metric="requests"]') == _int(o["requests"])
    assert _num(page, '[data-metric="mean_reward"]') == o["mean_reward"]
    assert _text(page, '[data-metric="mean_reward"]') == _fixed(o["mean_reward"], 3)
    assert _num(page, '[data-metric="cost_saved_pct"]') == o["cost_saved_pct"]
    assert _text(page, '[data-metric="cost_saved_pct"]') == _fixed(o["cost_saved_pct"], 1) + "%"
    assert _num(page, '[data-metric="energy_saved_pct"]') == o["energy_saved_pct"]
    assert _text(page, '[data-metric="exploration"]') == _pct(o["exploration"]["rate"])
    assert _text(page, '[data-metric="lag_events"]') == "0 events"
    assert _text(page, '[data-metric="policy_version"]') == f"v{o['learner']['version']}"
    assert o["best_arm"] in _text(page, '[data-metric="cost-note"]')

    cur = api.get("/v1/policies/current").json()
    rows = page.locator("#arms-body tr")
    assert rows.count() == len(cur["arms"]) == len(deployed.config.arms)
    for name, a in cur["arms"].items():
        row = f'#arms-body tr[data-arm="{name}"]'
        cells = page.locator(f"{row} td")
        assert cells.nth(1).inner_text() == _int(a["pulls"])
        assert _num(page, f"{row} td:nth-child(3)") == a["traffic_share"]
        assert _pct(a["traffic_share"]) in cells.nth(2).inner_text()
        assert cells.nth(3).inner_text() == _fixed(a["mean_quality"], 3)
        assert cells.nth(4).inner_text() == _fixed(a["mean_energy_j"], 2)
        assert cells.nth(5).inner_text() == _fixed(a["mean_latency_ms"], 1)
        assert cells.nth(6).inner_text() == _fixed(a["mean_cost_usd"], 6)
        assert _num(page, f"{row} td:nth-child(8)") == a["uncertainty"]
    assert sum(float(a["pulls"]) for a in cur["arms"].values()) == traffic.feedback_posted

    versions = api.get("/v1/policies").json()["versions"]
    first = page.locator("#versions-body tr").first
    assert first.get_attribute("data-version") == str(versions[0]["version"])
    assert page.locator("#versions-body tr").count() == len(versions)

    fb = api.get("/v1/dashboard/feedback").json()["items"]
    assert page.locator("#feedback-body tr").count() == len(fb) == 50
    assert _num(page, "#feedback-body tr:first-child td:nth-child(4)") == fb[0]["quality"]
    assert page.locator("#curves .curve polyline").count() == 5
    _shot(page, "dashboard.png")


@pytest.mark.usefixtures("traffic")
def test_try_a_prompt_shows_the_explain_answer(deployed, api, page):
    _open(page, deployed.base_url)
    prompt = "Prove that the square root of 2 is irrational."
    page.fill("#try-prompt", prompt)
    page.click("#try-form button")
    page.wait_for_selector("#try-table:not([hidden])")
    want = api.post(
        "/v1/route/explain",
        json={"model": "auto", "messages": [{"role": "user", "content": prompt}]},
    ).json()
    assert page.locator("#try-summary").get_attribute("data-chosen") == want["chosen"]
    assert page.locator("#try-body tr").count() == len(want["arms"])
    for a in want["arms"]:
        row = f'#try-body tr[data-arm="{a["arm"]}"]'
        assert _num(page, f"{row} td:nth-child(2)") == a["score"]
        assert page.locator(f"{row} td:nth-child(8)").inner_text()  # a reason for every arm
    assert page.locator("#try-body tr.chosen").get_attribute("data-arm") == want["chosen"]
    _shot(page, "dashboard-try.png")


@pytest.mark.usefixtures("traffic")
def test_rollback_only_with_the_admin_scope(deployed, api, page):
    _open(page, deployed.base_url)
    page.uncheck("#live")
    before = api.get("/v1/policies").json()["versions"]
    latest = before[0]["version"]
    target = 2
    button = page.locator(f'#versions-body button[data-version="{target}"]')

    for key, status in (("", "401"), (FEEDBACK_KEY, "403"), ("not-a-key", "401")):
        page.fill("#admin-key", key)
        button.click()
        page.wait_for_function(
            "document.getElementById('rollback-status').textContent.startsWith('rollback refused')"
        )
        assert status in _text(page, "#rollback-status")
    assert api.get("/v1/policies").json()["versions"][0]["version"] == latest

    page.fill("#admin-key", ADMIN_KEY)
    button.click()
    page.wait_for_function(
        "document.getElementById('rollback-status').textContent.startsWith('published')"
    )
    cur = api.get("/v1/policies/current").json()
    assert cur["version"] == latest + 1 and cur["reason"] == "rollback"
    assert f"v{cur['version']}" in _text(page, "#rollback-status")
    row = page.locator(f'#versions-body tr[data-version="{cur["version"]}"]')
    assert "rollback" in row.inner_text()
    # the learner continues from the rolled-back state; gateways pick it up
    _wait(
        lambda: (api.get("/v1/stats").json()["learner"] or {}).get("stats", {}).get("rollbacks"),
        what="the learner to adopt the rollback",
    )
    _wait(lambda: api.get("/healthz").json()["policy_version"] >= cur["version"],
          what="the gateway to load the rollback")  # fmt: skip
    metrics = api.get("/metrics").text
    assert f"banditctl_policy_version {float(cur['version'])}" in metrics
    assert "banditctl_decisions_total{arm=" in metrics
    _shot(page, "dashboard-rollback.png")


# ---------------------------------------------------------------- 1 and 50 arms (mocked answers)


def _arm(i: int, n: int) -> dict[str, Any]:
    return {
        "pulls": float(10 * (i + 1)),
        "mean_quality": 0.5 + 0.4 * i / max(n, 1),
        "mean_energy_j": 1.0 + i,
        "mean_latency_ms": 100.0 + 7 * i,
        "mean_cost_usd": 0.0001 * (i + 1),
        "uncertainty": 1.0 / (i + 1),
        "traffic_share": 1.0 / n,
        "decisions": 10.0,
    }


def _mock(page, n_arms: int) -> dict[str, Any]:
    arms = {f"m{i}-with-a-rather-long-arm-name:adapter-{i}": _arm(i, n_arms) for i in range(n_arms)}
    policy = {"version": 9, "learner": "linucb", "created_at": "2025-01-01T00:00:00+00:00",
              "watermark": 5, "events_applied": 5, "reason": "update", "objective": None,
              "arms": arms}  # fmt: skip
    residency = {
        "replicas": [
            {"replica": f"pool-m#{r}", "epochs": [
                {"epoch": e, "adapters": [f"adapter-{(e + r) % n_arms}"], "started_at": None,
                 "ended_at": None, "status": "applied", "page_ins": 1, "hits": e, "misses": 2,
                 "hit_rate": e / (e + 2)} for e in range(1, 13)]}
            for r in range(2)
        ],
        "totals": [{"replica": f"pool-m#{r}", "epochs": 12, "page_ins": 12, "hits": 78,
                    "misses": 24, "hit_rate": 78 / 102} for r in range(2)],
    }  # fmt: skip

    def answer(body: Any):
        return lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(body)
        )

    page.route("**/v1/policies/current", answer(policy))
    page.route("**/v1/dashboard/residency*", answer(residency))
    return policy


@pytest.mark.parametrize("n_arms", [1, 50])
@pytest.mark.usefixtures("traffic")
def test_one_and_fifty_arms_render(deployed, page, n_arms):
    policy = _mock(page, n_arms)
    _open(page, deployed.base_url)
    assert page.locator("#arms-body tr").count() == n_arms
    assert not page.locator("#arms-empty").is_visible()
    last = list(policy["arms"])[-1]
    assert (
        _num(page, f'#arms-body tr[data-arm="{last}"] td:nth-child(8)')
        == (policy["arms"][last]["uncertainty"])
    )
    # the arms table scrolls inside its card; the page never scrolls sideways
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    box = page.locator("#arms .scroll").bounding_box()
    assert box is not None and box["height"] <= 440
    assert page.locator("#residency-body .resgrid .cell").count() == 2 * 12
    assert not page.locator("#residency-empty").is_visible()
    _shot(page, f"dashboard-{n_arms}-arms.png")
