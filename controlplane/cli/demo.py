"""The demo: its bundled scenario, its traffic and its simulated users.

:func:`demo_config` is the scenario: every model of a routing data set on a
replay backend. Requests go through the official ``openai`` client to the
gateway; each answer's recorded quality (from the replay data set, for the arm
that served it) comes back as user feedback through ``POST /v1/feedback`` with
the answer's feedback token. ``feedback_rate`` of the users answer; the rest are
credited by the objective's missing-quality rule after the feedback window.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from controlplane.config import BanditConfig, ReplayConfig, parse_config
from controlplane.settings import Settings
from learners.datasets import RoutingDataset


def demo_config(dataset: str = "synthetic", **overrides: Any) -> BanditConfig:
    """The bundled scenario: every model of a routing data set on a replay backend.

    ``dataset``: "synthetic" (the code-generated scenario of
    ``learners.replay.synthetic``) or a data set path.
    """
    from learners.replay.dataset import dataset_for

    replay = ReplayConfig(dataset=dataset)
    ds = dataset_for(replay.dataset, replay.synthetic_rows, replay.seed)
    tasks = list(dict.fromkeys(str(t) for t in ds.tasks))[:8]
    data: dict[str, Any] = {
        "arms": [{"name": _arm_name(m), "model": m, "backend": "replay"} for m in ds.models],
        "learner": {"kind": "linucb", "alpha": 0.3},
        "featurizer": {"dim": 64, "tasks": tasks},
        "objective": {"weights": {"quality": 1.0, "cost_usd": -30.0}, "feedback_window_s": 30.0},
        "replay": replay.model_dump(),
        # a short run: publish and pick up policies often, so that it learns while it serves
        "learner_service": {
            "snapshot_every_events": 50,
            "snapshot_every_s": 0.5,
            "snapshot_min_change": 0.0,
            "min_snapshot_interval_s": 0.5,
        },
        "gateway": {"policy_refresh_s": 0.25},
        # a local demo: chat and the dashboard need no API key (a real deployment gives
        # clients chat keys and readers read keys)
        "auth": {"open_chat": True, "open_dashboard": True},
    }
    data.update(overrides)
    return parse_config(data, "<demo>")


DEMO_DATABASE = "banditctl_demo"


def demo_settings(settings: Settings, *, fresh: bool) -> Settings:
    """The demo's own database, so that a demo never continues another run's policy by
    accident nor touches ``banditctl up``'s data: ``banditctl_demo`` on the embedded
    server, or ``<database>_demo`` on ``DATABASE_URL``'s server. ``fresh``: emptied first."""
    from sqlalchemy import make_url

    from feedback.database import recreate_database

    if settings.database_url:
        url = make_url(settings.database_url)
        url = url.set(database=f"{url.database}_demo")
        demo = settings.model_copy(
            update={"database_url": url.render_as_string(hide_password=False)}
        )
    else:
        demo = settings.model_copy(update={"embedded_database": DEMO_DATABASE})
    if fresh:
        if settings.database_url:
            recreate_database(demo.database_url or "")
        else:
            with demo.database() as db:
                recreate_database(db.url)
    return demo


def _arm_name(model: str) -> str:
    return "".join(c if c.isalnum() or c in "_.:/@+-" else "-" for c in model)


@dataclass
class Served:
    row: int
    task: str
    arm: str
    policy_version: int
    request_id: str
    quality: float
    cost_usd: float
    energy_j: float
    feedback: bool


@dataclass
class TrafficResult:
    served: list[Served] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    feedback_posted: int = 0
    feedback_duplicates: int = 0
    seconds: float = 0.0
    waits: list[float] = field(default_factory=list)  # seconds waited before each wave


def require_openai() -> Any:
    """The ``openai`` module, or an error naming the extra that installs it."""
    try:
        import openai
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "the demo sends its traffic through the openai client: pip install 'banditctl[demo]'",
            name=exc.name,
        ) from exc
    return openai


def model_index(ds: RoutingDataset, arm: str, model: str) -> int:
    return ds.models.index(arm if arm in ds.models else model)


def run_traffic(
    api_url: str,
    ds: RoutingDataset,
    arm_models: dict[str, str],
    n: int,
    *,
    seed: int = 0,
    concurrency: int = 8,
    feedback_rate: float = 0.9,
    progress: Any = None,
    wave: int | None = None,
    sync_timeout_s: float = 30.0,
) -> TrafficResult:
    """Send ``n`` requests of ``ds`` (rows drawn with ``seed``) through the gateway, and
    post each answer's recorded quality as feedback for a ``feedback_rate`` share of them.

    ``wave`` unset: one stream at ``concurrency``, each answer's feedback posted as it
    comes. ``wave``: waves of that many requests, sent one after the other, then their
    feedback in order; before each wave, wait until the gateway serves a policy that has
    learned every feedback posted so far (at most ``sync_timeout_s``). Each decision then
    knows what the traffic before it taught, whatever this machine's speed, and a run
    repeats: the same seed, the same decisions (the gateway's own draws are seeded)."""
    openai = require_openai()
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(ds), size=n)
    gives_feedback = rng.random(n) < feedback_rate
    client = openai.OpenAI(base_url=api_url, api_key="demo", max_retries=2, timeout=60)
    http = httpx.Client(base_url=api_url, timeout=30)
    result = TrafficResult()
    lock = threading.Lock()
    start = time.perf_counter()

    def ask(j: int) -> tuple[dict[str, Any], int] | None:
        """Request ``j``: the answer's banditctl fields and the data set's column of the
        model that served it."""
        i = int(rows[j])
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="auto",
                messages=ds.requests[i]["messages"],
                extra_body={"metadata": {"replay_row": i, "task": str(ds.tasks[i])}},
            )
            raw.parse()  # the SDK validates the OpenAI shape
            meta: dict[str, Any] = raw.http_response.json()["banditctl"]
            return meta, model_index(ds, meta["arm"], arm_models[meta["arm"]])
        except Exception as exc:  # reported in the summary, never silently dropped
            with lock:
                result.errors.append(f"request {j}: {exc!r}"[:300])
            return None

    def answer(j: int, meta: dict[str, Any], k: int) -> None:
        """The user's feedback on answer ``j`` (when this user gives any): the recorded
        quality of model ``k``'s answer; and its record."""
        i = int(rows[j])
        q = float(ds.quality[i, k])
        fb = bool(gives_feedback[j])
        dup = False
        try:
            if fb:
                r = http.post(
                    "/feedback",
                    json={
                        "request_id": meta["request_id"],
                        "quality": q,
                        "source": "demo-user",
                        "feedback_token": meta["feedback_token"],
                    },
                )
                r.raise_for_status()
                dup = bool(r.json()["duplicate"])
        except Exception as exc:
            with lock:
                result.errors.append(f"feedback {j}: {exc!r}"[:300])
            return
        s = Served(
            i, str(ds.tasks[i]), meta["arm"], int(meta["policy_version"]), meta["request_id"], q,
            float(ds.cost_usd[i, k]), float(ds.energy_j[i, k]), fb,
        )  # fmt: skip
        with lock:
            result.served.append(s)
            result.feedback_posted += int(fb)
            result.feedback_duplicates += int(dup)

    def tick() -> None:
        if progress is not None:
            progress.update(1)
            with lock:
                if result.served:
                    progress.set_postfix(policy=result.served[-1].policy_version, refresh=False)

    if wave:
        for lo in range(0, n, wave):
            if lo:
                result.waits.append(_await_policy(http, result.feedback_posted, sync_timeout_s))
            answers = [(j, ask(j)) for j in range(lo, min(n, lo + wave))]
            for j, got in answers:
                if got is not None:
                    answer(j, *got)
                tick()
    else:

        def one(j: int) -> None:
            got = ask(j)
            if got is not None:
                answer(j, *got)
            tick()

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(one, range(n)))
    result.seconds = time.perf_counter() - start
    http.close()
    return result


def _await_policy(http: httpx.Client, feedback: int, timeout_s: float) -> float:
    """Wait until the newest policy has applied at least ``feedback`` events and the
    gateway serves it (or ``timeout_s`` passed); returns the seconds waited."""
    start = time.monotonic()
    deadline = start + timeout_s
    version = None
    while time.monotonic() < deadline:
        try:
            if version is None:
                r = http.get("/policies/current")
                if r.status_code == 200 and r.json()["events_applied"] >= feedback:
                    version = int(r.json()["version"])
                    continue
            else:
                r = http.get("/stats")
                if r.status_code == 200 and int(r.json()["policy_version"]) >= version:
                    break
        except httpx.HTTPError:
            pass  # the next poll tells
        time.sleep(0.05)
    return time.monotonic() - start


WAIT_MARKS = ("0.5", "1.0", "2.0", "5.0")  # the shares of ratings credited within these


def feedback_waits(base_url: str) -> dict[str, Any] | None:
    """How long the ratings the learner credited waited for it, read from the gateway's
    ``/metrics`` (``banditctl_learner_feedback_wait_seconds``): how many, their mean wait
    and the share credited within each of ``WAIT_MARKS`` seconds. None when the gateway
    does not answer or the learner credited no rating yet."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(f"{base_url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    name = "banditctl_learner_feedback_wait_seconds"
    got: dict[tuple[str, str | None], float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == name:
            got = {(x.name, x.labels.get("le")): float(x.value) for x in fam.samples}
    count = got.get((name + "_count", None), 0.0)
    if not count:
        return None
    return {
        "ratings": int(count),
        "mean_s": got[(name + "_sum", None)] / count,
        "within_s": {m: got.get((name + "_bucket", m), 0.0) / count for m in WAIT_MARKS},
    }


def wait_line(waits: dict[str, Any] | None) -> str | None:
    """One line of :func:`feedback_waits` for a demo's summary."""
    if not waits:
        return None
    within = ", ".join(f"{v:.0%} within {float(m):g} s" for m, v in waits["within_s"].items())
    return (
        f"ratings reached the learner: {within} (mean {waits['mean_s']:.2f} s, "
        f"{waits['ratings']} credited)"
    )


def summarize(ds: RoutingDataset, result: TrafficResult, weights: np.ndarray) -> dict[str, Any]:
    """Traffic share per arm and task; quality, cost, energy against the best fixed model."""
    served = result.served
    if not served:
        return {"served": 0}
    rows = np.array([s.row for s in served])
    rewards = ds.rewards()[rows]  # (n, K, 4)
    fixed = (rewards @ weights).mean(axis=0)  # mean objective per model on the rows served
    best = int(np.argmax(fixed))
    q = np.array([s.quality for s in served])
    cost = np.array([s.cost_usd for s in served])
    energy = np.array([s.energy_j for s in served])
    reward = q * weights[0] + energy * weights[1] + cost * weights[3]
    half = len(served) // 2
    objective = ds.rewards() @ weights  # (rows, K)
    tasks = np.array([s.task for s in served])
    best_by_task = {  # the per-task best model in hindsight, on the rows served
        t: ds.models[int(np.argmax(objective[rows[tasks == t]].mean(axis=0)))]
        for t in sorted(set(tasks))
    }
    second = served[half:]
    overall = [s.arm for s in served]
    return {
        "served": len(served),
        "traffic_share": {a: overall.count(a) / len(overall) for a in sorted(set(overall))},
        "traffic_share_by_task": _share_by_task(served),
        "traffic_share_by_task_second_half": _share_by_task(second),
        "best_arm_by_task": best_by_task,
        "best_arm_share_second_half": float(
            np.mean([ds.models.index(best_by_task[s.task]) == _model_index(ds, s) for s in second])
        ),
        "mean_reward": float(reward.mean()),
        "mean_reward_first_half": float(reward[:half].mean()) if half else None,
        "mean_reward_second_half": float(reward[half:].mean()),
        "mean_quality": float(q.mean()),
        "mean_cost_usd": float(cost.mean()),
        "mean_energy_j": float(energy.mean()),
        "best_model": ds.models[best],
        "best_model_mean_reward": float(fixed[best]),
        "best_model_mean_quality": float(ds.quality[rows, best].mean()),
        "best_model_mean_cost_usd": float(ds.cost_usd[rows, best].mean()),
        "best_model_mean_energy_j": float(ds.energy_j[rows, best].mean()),
        "cost_saved_vs_best_pct": float(
            100 * (1 - cost.mean() / max(ds.cost_usd[rows, best].mean(), 1e-12))
        ),
        "energy_saved_vs_best_pct": float(
            100 * (1 - energy.mean() / max(ds.energy_j[rows, best].mean(), 1e-12))
        ),
    }


def _share_by_task(served: list[Served]) -> dict[str, dict[str, float]]:
    by_task: dict[str, list[str]] = defaultdict(list)
    for s in served:
        by_task[s.task].append(s.arm)
    return {
        task: {arm: arms.count(arm) / len(arms) for arm in sorted(set(arms))}
        for task, arms in sorted(by_task.items())
    }


def _model_index(ds: RoutingDataset, s: Served) -> int:
    """The data set's column of the model that served ``s`` (arm names are model names
    made safe for the config: see :func:`_arm_name`)."""
    names = [_arm_name(m) for m in ds.models]
    return names.index(s.arm) if s.arm in names else -1
