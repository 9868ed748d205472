"""A real two-node Ray cluster on this machine, deployed the way the README's "Deploying
onto a Ray cluster" section says, shell by shell: ``banditctl db upgrade`` and
``banditctl serve-config`` in the deploy shell; ``ray start --head`` and ``ray start
--address`` in shells that export the database URL, the feedback secret, the API keys and
the Ray token (token auth on, the token passed, never disabled); ``serve deploy``,
``serve status``, ``curl /healthz`` and ``banditctl status`` against the head.

Placement is proven by custom resources: the head advertises ``head`` and one ``slot``,
the worker one ``slot``; the gateway, the learner and three pools need ``head``, and
``pool-large`` runs two replicas of one ``slot`` each, so one lands on each node.

Then, in order (each test builds on the one before): traffic and feedback through both
nodes' proxies move the policy and the dashboard reads it; the worker's raylet is
SIGKILLed while traffic flows, serving goes on through the head, and the lost replica
comes back when the node returns; a new config version is rolled out with ``serve
deploy`` while traffic flows, losing no request; finally every request that was answered
has its decision and outcome rows, every rated one was credited exactly once, and the
newest snapshot accounts for exactly the events under its watermark.

Bounded: each test has a hard timeout; every process started is stopped by its node's
temp dir, also on failure; its logs are kept on a failure (or with BANDITCTL_CLUSTER_KEEP=1).
Figures are printed (``-s``) and kept in ``FIGURES``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import create_engine, text

from tests.cluster.nodes import BIN, RAN, Node, free_ports, new_token, run
from tests.cluster.traffic import Sent, Traffic, summary
from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.cluster]

SAMPLE = REPO_ROOT / "examples" / "banditctl.yaml"
APP = "banditctl"
HEAD_ONLY = ["Gateway", "LearnerService", "pool-small", "pool-coder", "pool-mathy"]
SPREAD = "pool-large"
FIGURES: dict[str, Any] = {}


@dataclass
class Cluster:
    root: Path
    db_url: str
    deploy_env: dict[str, str]  # the deploy shell's: DATABASE_URL and the Ray token
    node_env: dict[str, str]  # every node's shell (step 2)
    head: Node
    worker: Node
    http_port: int
    worker_http_port: int
    app_key: str
    admin_key: str
    token: str
    serve_yaml: Path
    traffic: Traffic | None = None
    engine: Any = None
    timings: dict[str, float] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)  # phase -> time.monotonic()

    @property
    def head_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def worker_url(self) -> str:
        return f"http://127.0.0.1:{self.worker_http_port}"

    def serve_apps(self) -> dict[str, Any]:
        """The dashboard's Serve view (``serve status`` reads the same), with the token."""
        r = httpx.get(
            self.head.dashboard_url + "/api/serve/applications/",
            headers={"authorization": f"Bearer {self.token}"},
            timeout=10,
        )
        r.raise_for_status()
        apps: dict[str, Any] = r.json().get("applications") or {}
        return apps

    def replicas(self) -> dict[str, list[dict[str, Any]]]:
        """Per deployment, its RUNNING replicas with ``where``: head or worker (by pid)."""
        app = self.serve_apps().get(APP) or {}
        head_pids = {p.pid for p in self.head.processes()}
        worker_pids = {p.pid for p in self.worker.processes()}
        out: dict[str, list[dict[str, Any]]] = {}
        for name, dep in (app.get("deployments") or {}).items():
            running = [r for r in dep.get("replicas") or [] if r.get("state") == "RUNNING"]
            for r in running:
                pid = r.get("pid")
                r["where"] = "head" if pid in head_pids else "worker" if pid in worker_pids else "?"
            out[name] = running
        return out

    def app_status(self) -> str | None:
        app = self.serve_apps().get(APP)
        return None if app is None else str(app.get("status"))

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params))


def wait_for(pred: Any, timeout: float, what: str, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def _healthy(url: str) -> bool:
    r = httpx.get(url + "/healthz", timeout=10)
    return r.status_code == 200 and r.json().get("ok") is True


def _placed(c: Cluster) -> dict[str, list[str]] | None:
    reps = c.replicas()
    where = {name: sorted(r["where"] for r in reps.get(name, [])) for name in [*HEAD_ONLY, SPREAD]}
    ok = all(where[n] == ["head"] for n in HEAD_ONLY) and where[SPREAD] == ["head", "worker"]
    return where if ok and c.app_status() == "RUNNING" else None


def _config(root: Path) -> Path:
    """The sample config with its app key's budget raised: the sample's $5 a day is about
    what this module's few thousand requests spend (on a fast machine, it was spent before
    the rollout's traffic ended, and requests were refused with 429 ``budget_exceeded``).
    Budgets are not what this module proves; the rest of the sample is deployed as it is."""
    doc = yaml.safe_load(SAMPLE.read_text())
    assert [b["key"] for b in doc["budgets"]] == ["app"], doc["budgets"]
    doc["budgets"] = [{**doc["budgets"][0], "usd": 1000.0}]
    path = root / "banditctl.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def cluster(pg_server: Any, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="bcl-", dir="/tmp"))  # short: Ray's socket paths
    db_url = pg_server.create_database("banditctl_cluster")
    token = new_token()
    app_key, admin_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    http_port, worker_http_port = free_ports(2)
    base = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    ray_auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    deploy_env = {**base, "DATABASE_URL": db_url, **ray_auth}
    node_env = {
        "DATABASE_URL": db_url,
        "BANDITCTL_FEEDBACK_SECRET": secrets.token_urlsafe(32),
        "BANDITCTL_APP_KEY": app_key,
        "BANDITCTL_ADMIN_KEY": admin_key,
        **ray_auth,
    }
    head = Node.create("head", str(root / "h"), node_env, resources={"head": 1, "slot": 1})
    # two nodes on one machine: the worker's Serve proxy needs a port of its own
    worker_env = {**node_env, "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(worker_http_port)}
    worker = Node.create(
        "worker",
        str(root / "w"),
        worker_env,
        head_address=head.gcs_address,
        resources={"slot": 1},
    )
    c = Cluster(
        root, db_url, deploy_env, node_env, head, worker, http_port, worker_http_port,
        app_key, admin_key, token, root / "serve.yaml",
    )  # fmt: skip
    c.engine = create_engine(db_url, pool_size=2)
    try:
        t0 = time.monotonic()
        # 1. the deploy shell: the schema, then the Serve config
        run([str(BIN / "banditctl"), "db", "upgrade"], deploy_env)
        run(
            [
                str(BIN / "banditctl"), "serve-config", "--config", str(_config(root)),
                "--port", str(http_port),
                "--resources", ",".join(HEAD_ONLY) + "=head",
                "--replicas", f"{SPREAD}=2", "--resources", f"{SPREAD}=slot:1",
                "--replicas", "Gateway=1",  # on the head only; the ingress is not what runs here
                "--max-surge", f"{SPREAD}=0",  # its two replicas fill both slots
                "-o", str(c.serve_yaml),
            ],
            deploy_env,
        )  # fmt: skip
        # 2. every node's shell exports the settings, then ray start
        c.timings["head_start_s"] = head.start()
        c.timings["worker_start_s"] = worker.start()
        # 3. deploy through the head's dashboard port, with the token
        t1 = time.monotonic()
        run([str(BIN / "serve"), "deploy", str(c.serve_yaml), "--address", head.dashboard_url],
            deploy_env)  # fmt: skip
        wait_for(lambda: _placed(c), 300, "every deployment RUNNING where it is pinned", 2.0)
        c.timings["deploy_to_running_s"] = time.monotonic() - t1
        # curl /healthz on each node's proxy: a proxy starts on its own, after the app
        wait_for(lambda: all(_healthy(u) for u in (c.head_url, c.worker_url)), 180,
                 "both nodes' proxies to answer /healthz", 2.0)  # fmt: skip
        c.timings["deploy_to_proxies_ready_s"] = time.monotonic() - t1
        status = yaml.safe_load(
            run(
                [str(BIN / "serve"), "status", "--address", head.dashboard_url], deploy_env
            ).stdout  # fmt: skip
        )
        deps = status["applications"][APP]["deployments"]
        assert status["applications"][APP]["status"] == "RUNNING"
        assert all(d["status"] == "HEALTHY" for d in deps.values()), deps
        c.timings["setup_s"] = time.monotonic() - t0
        yield c
    finally:
        if c.traffic is not None:
            c.traffic.stop()
        c.engine.dispose()
        stopped = {"worker": worker.kill(), "head": head.kill()}
        left = head.processes() + worker.processes()
        FIGURES["timings"] = c.timings
        FIGURES["stopped_processes"] = stopped
        print("\ncluster figures:", json.dumps(FIGURES, indent=1, default=str))
        failed = request.session.testsfailed > 0
        if failed or os.environ.get("BANDITCTL_CLUSTER_KEEP") == "1":
            print(f"kept {root} (Ray's logs: {root}/h and {root}/w, session_latest/logs)")
        else:
            shutil.rmtree(root, ignore_errors=True)
        assert not left, f"processes of the cluster left running: {left}"


def _traffic(c: Cluster, urls: Any) -> Traffic:
    from controlplane.config import load_config
    from learners.replay.dataset import dataset_for

    r = load_config(str(SAMPLE)).replay
    ds = dataset_for(r.dataset, r.synthetic_rows, r.seed)
    return Traffic(ds, list(ds.models), c.app_key, urls, concurrency=4)


def _current_version(c: Cluster) -> int:
    r = httpx.get(c.head_url + "/v1/policies/current", timeout=10)
    r.raise_for_status()
    return int(r.json()["version"])


@pytest.mark.timeout(600)
def test_replicas_run_on_both_nodes_where_their_resources_are(cluster: Cluster) -> None:
    where = _placed(cluster)
    assert where is not None
    FIGURES["placement"] = where
    # token auth is on: the dashboard (what `serve deploy` talks to) refuses a client without it
    bare = httpx.get(cluster.head.dashboard_url + "/api/serve/applications/", timeout=10)
    assert bare.status_code == 401
    for url in (cluster.head_url, cluster.worker_url):  # both nodes' proxies reach the gateway
        body = httpx.get(url + "/healthz", timeout=10).json()
        assert body["ok"] is True and "policy_version" in body
    # banditctl status: the database, the gateway and Serve's replicas, as the README runs it
    env = {**cluster.deploy_env, "RAY_ADDRESS": cluster.head.gcs_address}
    out = run([str(BIN / "banditctl"), "status", "--url", cluster.head_url], env).stdout
    assert f"gateway ({cluster.head_url})" in out and "/healthz     : ok" in out, out
    assert "revision" in out and "not running" not in out and "unreachable" not in out, out
    assert f"{SPREAD:<20}: HEALTHY; replicas: 2 RUNNING" in out, out
    for name in HEAD_ONLY:
        assert f"{name:<20}: HEALTHY; replicas: 1 RUNNING" in out, out


@pytest.mark.timeout(300)
def test_traffic_and_feedback_through_both_proxies_move_the_policy(cluster: Cluster) -> None:
    c = cluster
    c.traffic = _traffic(c, lambda: [c.head_url, c.worker_url])
    v0 = _current_version(c)
    t0 = time.monotonic()
    sent = c.traffic.run(120)
    s = summary(sent)
    FIGURES["traffic"] = {**s, "seconds": round(time.monotonic() - t0, 1)}
    assert s["failed"] == 0, [x.error for x in sent if x.status != 200][:5]
    assert s["feedback_ok"] == 120
    assert {x.url for x in sent} == {c.head_url, c.worker_url}
    assert len(s["arms"]) >= 3  # the policy explores the arms, pool-large's on both nodes
    v1 = wait_for(lambda: (v := _current_version(c)) > v0 and v, 60, "a new policy version")
    FIGURES["policy_versions"] = [v0, v1]
    # gateways pick the version up: later answers carry it
    later = c.traffic.run(8)
    assert all(x.status == 200 for x in later) and max(x.policy_version or 0 for x in later) >= v1
    # the dashboard's API reads the same database and policy
    # (the gateway writes its log in batches: wait for the last one)
    count = "SELECT (SELECT count(*) FROM decisions), (SELECT count(*) FROM feedback)"
    wait_for(lambda: tuple(c.rows(count)[0]) == (128, 128), 30, "128 decisions and feedback rows")
    headers = {"authorization": f"Bearer {c.admin_key}"}
    o = httpx.get(c.head_url + "/v1/dashboard/overview", headers=headers, timeout=30).json()
    assert o["requests"] == 128 and o["feedback"] == 128
    assert o["gateway"]["policy_version"] >= v1
    page = httpx.get(c.worker_url + "/dashboard", timeout=30)
    assert page.status_code == 200 and "<html" in page.text.lower()


@pytest.mark.timeout(600)
def test_a_killed_worker_node_serving_goes_on_and_its_replica_returns(cluster: Cluster) -> None:
    c = cluster
    assert c.traffic is not None
    use_worker = {"on": True}
    c.traffic.urls = lambda: [c.head_url, c.worker_url] if use_worker["on"] else [c.head_url]
    c.traffic.start()
    time.sleep(5)
    # the worker dies as a crashed machine would: SIGKILL to its raylet; traffic moves to
    # the head's proxy (a load balancer's health check would do the same)
    use_worker["on"] = False
    killed_at = c.marks["worker killed"] = time.monotonic()
    c.worker.kill_raylet()
    c.worker.kill()  # what the raylet's death left (agents, workers): the machine is gone
    # the head goes on serving every arm: pool-large's head replica takes its traffic
    wait_for(
        lambda: [r["where"] for r in c.replicas().get(SPREAD, [])] == ["head"],
        120, "the dead node's replica to leave the routing table",
    )  # fmt: skip
    settled_at = time.monotonic()
    time.sleep(10)
    during = c.traffic.since(settled_at)
    assert not c.worker.processes()  # the node is gone, all of it
    assert during and all(s.status == 200 for s in during), _failures(during)
    # the node returns (same ports, same temp dir): pool-large's second replica comes back
    returned_at = c.marks["worker restarted"] = time.monotonic()
    c.timings["worker_restart_s"] = c.worker.start()
    wait_for(lambda: _placed(c), 300, "pool-large back on both nodes", 2.0)
    c.timings["replica_restored_after_node_start_s"] = time.monotonic() - returned_at
    use_worker["on"] = True
    time.sleep(5)
    c.traffic.stop()
    after = c.traffic.since(time.monotonic() - 5)
    window = c.traffic.since(killed_at - 5)
    failed = [s for s in window if s.status != 200]
    FIGURES["node_loss"] = {
        **summary(window),
        "failed_after_kill_s": [round(s.started - killed_at, 2) for s in failed],
        "dead_replica_dropped_after_s": round(settled_at - killed_at, 1),
        "worker_urls_after_return": sum(1 for s in after if s.url == c.worker_url),
    }
    # only requests in flight on the dead node, or sent before Serve dropped its replica,
    # may fail, and each with an answer (a 5xx), never a hang
    assert all(s.status is not None and s.status >= 500 for s in failed), _failures(failed)
    assert all(s.started <= settled_at for s in failed), _failures(failed)
    assert len(failed) <= 0.2 * len(window), _failures(failed)
    assert FIGURES["node_loss"]["worker_urls_after_return"] > 0  # its proxy serves again


@pytest.mark.timeout(600)
def test_a_new_config_rolled_out_under_traffic_loses_no_request(cluster: Cluster) -> None:
    c = cluster
    assert c.traffic is not None
    doc = yaml.safe_load(c.serve_yaml.read_text())
    cfg = doc["applications"][0]["args"]["config"]
    # a new version of the config: a different exploration rate and objective window
    cfg["learner"]["alpha"] = 0.2
    cfg["objective"]["feedback_window_s"] = 240.0
    new_yaml = c.root / "serve-v2.yaml"
    new_yaml.write_text(yaml.safe_dump(doc, sort_keys=False))
    before = c.serve_apps()[APP]["deployments"]
    versions0 = {n: {r["replica_id"] for r in d["replicas"]} for n, d in before.items()}
    c.traffic.urls = lambda: [c.head_url, c.worker_url]
    c.traffic.start()
    time.sleep(3)
    t0 = c.marks["rollout started"] = time.monotonic()
    run([str(BIN / "serve"), "deploy", str(new_yaml), "--address", c.head.dashboard_url],
        c.deploy_env)  # fmt: skip

    def rolled() -> bool:
        reps = c.replicas()
        fresh = all(
            reps.get(n) and not ({r["replica_id"] for r in reps[n]} & versions0[n])
            for n in versions0
        )
        return fresh and _placed(c) is not None

    wait_for(rolled, 420, "every deployment replaced by the new version", 2.0)
    rollout_s = time.monotonic() - t0
    c.marks["rollout done"] = time.monotonic()
    time.sleep(5)
    c.traffic.stop()
    window = c.traffic.since(t0)
    FIGURES["upgrade"] = {**summary(window), "rollout_s": round(rollout_s, 1)}
    failed = [s for s in window if s.status != 200]
    fb_failed = [s for s in window if s.status == 200 and s.feedback_status != 200]
    FIGURES["upgrade"]["failures"] = [
        (round(s.started - t0, 1), s.url == c.head_url, s.error) for s in failed + fb_failed
    ]
    assert len(window) >= 20
    assert not failed and not fb_failed, FIGURES["upgrade"]["failures"]
    # what runs now is the new version's config
    deployed = c.serve_apps()[APP]["deployed_app_config"]["args"]["config"]
    assert deployed["learner"]["alpha"] == 0.2
    assert deployed["objective"]["feedback_window_s"] == 240.0


@pytest.mark.timeout(300)
def test_nothing_is_lost_and_every_event_is_credited_once(cluster: Cluster) -> None:
    c = cluster
    assert c.traffic is not None
    sent = c.traffic.sent
    answered = [s for s in sent if s.status is not None]
    ids = {s.request_id for s in answered if s.request_id}
    # every answer (200 or a 5xx from the gateway) names its request; each has both rows
    gateway_answers = [s for s in answered if s.status == 200 or s.request_id]
    assert len(ids) == len(gateway_answers)
    assert not [s.error for s in answered if s.error and "x-banditctl-request-id" in s.error]

    def read() -> dict[str, tuple[Any, Any]]:
        return {
            str(r[0]): (r[1], r[2])
            for r in c.rows(
                "SELECT d.request_id, o.status, d.credit_seq FROM decisions d "
                "LEFT JOIN outcomes o ON o.request_id = d.request_id"
            )
        }

    # the gateway writes its log in batches, a fraction of a second after the answers:
    # wait (bounded) for the last batch, then name what is still missing
    with contextlib.suppress(AssertionError):
        wait_for(lambda: all(read().get(i, (None,))[0] for i in ids), 30, "the last log batch")
    rows = read()
    missing = [i for i in ids if i not in rows or rows[i][0] is None]
    by_id = {s.request_id: s for s in answered}

    def where(i: str) -> str:
        s, lost = by_id[i], "decision" if i not in rows else "outcome"
        phases = [p for p, t in c.marks.items() if t <= s.started]
        return f"{i}: no {lost} row; HTTP {s.status} via {s.url}, sent after {phases or 'none'}"

    assert not missing, [where(i) for i in missing]
    for s in answered:
        if s.request_id:
            assert rows[s.request_id][0] == ("ok" if s.status == 200 else "error")

    # every rated decision (and every failed one) is credited, each with its own seq
    def pending() -> int:
        (n,) = c.rows(
            "SELECT count(*) FROM decisions d JOIN outcomes o USING (request_id) "
            "WHERE d.credit_seq IS NULL AND (o.status <> 'ok' OR EXISTS "
            "(SELECT 1 FROM feedback f WHERE f.request_id = d.request_id))"
        )[0]
        return int(n)

    wait_for(lambda: pending() == 0, 120, "the learner to credit every ready event")
    (credited, distinct) = c.rows(
        "SELECT count(credit_seq), count(DISTINCT credit_seq) FROM decisions"
    )[0]
    (rated,) = c.rows(
        "SELECT count(*) FROM decisions d JOIN outcomes o USING (request_id) "
        "WHERE o.status <> 'ok' OR EXISTS (SELECT 1 FROM feedback f WHERE f.request_id = d.request_id)"
    )[0]
    assert credited == distinct == rated
    # the newest snapshot accounts for exactly the events at or under its watermark
    wm, applied, version = c.rows(
        "SELECT watermark, events_applied, version FROM policy_snapshots "
        "ORDER BY version DESC LIMIT 1"
    )[0]
    (under,) = c.rows("SELECT count(*) FROM decisions WHERE credit_seq <= :wm", wm=wm)[0]
    assert applied == under
    FIGURES["database"] = {
        "decisions": len(rows), "credited": credited, "snapshot_version": version,
        "snapshot_events_applied": applied,
    }  # fmt: skip


def readme_block() -> list[str]:
    """The README's cluster steps: the first indented block under "Deploying onto a Ray
    cluster" (blank lines inside it included), continuation lines joined."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## Deploying onto a Ray cluster", 1)[1].split("\n## ", 1)[0]
    block: list[str] = []
    for line in section.splitlines():
        if line.startswith("    "):
            block.append(line.strip())
        elif block and line.strip():
            break
    return _join(block)


def _join(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        if out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1] + " " + line
        else:
            out.append(line)
    return out


def readme_steps() -> list[list[str]]:
    """The block's commands, without comments, ``export`` lines and leading VAR=value."""
    steps = []
    for line in readme_block():
        words = line.split("#", 1)[0].split()
        while words and "=" in words[0] and not words[0].startswith("-"):
            words.pop(0)
        if words and words[0] != "export":
            steps.append(words)
    return steps


def _flags(argv: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in argv if a.startswith("-")}


@pytest.mark.usefixtures("cluster")
def test_the_readme_steps_are_the_commands_this_test_ran() -> None:
    """Each command of the README's cluster block was run here, with (at least) the flags
    the README gives it; and nothing in the block disables Ray's token auth."""
    steps = readme_steps()
    assert len(steps) >= 8
    ran = [[Path(argv[0]).name, *argv[1:]] for argv in RAN]
    for step in steps:
        prog, sub = step[0], step[1] if len(step) > 1 else ""
        if prog == "curl":  # the test's httpx GET of /healthz on each proxy
            assert step[-1].endswith("/healthz")
            continue
        same = [argv for argv in ran if argv[:2] == [prog, sub]]
        assert same, f"the README's `{' '.join(step)}` was not run by the test"
        assert any(_flags(step) <= _flags(argv) for argv in same), (
            f"the README's `{' '.join(step)}` uses flags the test never ran with: "
            f"{sorted(_flags(step) - set().union(*(_flags(a) for a in same)))}"
        )
    block = "\n".join(readme_block())
    assert "RAY_AUTH_MODE=token" in block and "disabled" not in block


def _failures(sent: list[Sent]) -> list[str]:
    return [f"{s.status} {s.url} {s.error}" for s in sent if s.status != 200][:8]
