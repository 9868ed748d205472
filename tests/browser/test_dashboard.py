"""The dashboard in headless Chromium (Debian's package) against a deployed control plane.

Real deployment (Ray Serve + Postgres): the empty state, then demo traffic and
feedback through the HTTP API; the figures on the page (cards with the baseline
arm's name, the routing per task, the arms with their intervals, the charts) must
equal the API's for the window shown, and every window of the selector asks the
API for that window; "try a prompt"; rollback refused without the admin scope,
accepted with it. One arm and 50 arms: the same page with the overview, routing
and residency answers replaced through Playwright's route interception (deploying
50 arms adds nothing the page would see differently). Screenshots go to
docs/screenshots/.
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


def _pct(v: float | None, d: int = 1) -> str:
    return "–" if v is None else _fixed(v * 100, d) + "%"


def _pm(ci: list[float] | None, d: int) -> str:
    return "" if ci is None else f" ± {_fixed((ci[1] - ci[0]) / 2, d)}"


HOUR = {"window_s": 3600}


_wait = functools.partial(wait_for, timeout=60.0)


# ---------------------------------------------------------------- real deployment


@pytest.mark.usefixtures("api")
def test_empty_dashboard(deployed, page):
    _open(page, deployed.base_url)
    assert _text(page, '[data-metric="requests"]') == "0"
    assert _text(page, '[data-metric="mean_reward"]') == "–"
    assert _text(page, '[data-metric="requests-label"]') == "decisions in the last hour"
    assert _text(page, '[data-metric="cost"]') == "–"
    assert _text(page, "#baseline").startswith("Baseline: none yet")
    assert page.locator("#routing-empty").is_visible()
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
    assert page.evaluate("document.body.dataset.window") == "3600"  # the default: 1 h
    o = api.get("/v1/dashboard/overview", params=HOUR).json()
    assert o["window"]["label"] == "last hour"
    assert o["requests"] == REQUESTS and o["feedback"] == traffic.feedback_posted
    assert "the last hour" in _text(page, "#scope")
    assert _text(page, '[data-metric="requests-label"]') == "decisions in the last hour"
    assert _text(page, '[data-metric="requests"]') == _int(o["requests"])
    assert _num(page, '[data-metric="mean_reward"]') == o["mean_reward"]
    assert _text(page, '[data-metric="mean_reward"]') == _fixed(o["mean_reward"], 3)

    # one baseline, named on every card
    arm = o["baseline"]["arm"]
    assert arm == o["best_arm"]
    assert page.locator("#baseline").get_attribute("data-arm") == arm
    assert _text(page, '[data-metric="reward-note"]').startswith(f"{arm} (best arm): ")
    for key in ("cost", "energy"):
        assert _text(page, f'[data-metric="{key}-label"]') == f"{key} per answer vs {arm}"
        assert _num(page, f'[data-metric="{key}"]') == o[key]["ratio"]
        assert _text(page, f'[data-metric="{key}"]') == o[key]["figure"]
        assert not _text(page, f'[data-metric="{key}"]').startswith("-")
        assert f"({arm})" in _text(page, f'[data-metric="{key}-note"]')
    assert _text(page, '[data-metric="exploration"]') == _pct(o["exploration"]["rate"])
    assert _text(page, '[data-metric="lag_events"]') == "0 events"
    assert _text(page, '[data-metric="policy_version"]') == f"v{o['learner']['version']}"

    # arms: the window's figures, each mean with its 95% interval, and the policy's pulls
    rows = page.locator("#arms-body tr")
    assert rows.count() == len(o["arms"]) == len(deployed.config.arms)
    for a in o["arms"]:
        row = f'#arms-body tr[data-arm="{a["arm"]}"]'
        cells = page.locator(f"{row} td")
        assert cells.nth(1).inner_text() == _int(a["decisions"])
        assert _num(page, f"{row} td:nth-child(3)") == a["share"]
        assert _pct(a["share"]) in cells.nth(2).inner_text()
        want = "–" if a["mean_reward"] is None else _fixed(a["mean_reward"], 3)
        assert cells.nth(3).inner_text() == want + _pm(a["reward_ci"], 3)
        if a["reward_ci"]:
            assert _num(page, f"{row} td:nth-child(4)") == a["mean_reward"]
            low = cells.nth(3).get_attribute("data-ci-low")
            assert low is not None and float(low) == a["reward_ci"][0]
        assert cells.nth(5).inner_text() == _int(a["reward_n"])
        assert cells.nth(6).inner_text() == _fixed(a["mean_quality"], 3)
        assert cells.nth(7).inner_text() == _fixed(a["mean_energy_j"], 2)
        assert cells.nth(8).inner_text() == _fixed(a["mean_latency_ms"], 1)
        assert cells.nth(9).inner_text() == _fixed(a["mean_cost_usd"], 6)
        assert cells.nth(10).inner_text() == _int(a["policy_pulls"])
        assert ("best arm" in cells.nth(0).inner_text()) == (a["arm"] == arm)
    assert sum(a["policy_pulls"] for a in o["arms"]) == traffic.feedback_posted
    # an arm credited a few times reads as less certain than the most credited one,
    # even when its few rewards happen to agree (the interval's moderated variance)
    rated = sorted((a for a in o["arms"] if a["reward_ci"]), key=lambda a: a["reward_n"])
    if len(rated) >= 2 and rated[0]["reward_n"] <= 5 and rated[-1]["reward_n"] >= 20:
        width = [a["reward_ci"][1] - a["reward_ci"][0] for a in (rated[0], rated[-1])]
        assert width[1] < width[0]

    routing = api.get("/v1/dashboard/routing", params=HOUR).json()
    _check_routing(page, routing)
    # the baseline's own mix of tasks, beside its name
    mix = _text(page, "#baseline-mix")
    assert mix.startswith("Its decisions by task: ")
    for t in routing["tasks"]:
        served = next(c for c in t["cells"] if c["arm"] == arm)["decisions"]
        assert (f"{t['task']} " in mix) == (served > 0)

    versions = api.get("/v1/policies").json()["versions"]
    first = page.locator("#versions-body tr").first
    assert first.get_attribute("data-version") == str(versions[0]["version"])
    assert page.locator("#versions-body tr").count() == len(versions)  # all within the hour

    fb = api.get("/v1/dashboard/feedback", params=HOUR).json()["items"]
    assert page.locator("#feedback-body tr").count() == len(fb) == 50
    assert _num(page, "#feedback-body tr:first-child td:nth-child(4)") == fb[0]["quality"]

    # charts: reward and four components, each with tick labels, axis titles, a legend
    # naming the baseline arm, and a hover title per time slice
    lc = api.get("/v1/dashboard/learning", params=HOUR).json()["buckets"]
    assert sum(b["n"] for b in lc) == REQUESTS
    assert page.locator("#learning polyline").count() == 5
    reward = page.locator('[data-curve="reward"]')
    assert arm in reward.locator(".legend").inner_text()
    assert reward.locator("rect.hover").count() == len(lc)
    first_title = reward.locator("rect.hover title").first.text_content() or ""
    assert f"{_int(lc[0]['n'])} decisions" in first_title
    assert _fixed(lc[0]["reward"], 3) in first_title
    assert "reward (objective)" in reward.locator("svg").text_content()
    assert reward.locator("svg text").count() >= 8  # tick labels on both axes
    share = page.locator('[data-curve="share"]')
    assert share.locator(".legend span").count() >= len(deployed.config.arms)
    assert share.locator("rect title").count() > 0
    box = reward.locator("svg").bounding_box()
    assert box is not None and box["width"] >= 1000  # full width on a laptop screen
    _shot(page, "dashboard.png")


def _check_routing(page, r: dict[str, Any]) -> None:
    """The task x arm table shows the routing answer: shares, estimates, the preferred arm."""
    tasks = r["tasks"]
    assert page.locator("#routing-body tr").count() == len(tasks)
    assert [
        page.locator("#routing-head th").nth(2 + i).inner_text() for i in range(len(r["arms"]))
    ] == r["arms"]
    for t in tasks:
        row = f'#routing-body tr[data-task="{t["task"]}"]'
        assert page.locator(row).get_attribute("data-preferred") == t["preferred"]
        assert page.locator(f"{row} td.preferred").get_attribute("data-arm") == t["preferred"]
        assert page.locator(f"{row} td.preferred").count() == 1
        for c in t["cells"]:
            cell = page.locator(f'{row} td.cell[data-arm="{c["arm"]}"]')
            assert float(cell.get_attribute("data-share") or "nan") == c["share"]
            assert _pct(c["share"], 0) in cell.locator(".pct").inner_text()
            est = cell.locator(".est").inner_text()
            if c["estimate"] is None:
                assert est == "–"
            else:
                assert float(cell.get_attribute("data-estimate") or "nan") == c["estimate"]
                assert est == _fixed(c["estimate"], 3) + _pm(c["estimate_ci"], 3)
        best = t["best_observed"]
        assert page.locator(f"{row} td.best-observed").inner_text() == (
            f"[{best}]" if best else "–"
        )


@pytest.mark.usefixtures("traffic")
def test_routing_per_task_shows_the_learned_routing(deployed, api, page):
    _open(page, deployed.base_url, min_refresh=2)
    r = api.get("/v1/dashboard/routing", params=HOUR).json()
    assert r["decisions"] == REQUESTS and not r["capped"]
    assert sum(t["decisions"] for t in r["tasks"]) == REQUESTS
    ds_tasks = set(deployed.config.featurizer.tasks)
    assert {t["task"] for t in r["tasks"]} == ds_tasks  # the traffic labels every request
    for t in r["tasks"]:
        # the policy prefers an arm it has served this task, and its estimate is the highest
        cells = {c["arm"]: c for c in t["cells"]}
        assert cells[t["preferred"]]["decisions"] > 0
        assert cells[t["preferred"]]["estimate"] == max(c["estimate"] for c in t["cells"])
    _check_routing(page, r)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.locator("#routing").screenshot(path=str(SHOTS / "dashboard-routing.png"))


@pytest.mark.usefixtures("traffic")
def test_every_window_asks_the_api_for_that_window(deployed, api, page):
    urls: list[str] = []
    page.on("request", lambda req: urls.append(req.url))
    _open(page, deployed.base_url)
    page.uncheck("#live")  # only the clicks refresh
    for key, seconds, label, noun in (
        ("300", 300, "last 5 min", "decisions in the last 5 min"),
        ("86400", 86400, "last 24 h", "decisions in the last 24 h"),
        ("all", None, "all time", "decisions, all time"),
        ("3600", 3600, "last hour", "decisions in the last hour"),
    ):
        urls.clear()
        n = int(page.evaluate("Number(document.body.dataset.refreshed || 0)"))
        page.click(f'.windows button[data-window="{key}"]')
        page.wait_for_function(
            f"document.body.dataset.window === '{key}' && "
            f"Number(document.body.dataset.refreshed || 0) > {n}"
        )
        assert page.locator(".windows button.on").get_attribute("data-window") == key
        asked = [u for u in urls if "/v1/dashboard/" in u]
        assert {u.split("/v1/dashboard/")[1].split("?")[0] for u in asked} >= {
            "overview", "routing", "learning", "residency", "feedback"
        }  # fmt: skip
        for u in asked:
            assert (f"window_s={seconds}" in u) if seconds else ("window_s" not in u), u
        params = {} if seconds is None else {"window_s": seconds}
        o = api.get("/v1/dashboard/overview", params=params).json()
        assert o["window"]["label"] == label
        assert _text(page, '[data-metric="requests-label"]') == noun
        assert _text(page, '[data-metric="requests"]') == _int(o["requests"])
        assert label in _text(page, "#scope") and label in _text(page, "#routing h2")
        assert page.evaluate("location.hash") == f"#window={key}"
        if key == "300":
            _shot(page, "dashboard-window-5min.png")
    # the window survives a reload
    page.goto(deployed.base_url + "/dashboard#window=all")
    page.wait_for_function("document.body.dataset.window === 'all'")
    assert "all time" in _text(page, "#scope")


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
    mean = 0.5 + 0.4 * i / max(n, 1)
    half = 1.0 / (i + 2)
    return {
        "arm": f"m{i}-with-a-rather-long-arm-name:adapter-{i}",
        "decisions": 10 * (i + 1),
        "ok": 10 * (i + 1),
        "errors": 0,
        "rewarded": 10 * (i + 1),
        "reward_n": 10 * (i + 1),
        "mean_reward": mean,
        "reward_sd": 0.3,
        "reward_ci": [mean - half, mean + half],
        "mean_quality": mean,
        "mean_energy_j": 1.0 + i,
        "mean_latency_ms": 100.0 + 7 * i,
        "mean_cost_usd": 0.0001 * (i + 1),
        "total_cost_usd": 0.001 * (i + 1) ** 2,
        "total_energy_j": 10.0 * (i + 1) * (1 + i),
        "share": 1.0 / n,
        "policy_pulls": float(10 * (i + 1)),
        "baseline": i == n - 1,
    }


def _mock(page, api, n_arms: int) -> dict[str, Any]:
    arms = [_arm(i, n_arms) for i in range(n_arms)]
    names = [a["arm"] for a in arms]
    ov = api.get("/v1/dashboard/overview", params=HOUR).json()
    ov["arms"] = arms
    ov["baseline"] = {**arms[-1], "rule": "the best"}
    routing = api.get("/v1/dashboard/routing", params=HOUR).json()
    routing["arms"] = names
    routing["tasks"] = [
        {"task": task, "decisions": 100, "credited": 90, "contexts": 100,
         "preferred": names[k % n_arms], "preferred_by": "estimate",
         "best_observed": names[k % n_arms],
         "cells": [{"arm": a, "decisions": 100 // n_arms, "share": 1.0 / n_arms, "reward_n": 5,
                    "mean_reward": 0.5, "reward_ci": [0.3, 0.7], "estimate": 0.5 + 0.01 * i,
                    "estimate_ci": [0.4, 0.6], "width": 0.1} for i, a in enumerate(names)]}
        for k, task in enumerate(["code", "math", "trivia", "(none)"])
    ]  # fmt: skip
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

    page.route("**/v1/dashboard/overview*", answer(ov))
    page.route("**/v1/dashboard/routing*", answer(routing))
    page.route("**/v1/dashboard/residency*", answer(residency))
    return {"overview": ov, "routing": routing}


@pytest.mark.parametrize("n_arms", [1, 50])
@pytest.mark.usefixtures("traffic")
def test_one_and_fifty_arms_render(deployed, api, page, n_arms):
    mocked = _mock(page, api, n_arms)
    _open(page, deployed.base_url)
    assert page.locator("#arms-body tr").count() == n_arms
    assert not page.locator("#arms-empty").is_visible()
    last = mocked["overview"]["arms"][-1]
    row = f'#arms-body tr[data-arm="{last["arm"]}"]'
    assert _num(page, f"{row} td:nth-child(4)") == last["mean_reward"]
    assert "best arm" in page.locator(f"{row} td").first.inner_text()
    assert page.locator("#routing-body tr").count() == 4
    assert page.locator("#routing-body tr").first.locator("td.cell").count() == n_arms
    _check_routing(page, mocked["routing"])
    # the tables scroll inside their cards; the page never scrolls sideways
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    for card in ("#arms", "#routing"):
        box = page.locator(f"{card} .scroll").bounding_box()
        assert box is not None and box["height"] <= 440 and box["width"] <= 1280
    assert page.locator("#residency-body .resgrid .cell").count() == 2 * 12
    assert not page.locator("#residency-empty").is_visible()
    _shot(page, f"dashboard-{n_arms}-arms.png")
