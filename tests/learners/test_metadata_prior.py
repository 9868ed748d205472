"""Arm-metadata priors (learners.metadata_prior): a new arm starts at the prior its
metadata gives, and ``banditctl simulate --metadata-prior``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pydantic import ValidationError

from learners import RewardEvent, load_learner, make_learner
from learners.metadata_prior import MetadataPriorConfig, fit_metadata_prior, fit_quality_model
from learners.warm import warm_start
from tests.learners.test_simulate_datasets import simulate, write_jsonl

DIM = 5
WEIGHTS = {"quality": 1.0, "cost_usd": -30.0}
E0 = np.eye(DIM)[0]  # the intercept-only context
PRICES = {"small": 1e-4, "mid": 1e-3, "large": 1e-2}


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def truth(price: float) -> float:
    return sigmoid(1.5 + 0.25 * math.log(price))


def prior_config(strength: float = 4.0, **arms: dict) -> dict:
    metadata = {a: {"cost_usd": p} for a, p in PRICES.items()}
    return {
        "features": ["cost_usd"],
        "intercept": 1.5,
        "coef": [0.25],
        "strength": strength,
        "arms": {**metadata, **arms},
    }


def lin(kind: str = "linucb", **extra) -> dict:
    base = {"kind": kind, "ridge": 2.0, "min_pulls": 0}
    base.update({"alpha": 0.5} if kind == "linucb" else {"v": 0.3})
    return {**base, **extra}


def random_updates(learner, arms, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = rng.normal(size=DIM)
        x[0] = 1.0
        arm = arms[int(rng.integers(len(arms)))]
        r = np.array([rng.random(), 0.0, 0.0, rng.uniform(0, 0.01)])
        learner.update([RewardEvent(x, arm, r, 1.0)])


def test_the_fit_recovers_a_logistic_model_in_log_price():
    metadata = {f"m{i}": {"cost_usd": p} for i, p in enumerate([1e-4, 5e-4, 2e-3, 1e-2, 3e-2])}
    quality = {a: truth(m["cost_usd"]) for a, m in metadata.items()}
    intercept, coef = fit_quality_model(metadata, quality, ["cost_usd"])
    assert intercept == pytest.approx(1.5, abs=1e-9)
    assert coef == pytest.approx((0.25,), abs=1e-9)


def test_fit_from_a_data_set_takes_each_models_mean_price_and_quality():
    rng = np.random.default_rng(0)
    models = ["small", "mid", "large"]
    cost = np.array([[PRICES[m] for m in models]] * 400) * rng.uniform(0.5, 1.5, (400, 3))
    quality = (rng.random((400, 3)) < [truth(PRICES[m]) for m in models]).astype(float)
    prior = fit_metadata_prior(models, quality, cost, strength=2.0)
    assert prior.features == ("cost_usd",) and prior.strength == 2.0
    for k, m in enumerate(models):
        assert prior.arms[m]["cost_usd"] == pytest.approx(cost[:, k].mean())
    # three points, two parameters: the fitted curve passes near each model's mean quality
    for k, m in enumerate(models):
        assert prior.quality(m) == pytest.approx(quality[:, k].mean(), abs=0.03)
    assert prior.coef[0] > 0  # dearer models answer better here


@pytest.mark.parametrize("kind", ["linucb", "lints"])
def test_a_fresh_arm_starts_at_its_metadata_prior(kind):
    learner = make_learner(lin(kind, metadata_prior=prior_config()), DIM, WEIGHTS)
    means, _ = learner.estimates(E0, list(PRICES))
    expected = [truth(p) - 30.0 * p for p in PRICES.values()]
    np.testing.assert_allclose(means, expected, rtol=1e-12)
    # the quality and cost components themselves, not just their sum
    for k, price in enumerate(PRICES.values()):
        theta = learner.store.component_thetas(k)
        assert theta[0, 0] == pytest.approx(truth(price)) and theta[3, 0] == pytest.approx(price)
        assert theta[1, 0] == 0.0 and theta[2, 0] == 0.0  # energy, latency: the flat prior


def test_a_model_added_to_a_running_learner_starts_at_its_prior():
    cfg = lin(metadata_prior=prior_config(late={"cost_usd": 3e-3}))
    learner = make_learner(cfg, DIM, WEIGHTS)
    random_updates(learner, ["small", "mid"], 200, seed=1)
    means, widths = learner.estimates(E0, ["small", "mid", "late"])
    assert means[2] == pytest.approx(truth(3e-3) - 30.0 * 3e-3)
    assert widths[2] == pytest.approx(1.0 / math.sqrt(2.0 + 4.0))  # ridge + strength


def test_an_arm_without_metadata_keeps_the_flat_prior():
    flat = lin("lints", prior_mean=(1.0, 0.0, 0.0, 0.0), ridge_scale=(3.0, 1, 1, 1, 1))
    with_prior = make_learner({**flat, "metadata_prior": prior_config()}, DIM, WEIGHTS)
    without = make_learner(flat, DIM, WEIGHTS)
    arms = ["small", "unlisted"]
    random_updates(with_prior, arms, 100, seed=2)
    random_updates(without, arms, 100, seed=2)
    k = with_prior.store.index["unlisted"]
    j = without.store.index["unlisted"]
    np.testing.assert_array_equal(with_prior.store.A[k], without.store.A[j])
    np.testing.assert_array_equal(with_prior.store.b[k], without.store.b[j])
    x = np.random.default_rng(3).normal(size=DIM)
    m1, w1 = with_prior.estimates(x, ["unlisted"])
    m0, w0 = without.estimates(x, ["unlisted"])
    np.testing.assert_array_equal(m1, m0)
    np.testing.assert_array_equal(w1, w0)
    # and the listed arm did move: same data, another prior
    assert with_prior.estimates(E0, ["small"])[0] != pytest.approx(
        without.estimates(E0, ["small"])[0]
    )


@pytest.mark.parametrize("strength", [0.0, 1.0, 7.0])
def test_strength_w_is_w_observations_at_the_prior_mean(strength):
    """A metadata prior of strength W is the same arm with the flat prior moved to its
    mean and W observations of that mean at the intercept-only context."""
    price = PRICES["mid"]
    mean = np.array([truth(price), 0.0, 0.0, price])
    meta = make_learner(lin(metadata_prior=prior_config(strength)), DIM, WEIGHTS)
    observed = make_learner(lin(prior_mean=tuple(mean)), DIM, WEIGHTS)
    observed.add_arm("mid")
    for _ in range(int(strength)):
        observed.update([RewardEvent(E0, "mid", mean, 1.0)])
    meta.add_arm("mid")
    np.testing.assert_allclose(meta.store.A[0], observed.store.A[0], rtol=1e-12)
    np.testing.assert_allclose(meta.store.b[0], observed.store.b[0], rtol=1e-12)
    # and they stay the same learner as data arrives: same decisions, same estimates
    random_updates(meta, ["mid"], 50, seed=4)
    random_updates(observed, ["mid"], 50, seed=4)
    probe = np.random.default_rng(5).normal(size=(10, DIM))
    for x in probe:
        np.testing.assert_allclose(meta.estimates(x, ["mid"]), observed.estimates(x, ["mid"]))


def test_data_outweighs_the_prior_in_proportion_to_its_strength():
    """Posterior mean of the intercept after n observations of q: (P mu + W mu + n q) /
    (P + W + n): a stronger prior stays nearer its mean."""
    gaps = []
    for w in (1.0, 10.0):
        learner = make_learner(lin(ridge=1.0, metadata_prior=prior_config(w)), DIM, WEIGHTS)
        for _ in range(5):
            learner.update([RewardEvent(E0, "large", np.array([0.0, 0.0, 0.0, 0.01]), 1.0)])
        q = learner.store.component_thetas(0)[0, 0]
        assert q == pytest.approx((1.0 + w) * truth(0.01) / (1.0 + w + 5))
        gaps.append(truth(0.01) - q)
    assert gaps[1] < gaps[0] / 2


def test_state_bytes_and_a_warm_start_keep_each_arms_prior():
    cfg = lin("lints", metadata_prior=prior_config())
    learner = make_learner(cfg, DIM, WEIGHTS)
    random_updates(learner, ["small", "mid", "other"], 80, seed=6)
    again = load_learner(learner.state_bytes())
    np.testing.assert_array_equal(again.store.arm_b0, learner.store.arm_b0)
    np.testing.assert_array_equal(again.store.arm_prior_diag, learner.store.arm_prior_diag)
    x = np.random.default_rng(7).normal(size=DIM)
    arms = ["small", "mid", "other"]
    rng0, rng1 = np.random.default_rng(8), np.random.default_rng(8)
    assert [learner.select(x, arms, rng0).arm for _ in range(20)] == [
        again.select(x, arms, rng1).arm for _ in range(20)
    ]
    # weight 0: the data is gone, every arm is back at its own prior (not the flat one)
    zero = warm_start(learner, prior_weight=0.0)
    fresh = make_learner(cfg, DIM, WEIGHTS)
    np.testing.assert_allclose(zero.estimates(x, arms), fresh.estimates(x, arms), atol=1e-12)


def test_forgetting_decays_towards_the_arms_own_prior():
    cfg = lin(discount=0.5, metadata_prior=prior_config())
    learner = make_learner(cfg, DIM, WEIGHTS)
    x = np.eye(DIM)[1]  # never touches the intercept
    for _ in range(30):
        learner.update([RewardEvent(x, "small", np.array([0.2, 0.0, 0.0, 1e-4]), 1.0)])
    assert learner.store.component_thetas(0)[0, 0] == pytest.approx(truth(PRICES["small"]))


def test_a_given_quality_wins_over_the_model_and_a_partial_entry_sets_what_it_names():
    cfg = prior_config(given={"quality": 0.9, "cost_usd": 1e-3}, priced_only={"energy_j": 5.0})
    cfg["features"], cfg["coef"] = ["size_b"], [0.3]
    cfg["arms"] = {"given": cfg["arms"]["given"], "priced_only": cfg["arms"]["priced_only"]}
    learner = make_learner(lin(metadata_prior=cfg), DIM, WEIGHTS)
    learner.add_arm("given")
    learner.add_arm("priced_only")
    np.testing.assert_allclose(learner.store.component_thetas(0)[:, 0], [0.9, 0, 0, 1e-3])
    # no size_b: quality stays flat (0), energy is set
    np.testing.assert_allclose(learner.store.component_thetas(1)[:, 0], [0.0, 5.0, 0, 0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"coef": [0.1, 0.2]}, "coef has 2 entries for 1 features"),
        ({"arms": {}}, "arms is empty"),
        ({"arms": {"a": {"cost": 0.1}}}, r"arms\['a'\].cost: not a feature"),
        ({"arms": {"a": {"cost_usd": -1.0}}}, r"arms\['a'\].cost_usd: a feature enters as its log"),
        ({"arms": {"a": {"cost_usd": float("nan")}}}, "must be finite"),
        ({"arms": {"a": {"quality": 1.5}}}, r"quality must lie in \[0, 1\]"),
        ({"strength": -1.0}, "greater than or equal to 0"),
        ({"intercept": float("inf")}, "must be finite"),
        ({"features": ["cost_usd", "cost_usd"], "coef": [1.0, 1.0]}, "repeat a field"),
        ({"unknown": 1}, "Extra inputs are not permitted"),
    ],
)
def test_bad_metadata_is_refused_with_a_message_naming_it(change, message):
    with pytest.raises(ValidationError, match=message):
        MetadataPriorConfig.model_validate({**prior_config(), **change})
    with pytest.raises(ValidationError, match=message):  # the same through a learner config
        make_learner(lin(metadata_prior={**prior_config(), **change}), DIM, WEIGHTS)


def test_a_config_with_a_metadata_prior_is_frozen_and_hashable_like_the_others():
    from learners.config import parse_config

    one = parse_config(lin(metadata_prior=prior_config()))
    same = parse_config(lin(metadata_prior=prior_config()))
    assert hash(one) == hash(same) and one == same
    assert one != parse_config(lin(metadata_prior=prior_config(strength=2.0)))
    with pytest.raises(ValidationError, match="frozen"):
        one.metadata_prior.strength = 2.0


def test_a_fit_with_too_few_or_collinear_arms_is_refused():
    with pytest.raises(ValueError, match="1 arms have every feature"):
        fit_quality_model({"a": {"cost_usd": 1.0}, "b": {}}, {"a": 0.5, "b": 0.6}, ["cost_usd"])
    same = {"a": {"cost_usd": 1e-3}, "b": {"cost_usd": 1e-3}}
    with pytest.raises(ValueError, match="collinear"):
        fit_quality_model(same, {"a": 0.5, "b": 0.6}, ["cost_usd"])
    with pytest.raises(ValueError, match="without a price"):
        fit_metadata_prior(["a", "b"], np.ones((3, 2)), np.zeros((3, 2)))


def priced_rows(n: int = 300, seed: int = 0) -> list[dict]:
    """3 models whose quality rises with price."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        models = {
            m: {"quality": float(rng.random() < truth(p)), "cost_usd": p * rng.uniform(0.5, 1.5)}
            for m, p in PRICES.items()
        }
        rows.append({"prompt": f"question {i}", "task": "qa", "models": models})
    return rows


def test_simulate_fits_the_prior_saves_it_and_the_saved_file_runs_again(tmp_path, capsys):
    data = write_jsonl(tmp_path / "bench.jsonl", priced_rows())
    saved = tmp_path / "prior.json"
    rc, out, err = simulate(
        capsys, "--dataset", str(data), "--seeds", "2", "--learners", "lints,random",
        "--metadata-prior", f"fit:{data}", "--metadata-strength", "3",
        "--save-metadata-prior", str(saved),
    )  # fmt: skip
    assert rc == 0, err
    assert "metadata prior fitted on" in out and "strength 3 pseudo-observations" in out
    assert "for lints (not random)" in out
    body = json.loads(saved.read_text())
    assert body["strength"] == 3.0 and set(body["arms"]) == set(PRICES)
    assert body["coef"][0] > 0
    rc, out, err = simulate(
        capsys, "--dataset", str(data), "--seeds", "1", "--learners", "linucb",
        "--metadata-prior", str(saved),
    )  # fmt: skip
    assert rc == 0, err
    assert f"metadata prior read from {saved}" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--metadata-strength", "2"], "need --metadata-prior"),
        (["--metadata-prior", "nowhere.json"], "neither fit:DATA nor a JSON file"),
        (["--metadata-prior", "fit:*_nothing.csv"], "is neither a path nor a file glob"),
        (["--metadata-prior", "fit:{data}", "--metadata-strength", "-1"], "must be >= 0"),
        (["--metadata-prior", "fit:{data}", "--learners", "vw,random"], "none was chosen"),
        (["--metadata-prior", "{bad}"], "coef has 2 entries"),
    ],
)
def test_simulate_refuses_bad_metadata_prior_options_in_one_line(tmp_path, capsys, argv, message):
    data = write_jsonl(tmp_path / "bench.jsonl", priced_rows(30))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**prior_config(), "coef": [1, 2]}))
    argv = [a.format(data=data, bad=bad) for a in argv]
    rc, out, err = simulate(capsys, "--dataset", str(data), "--seeds", "1", *argv)
    assert rc == 2
    assert message in err and "Traceback" not in err
    assert err.startswith("simulate: ")


def test_a_model_the_earlier_version_never_saw_starts_at_its_price_not_the_optimistic_prior(
    tmp_path, capsys
):
    """--new-arms: the warm start leaves 'large' out; under the lints preset's optimistic
    flat prior (quality 1, cost 0) the new arm is tried often, under a metadata prior
    fitted on the other two models (its price known) rarely."""
    data = write_jsonl(tmp_path / "stream.jsonl", priced_rows(200))
    warm = write_jsonl(tmp_path / "earlier.jsonl", priced_rows(300, seed=1))
    shares = []
    for extra in ([], ["--metadata-prior", f"fit:{warm}"]):
        out_json = tmp_path / "out.json"
        rc, out, err = simulate(
            capsys, "--dataset", str(data), "--seeds", "3", "--learners", "lints",
            "--warm-start", str(warm), "--new-arms", "large", "--json", str(out_json), *extra,
        )  # fmt: skip
        assert rc == 0, err
        assert "never saw large (new arms)" in out
        shares.append(json.loads(out_json.read_text())["learners"]["lints"]["arm_share"]["large"])
    # fitted on the two others' qualities; only the new arm takes it
    assert "without the new arms' qualities, for the new arms only (large)" in out
    assert "small flat; mid flat; large q " in out
    assert shares[0] > 0.03 and shares[1] < shares[0] / 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--new-arms", "large"], "--new-arms needs --warm-start"),
        (["--new-arms", "huge", "--warm-start", "{data}"], "--new-arms: huge not among"),
    ],
)
def test_new_arms_are_refused_without_a_warm_start_or_when_unknown(tmp_path, capsys, argv, message):
    data = write_jsonl(tmp_path / "bench.jsonl", priced_rows(30))
    rc, out, err = simulate(
        capsys, "--dataset", str(data), "--seeds", "1", *[a.format(data=data) for a in argv]
    )
    assert rc == 2 and message in err and err.startswith("simulate: ")
