"""Warm start: a new policy whose prior is an earlier version's data (learners.warm),
and ``banditctl simulate --warm-start``."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from learners import RewardEvent, load_learner, make_learner
from learners.warm import warm_start
from tests.learners.test_simulate_datasets import quality_only_rows, simulate, write_jsonl

ARMS = ["a", "b", "c"]
LINTS = {"kind": "lints", "v": 0.2, "ridge": 2.0, "prior_mean": (1.0, 0.0, 0.0, 0.0)}


def trained(config: dict, n: int = 300, seed: int = 0, dim: int = 6):
    rng = np.random.default_rng(seed)
    learner = make_learner(config, dim, {"quality": 1.0})
    truth = rng.normal(size=(len(ARMS), dim))
    for _ in range(n):
        x = rng.normal(size=dim)
        d = learner.select(x, ARMS, rng)
        k = ARMS.index(d.arm)
        r = np.array([truth[k] @ x + rng.normal(scale=0.1), 0.0, 0.0, 0.0])
        learner.update([RewardEvent(x, d.arm, r, d.propensity)])
    return learner, rng.normal(size=(20, dim))


@pytest.mark.parametrize("config", [LINTS, {"kind": "linucb", "alpha": 0.5, "ridge": 3.0}])
def test_full_weight_carries_the_estimates_and_the_snapshot(config):
    old, probe = trained(config)
    snap = load_learner(old.state_bytes())
    new = warm_start(snap, prior_weight=1.0)
    for x in probe:
        m0, w0 = old.estimates(x, ARMS)
        m1, w1 = new.estimates(x, ARMS)
        np.testing.assert_allclose(m1, m0, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(w1, w0, rtol=1e-6, atol=1e-9)
    assert new.arm_summary()["a"]["pulls"] == old.arm_summary()["a"]["pulls"]


def test_zero_weight_is_the_prior_and_a_partial_weight_widens_the_posterior():
    old, probe = trained(LINTS)
    fresh = make_learner(LINTS, 6, {"quality": 1.0})
    zero = warm_start(old, prior_weight=0.0)
    half = warm_start(old, prior_weight=0.5)
    for x in probe:
        np.testing.assert_allclose(zero.estimates(x, ARMS)[0], fresh.estimates(x, ARMS)[0])
        np.testing.assert_allclose(zero.estimates(x, ARMS)[1], fresh.estimates(x, ARMS)[1])
        w_old, w_half = old.estimates(x, ARMS)[1], half.estimates(x, ARMS)[1]
        # half the data: about sqrt(2) wider once the data outweighs the prior
        assert np.all(w_half > w_old * 1.3) and np.all(w_half < w_old * 1.5)


def test_a_scaled_state_equals_learning_from_the_data_counted_at_that_weight():
    """w (A - P) + P and w (b - b0) + b0 are the ridge fit with every row weighted by w."""
    rng = np.random.default_rng(3)
    cfg = {"kind": "linucb", "alpha": 0.0, "ridge": 2.0}
    old = make_learner(cfg, 4, {"quality": 1.0})
    weighted = make_learner(cfg, 4, {"quality": 1.0})
    for _ in range(50):
        x, q = rng.normal(size=4), float(rng.normal())
        old.update([RewardEvent(x, "a", np.array([q, 0, 0, 0]), 1.0)])
        # sqrt(w) x with sqrt(w) r: the row counted at weight w
        s = np.sqrt(0.25)
        weighted.update([RewardEvent(s * x, "a", np.array([s * q, 0, 0, 0]), 1.0)])
    new = warm_start(old, prior_weight=0.25)
    x = rng.normal(size=4)
    np.testing.assert_allclose(new.estimates(x, ["a"])[0], weighted.estimates(x, ["a"])[0])
    np.testing.assert_allclose(new.estimates(x, ["a"])[1], weighted.estimates(x, ["a"])[1])


def test_a_new_config_keeps_the_data_under_its_own_prior():
    old, probe = trained(LINTS)
    tighter = {**LINTS, "v": 0.05}
    new = warm_start(old, config=tighter)
    assert new.config.v == 0.05
    np.testing.assert_allclose(new.estimates(probe[0], ARMS)[0], old.estimates(probe[0], ARMS)[0])
    with pytest.raises(ValueError, match="context_indices"):
        warm_start(old, config={**LINTS, "context_indices": (0, 1, 2)})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        warm_start(old, prior_weight=1.5)


def test_non_linear_learners_are_copied_only_at_full_weight():
    rnd = make_learner({"kind": "random"}, 6)
    assert warm_start(rnd).kind == "random"
    with pytest.raises(ValueError, match="linear learners only"):
        warm_start(rnd, prior_weight=0.5)


def test_simulate_warm_start_from_an_earlier_stream(tmp_path, capsys):
    """Learned first on an earlier stream of the same tasks, a learner does better on a
    short new stream than from a cold start, on every one of 3 seeds."""
    earlier = write_jsonl(tmp_path / "earlier.jsonl", quality_only_rows(240, seed=1))
    later = write_jsonl(tmp_path / "later.jsonl", quality_only_rows(60, seed=2))
    common = ("--dataset", str(later), "--objective", "quality=1", "--seeds", "3")
    cold_json, warm_json = tmp_path / "cold.json", tmp_path / "warm.json"
    rc, out, err = simulate(capsys, *common, "--learners", "lints", "--json", str(cold_json))
    assert rc == 0, err
    rc, out, err = simulate(
        capsys, *common, "--learners", "lints", "--warm-start", str(earlier),
        "--prior-weight", "0.5", "--json", str(warm_json),
    )  # fmt: skip
    assert rc == 0, err
    assert "warm start: every learner first learns online from" in out
    assert "prior weight 0.5" in out
    cold = json.loads(cold_json.read_text())["learners"]["lints"]["per_seed"]["mean_reward"]
    warm = json.loads(warm_json.read_text())["learners"]["lints"]["per_seed"]["mean_reward"]
    assert all(w > c for w, c in zip(warm, cold, strict=True)), (warm, cold)


def test_simulate_refuses_a_prior_weight_it_cannot_apply(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", quality_only_rows(36))
    rc, _, err = simulate(capsys, "--dataset", str(data), "--prior-weight", "0.5")
    assert rc == 2 and "--prior-weight needs --warm-start" in err
    rc, _, err = simulate(
        capsys, "--dataset", str(data), "--warm-start", str(data), "--prior-weight", "0.5",
        "--learners", "lints,random",
    )  # fmt: skip
    assert rc == 2 and "not random" in err
    rc, _, err = simulate(capsys, "--dataset", str(data), "--warm-start", "nothing*.csv")
    assert rc == 2 and "neither a path nor a file glob" in err


def test_a_candidate_with_a_prior_weight_starts_from_the_live_learners_data():
    """The learner service's shadow for ``{"learner": ..., "prior_weight": w}`` is the
    candidate's config started from the live learner's data at weight w."""
    from controlplane.api.candidates import candidate_spec
    from controlplane.shadows import fresh_shadow
    from feedback.errors import InvalidInput
    from tests.controlplane import gatekeeping

    config = gatekeeping.config(learner={"kind": "lints", "v": 0.2, "ridge": 2.0})
    live = make_learner(config.learner, 32, config.objective.weight_vector)
    rng = np.random.default_rng(0)
    for _ in range(200):
        x = rng.normal(size=32)
        d = live.select(x, ["cheap", "dear"], rng)
        q = 0.9 if d.arm == "cheap" else 0.2
        live.update([RewardEvent(x, d.arm, np.array([q, 0.0, 0.0, 0.0]), d.propensity)])
    name, spec = candidate_spec(
        {"name": "tighter", "learner": {"kind": "lints", "v": 0.05}, "prior_weight": 0.5},
        config,
    )
    assert spec["prior_weight"] == 0.5
    shadow = fresh_shadow(config, spec, live)
    assert shadow.config.v == 0.05
    assert shadow.arm_summary()["cheap"]["pulls"] == live.arm_summary()["cheap"]["pulls"]
    x = rng.normal(size=32)
    fresh = fresh_shadow(config, {"learner": {"kind": "lints", "v": 0.05}}, live)
    # the data carried: the shadow already prefers the arm the live learner found best
    mean, _ = shadow.estimates(x, ["cheap", "dear"])
    assert mean[0] - mean[1] > 0.3
    assert np.allclose(fresh.estimates(x, ["cheap", "dear"])[0], 0.0)
    for bad, why in [
        ({"learner": "random", "prior_weight": 0.5}, "linear"),
        ({"prior_weight": 1.5}, "[0, 1]"),
        ({"learner": {"kind": "lints", "context_indices": [0, 1]}, "prior_weight": 1}, "context"),
    ]:
        with pytest.raises(InvalidInput, match=re.escape(why)):
            candidate_spec({"name": "x", **bad}, config)
    # a prior weight alone restarts the live config from discounted data
    assert candidate_spec({"name": "again", "prior_weight": 0.2}, config)[1] == {
        "prior_weight": 0.2
    }
