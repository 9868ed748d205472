"""``bench/bench_gateway.py`` calls its throughput target met only on an interval above it."""

from __future__ import annotations

import math
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from bench_gateway import ratio_interval  # noqa: E402


def test_equal_rounds_give_a_point_interval() -> None:
    mean, lo, hi = ratio_interval([0.95, 0.95, 0.95])
    assert math.isclose(mean, 0.95) and math.isclose(lo, 0.95) and math.isclose(hi, 0.95)


def test_the_interval_is_on_the_geometric_mean_and_widens_with_spread() -> None:
    mean, lo, hi = ratio_interval([0.8, 1.25])  # log ratios -0.223 and +0.223
    assert math.isclose(mean, 1.0)
    assert lo < 0.8 and hi > 1.25  # two rounds: t(0.975, 1) = 12.7 standard errors
    narrow = ratio_interval([0.93, 0.95, 0.94, 0.96, 0.95])
    wide = ratio_interval([0.75, 1.10, 0.90, 1.05, 0.80])
    assert narrow[1] > 0.9 and wide[1] < 0.9
    assert narrow[2] - narrow[1] < wide[2] - wide[1]


def test_one_round_gives_no_interval() -> None:
    mean, lo, hi = ratio_interval([0.9])
    assert math.isclose(mean, 0.9) and math.isnan(lo) and math.isnan(hi)
