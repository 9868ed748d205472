"""LinUCB and linear Thompson sampling: algebra, invariants, arms, weights, penalties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learners import RewardEvent, make_learner
from learners._choice import gaussian_argmax_probs
from learners.config import LinUCBConfig
from learners.linucb import LinUCB

from .conftest import linear_problem

finite = st.floats(-3, 3, allow_nan=False, allow_infinity=False)


def _event(x, arm, q, cost=0.0):
    return RewardEvent(np.asarray(x, float), arm, np.array([q, 0.0, 0.0, cost]))


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.lists(finite, min_size=4, max_size=4), st.integers(0, 2), finite),
        min_size=1,
        max_size=40,
    ),
    window=st.sampled_from([None, 5]),
    discount=st.sampled_from([1.0, 0.9]),
)
def test_A_stays_symmetric_positive_definite(rows, window, discount):
    if window is not None and discount < 1:
        discount = 1.0
    learner = LinUCB(LinUCBConfig(ridge=0.5, window=window, discount=discount), dim=4)
    for x, k, r in rows:
        learner.update([_event(x, f"a{k}", r)])
    for k in range(len(learner.store)):
        A, A_inv = learner.store.A[k], learner.store.A_inv[k]
        assert np.allclose(A, A.T, atol=1e-9)
        assert np.linalg.eigvalsh(A).min() > 0
        assert np.allclose(A_inv @ A, np.eye(4), atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["linucb", "lints", "greenserv", "vw", "random", "epsilon_greedy"]),
    n_arms=st.integers(1, 7),
    seed=st.integers(0, 2**32 - 1),
    steps=st.integers(0, 15),
)
def test_propensities_sum_to_one(kind, n_arms, seed, steps):
    rng = np.random.default_rng(seed)
    arms = [f"a{i}" for i in range(n_arms)]
    learner = make_learner({"kind": kind}, 32)
    for _ in range(steps + 1):
        x = rng.standard_normal(32)
        d = learner.select(x, arms, rng)
        p = np.array(list(d.propensities.values()))
        assert set(d.propensities) == set(arms)
        assert np.all(p >= 0)
        assert p.sum() == pytest.approx(1.0, abs=1e-9)
        assert d.propensity > 0
        learner.update([RewardEvent(x, d.arm, rng.random(4), d.propensity, {"arms": arms})])


def test_sherman_morrison_matches_batch_ridge():
    X, R = linear_problem(seed=0, n=200, dim=6, n_arms=3)
    learner = LinUCB(LinUCBConfig(ridge=2.0), dim=6)
    arms = ["a0", "a1", "a2"]
    rng = np.random.default_rng(0)
    for t in range(200):
        k = int(rng.integers(3))
        learner.update([RewardEvent(X[t], arms[k], R[t, k])])
    mean, width = learner.estimates(X[0], arms)
    for k, arm in enumerate(arms):
        idx = learner.store.index[arm]
        pulls = learner.store.pulls[idx]
        assert pulls > 0
        A = learner.store.A[idx]
        theta = np.linalg.solve(A, learner.store.b[idx, 0])
        assert mean[k] == pytest.approx(theta @ X[0])
        assert width[k] == pytest.approx(np.sqrt(X[0] @ np.linalg.solve(A, X[0])))


def test_window_keeps_only_last_events():
    learner = LinUCB(LinUCBConfig(ridge=1.0, window=3), dim=2)
    xs = [np.array([1.0, i]) for i in range(6)]
    for i, x in enumerate(xs):
        learner.update([_event(x, "a", float(i))])
    expected = np.eye(2) + sum(np.outer(x, x) for x in xs[-3:])
    assert np.allclose(learner.store.A[0], expected)
    assert np.allclose(learner.store.A_inv[0], np.linalg.inv(expected))


def test_new_weights_apply_on_next_decision_without_relearning():
    learner = LinUCB(LinUCBConfig(alpha=0.0, ridge=0.1), dim=1, weights={"quality": 1.0})
    x = np.ones(1)
    for _ in range(20):  # premium: better and dearer
        learner.update(
            [_event(x, "premium", 0.9, cost=0.01), _event(x, "budget", 0.7, cost=0.0001)]
        )
    rng = np.random.default_rng(0)
    assert learner.select(x, ["premium", "budget"], rng).arm == "premium"
    version = learner.version
    learner.set_weights({"quality": 1.0, "cost_usd": -30.0})
    assert learner.version == version
    assert learner.select(x, ["premium", "budget"], rng).arm == "budget"


@pytest.mark.parametrize("kind", ["linucb", "lints"])
def test_new_arm_starts_optimistic_and_is_tried_first(kind):
    learner = make_learner({"kind": kind}, 4)
    rng = np.random.default_rng(0)
    x = np.array([1.0, 0.2, -0.1, 0.3])
    for _ in range(30):
        learner.update([_event(x, "old", 1.0)])
    d = learner.select(x, ["old", "new"], rng)
    assert d.arm == "new" and d.propensity == 1.0
    learner.retire_arm("new")
    assert "new" not in learner.arm_summary()


@pytest.mark.parametrize("kind", ["linucb", "lints"])
def test_penalties_are_subtracted_from_scores(kind):
    learner = make_learner(
        {"kind": kind, **({"alpha": 0.0} if kind == "linucb" else {"v": 0.0})}, 1
    )
    x = np.ones(1)
    for _ in range(10):
        learner.update([_event(x, "a", 0.9), _event(x, "b", 0.6)])
    rng = np.random.default_rng(0)
    assert learner.select(x, ["a", "b"], rng).arm == "a"
    d = learner.select(x, ["a", "b"], rng, penalties={"a": 0.5})
    assert d.arm == "b"
    assert d.scores["a"] == pytest.approx(learner.estimates(x, ["a"])[0][0] - 0.5)


def test_width_scale_narrows_only_the_named_arms():
    learner = make_learner({"kind": "linucb", "alpha": 1.0}, 1)
    x = np.ones(1)
    learner.update([_event(x, "a", 0.6), _event(x, "b", 0.5)])  # "b" is less certain after
    learner.update([_event(x, "a", 0.6)] * 20)
    rng = np.random.default_rng(0)
    mean, width = learner.estimates(x, ["a", "b"])
    assert learner.select(x, ["a", "b"], rng).arm == "b"  # its width wins
    d = learner.select(x, ["a", "b"], rng, width_scale={"b": 0.0, "gone": 5.0})
    assert d.arm == "a"
    assert d.scores["b"] == pytest.approx(mean[1])
    assert d.scores["a"] == pytest.approx(mean[0] + width[0])
    both = learner.select(x, ["a", "b"], rng, penalties={"b": 0.1}, width_scale={"b": 0.5})
    assert both.scores["b"] == pytest.approx(mean[1] + 0.5 * width[1] - 0.1)


def test_thompson_width_scale_narrows_the_sampled_arm():
    learner = make_learner({"kind": "lints", "v": 1.0}, 1)
    x = np.ones(1)
    learner.update([_event(x, "a", 0.6)] * 50 + [_event(x, "b", 0.5)])
    rng = np.random.default_rng(0)
    plain = learner.select(x, ["a", "b"], rng)
    d = learner.select(x, ["a", "b"], rng, width_scale={"b": 0.0})
    assert d.propensities["b"] < plain.propensities["b"] / 10
    assert d.scores["b"] == pytest.approx(learner.estimates(x, ["b"])[0][0])  # no draw left


def test_thompson_closed_form_propensity_matches_sampling():
    rng = np.random.default_rng(0)
    for _ in range(5):
        mean, sd = rng.normal(0, 0.5, 6), rng.uniform(0.05, 1.0, 6)
        draws = mean + sd * rng.standard_normal((200_000, 6))
        mc = np.bincount(draws.argmax(axis=1), minlength=6) / len(draws)
        assert np.allclose(gaussian_argmax_probs(mean, sd), mc, atol=5e-3)


@pytest.mark.parametrize(
    ("config", "golden"),
    [
        ({"kind": "linucb", "alpha": 0.5}, "2100001000020111000011001012111010010010"),
        ({"kind": "lints", "v": 0.5}, "2102020000000011000101000111200010010220"),
    ],
)
def test_golden_decisions(config, golden):
    """Seeded decisions pinned: a change here is a change of behaviour."""
    X, R = linear_problem(seed=11, n=40, dim=4, n_arms=3)
    learner = make_learner(config, 4, {"quality": 1.0})
    arms = ["a0", "a1", "a2"]
    rng = np.random.default_rng(5)
    chosen = []
    for t in range(40):
        d = learner.select(X[t], arms, rng)
        chosen.append(int(d.arm[1]))
        learner.update([RewardEvent(X[t], d.arm, R[t, chosen[-1]])])
    assert "".join(map(str, chosen)) == golden


@pytest.mark.parametrize("kind", ["linucb", "lints", "vw", "epsilon_greedy"])
def test_learned_beats_random_over_seeds(kind):
    """On a linear problem every learner beats uniform random, judged over 4 seeds."""
    gains = []
    for seed in range(4):
        X, R = linear_problem(seed=seed, n=600, dim=6, n_arms=4)
        arms = [f"a{i}" for i in range(4)]
        learner = make_learner({"kind": kind}, 6, {"quality": 1.0})
        rng = np.random.default_rng(seed)
        got = []
        for t in range(len(X)):
            d = learner.select(X[t], arms, rng)
            k = arms.index(d.arm)
            got.append(R[t, k, 0])
            learner.update([RewardEvent(X[t], d.arm, R[t, k], d.propensity, {"arms": arms})])
        gains.append(np.mean(got[200:]) - R[200:, :, 0].mean())
    assert min(gains) > 0.05


@pytest.mark.parametrize("kind", ["linucb", "lints", "greenserv"])
def test_select_many_matches_select(kind):
    """Batched decisions equal one-by-one decisions on the same state and rng stream."""
    X, R = linear_problem(seed=2, n=300, dim=32, n_arms=5)
    arms = [f"a{i}" for i in range(5)]
    learner = make_learner({"kind": kind}, 32, {"quality": 1.0, "cost_usd": -30.0})
    rng = np.random.default_rng(0)
    for t in range(200):
        d = learner.select(X[t], arms, rng)
        k = arms.index(d.arm)
        learner.update([RewardEvent(X[t], d.arm, R[t, k], d.propensity)])
    r1 = np.random.default_rng(9)
    one = [learner.select(x, arms, r1) for x in X[200:]]
    many = learner.select_many(X[200:], arms, np.random.default_rng(9))
    for a, b in zip(one, many, strict=True):
        assert a.propensities == pytest.approx(b.propensities, abs=1e-9)
        assert a.scores == pytest.approx(b.scores, rel=1e-9, abs=1e-9)
    assert [d.arm for d in one] == [d.arm for d in many]


def test_lazy_sums_match_eager_ones():
    """A, b and reward sums (applied in bulk when read) equal their direct sums."""
    X, R = linear_problem(seed=4, n=1500, dim=6, n_arms=3)
    learner = LinUCB(LinUCBConfig(ridge=0.5), dim=6)
    rng = np.random.default_rng(1)
    ks = rng.integers(3, size=len(X))
    for t, k in enumerate(ks):
        learner.update([RewardEvent(X[t], f"a{k}", R[t, k])])
    for k in range(3):
        i = learner.store.index[f"a{k}"]
        rows = ks == k
        assert np.allclose(learner.store.A[i], 0.5 * np.eye(6) + X[rows].T @ X[rows])
        assert np.allclose(learner.store.b[i], R[rows, k].T @ X[rows])
        assert np.allclose(learner.store.reward_sum[i], R[rows, k].sum(axis=0))
        theta = np.linalg.solve(learner.store.A[i], learner.store.b[i].T).T
        assert np.allclose(learner.store.theta_c[i], theta, atol=1e-8)


def test_context_indices_restrict_the_view():
    """A LinUCB on some positions of x behaves as one fed only those positions."""
    X, R = linear_problem(seed=6, n=200, dim=10, n_arms=3)
    arms = ["a0", "a1", "a2"]
    cols = [0, 3, 4]
    sub = make_learner({"kind": "linucb", "context_indices": cols}, 10)
    ref = make_learner({"kind": "linucb"}, 3)
    r1, r2 = np.random.default_rng(3), np.random.default_rng(3)
    for t in range(200):
        d1, d2 = sub.select(X[t], arms, r1), ref.select(X[t, cols], arms, r2)
        assert d1.arm == d2.arm
        k = arms.index(d1.arm)
        sub.update([RewardEvent(X[t], d1.arm, R[t, k])])
        ref.update([RewardEvent(X[t, cols], d2.arm, R[t, k])])
    with pytest.raises(ValueError):
        make_learner({"kind": "linucb", "context_indices": [0, 10]}, 10)


@pytest.mark.parametrize("discount", [1.0, 0.95])
def test_prior_mean_is_a_new_arms_estimate_and_data_overrides_it(discount):
    w = {"quality": 1.0, "cost_usd": -30.0}
    cfg = {"kind": "linucb", "prior_mean": [0.8, 0, 0, 0.001], "discount": discount}
    learner = make_learner(cfg, 3, w)
    x = np.array([1.0, 0.0, 0.0])
    assert learner.estimates(x, ["a"])[0][0] == pytest.approx(0.8 - 0.03)
    for _ in range(400):
        learner.update([_event(x, "a", 0.2, cost=0.002)])
    # with discount 0.95 about 20 effective events stand against the prior (ridge 1)
    assert learner.estimates(x, ["a"])[0][0] == pytest.approx(0.2 - 0.06, abs=0.04)


def test_ridge_scale_sets_the_prior_precision_per_position():
    learner = LinUCB(LinUCBConfig(ridge=0.5, ridge_scale=(1.0, 4.0, 4.0)), dim=3)
    x = np.array([1.0, 1.0, 0.0])
    for _ in range(50):
        learner.update([_event(x, "a", 0.6)])
    A = np.diag([0.5, 2.0, 2.0]) + 50 * np.outer(x, x)
    assert np.allclose(learner.store.A[0], A)
    assert np.allclose(learner.store.A_inv[0], np.linalg.inv(A))
    theta = learner.store.theta_c[0, 0]
    assert theta[1] < theta[0]  # the harder-shrunk coefficient takes less of the signal
    with pytest.raises(ValueError):
        LinUCBConfig(ridge_scale=(1.0, 0.0))
