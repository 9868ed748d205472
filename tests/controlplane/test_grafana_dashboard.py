"""The Grafana dashboard (``docs/grafana/banditctl.json``) imports as JSON and queries
only metrics that ``/metrics`` exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.controlplane.metrics_stack import chat, families, learned_stack

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "banditctl.json"


@pytest.fixture
def stack(engine):
    return learned_stack(engine)


def test_grafana_dashboard_queries_only_exported_metrics(stack):
    board = json.loads(DASHBOARD.read_text())
    assert isinstance(board["schemaVersion"], int) and board["title"] and board["uid"]
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len(panels) >= 8
    exprs = []
    for p in panels:
        assert {"id", "title", "gridPos", "targets", "datasource"} <= p.keys(), p.get("title")
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["refId"] and t["expr"]
            exprs.append(t["expr"])
    queried = {n for e in exprs for n in re.findall(r"\bbanditctl_[a-z0-9_]+", e)}
    chat(stack.http)  # so that the histograms have children
    exported = families(stack.http.get("/metrics").text)
    assert queried, "no metric queried"
    assert sorted(queried - exported) == []
    for needed in ("banditctl_request_duration_seconds_bucket", "banditctl_decisions_total",
                   "banditctl_reward_total", "banditctl_learner_lag_seconds",
                   "banditctl_decision_log_buffered", "banditctl_policy_version"):  # fmt: skip
        assert needed in queried
