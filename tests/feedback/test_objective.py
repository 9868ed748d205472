"""The objective is pure: scalarisation, normalisation and the missing-quality rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from feedback.objective import Objective

finite = st.floats(-1e6, 1e6, allow_nan=False)


def test_parse_weights_and_reward():
    obj = Objective.parse_weights("quality=1,cost_usd=-30")
    assert obj.weight_vector.tolist() == [1.0, 0.0, 0.0, -30.0]
    assert obj.reward(quality=0.9, energy_j=5.0, latency_ms=300.0, cost_usd=0.01) == pytest.approx(
        0.6
    )


@pytest.mark.parametrize("spec", ["quality", "accuracy=1", "quality=abc"])
def test_bad_weight_specs_are_refused(spec):
    with pytest.raises(ValueError):
        Objective.parse_weights(spec)


def test_bounds_must_be_ordered_and_known():
    with pytest.raises(ValidationError):
        Objective(bounds={"latency_ms": (100.0, 10.0)})
    with pytest.raises(ValidationError):
        Objective(bounds={"tokens": (0.0, 1.0)})


@given(st.lists(st.tuples(finite, finite, finite, finite), min_size=1, max_size=20))
def test_bounded_components_normalise_into_unit_interval(rows):
    obj = Objective(bounds={"energy_j": (0.0, 100.0), "latency_ms": (0.0, 5000.0)})
    out = obj.normalize(np.array(rows))
    assert np.all((out[:, 1:3] >= 0) & (out[:, 1:3] <= 1))
    np.testing.assert_array_equal(out[:, [0, 3]], np.array(rows)[:, [0, 3]])


@given(st.tuples(finite, finite, finite, finite), st.lists(finite, min_size=4, max_size=4))
def test_scalar_is_linear_in_the_normalised_vector(row, w):
    obj = Objective(
        weights=dict(zip(["quality", "energy_j", "latency_ms", "cost_usd"], w, strict=True))
    )
    assert obj.scalarize(np.array(row)) == pytest.approx(float(np.dot(row, w)), rel=1e-9, abs=1e-6)


def test_missing_quality_rule():
    obj = Objective(feedback_window_s=10, prior_quality=0.3, error_quality=0.0)
    assert obj.resolve_quality(status="error", feedback_quality=0.9, age_s=0) == ("error", 0.0)
    assert obj.resolve_quality(status="ok", feedback_quality=0.9, age_s=0) == ("feedback", 0.9)
    assert obj.resolve_quality(status="ok", feedback_quality=None, age_s=9.9) is None
    assert obj.resolve_quality(status="ok", feedback_quality=None, age_s=10) == ("prior", 0.3)
    skip = obj.model_copy(update={"missing_quality": "skip"})
    assert skip.resolve_quality(status="ok", feedback_quality=None, age_s=11) == ("skip", None)


def test_version_changes_with_the_config():
    a, b = Objective(), Objective.parse_weights("quality=1,cost_usd=-10")
    assert a.version != b.version and a.version == Objective().version
