"""The demo a newcomer runs first: each seed starts from a fresh policy and learns, as it
serves, the per-task routing its scenario implies (a subprocess, its own local Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, make_url, text

from tests.ray_fixtures import _free_port

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_demo_learns_the_per_task_routing_from_a_fresh_policy_each_seed(pg_server, tmp_path):
    url = pg_server.create_database("banditctl_demo_test")
    out = tmp_path / "demo.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(DATABASE_URL=url, BANDITCTL_DATA_DIR=str(tmp_path / "data"))
    cmd = [sys.executable, "-m", "controlplane.cli", "demo", "--requests", "300", "--seeds", "2",
           "--port", str(_free_port()), "--json", str(out)]  # fmt: skip
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    finally:  # the demo's own database, beside the one it was given
        demo_db = make_url(url).database + "_demo"
        admin = create_engine(pg_server.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{demo_db}" WITH (FORCE)'))
        admin.dispose()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert [r["seed"] for r in runs] == [0, 1]
    for run in runs:
        s = run["summary"]
        print(f"\nseed {run['seed']}: first half {s['mean_reward_first_half']:.3f}, second half "
              f"{s['mean_reward_second_half']:.3f}, {s['traffic_share_by_task_second_half']}")  # fmt: skip
        # a fresh policy each seed: the run's own decisions are all the database holds
        assert run["database_totals"]["decisions"] == run["served"] == 300
        assert s["mean_reward_second_half"] > s["mean_reward_first_half"]
        # code -> coder, math -> mathy, trivia -> large: each task's best arm in hindsight
        # takes the largest share of the second half
        assert s["best_arm_by_task"] == {"code": "coder", "math": "mathy", "trivia": "large"}
        for task, best in s["best_arm_by_task"].items():
            shares = s["traffic_share_by_task_second_half"][task]
            assert max(shares, key=shares.get) == best, (task, shares)
    assert "seeds" in done.stdout and "second half" in done.stdout
