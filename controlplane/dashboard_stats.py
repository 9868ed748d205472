"""The dashboard's arithmetic: time windows, confidence intervals, the baseline arm
and how the policy compares with it. Pure functions over numbers the repositories
return (no SQL, no HTTP).

- *window*: every figure of the page covers the decisions made in the last
  ``seconds`` (None: all time).
- *interval*: a mean's 95% confidence interval, ``mean ± t(0.975, n-1) sd / sqrt(n)``
  (Student's t, so that 2 values give a wide interval, as they should), its
  variance moderated toward the pooled spread of all arms with the weight of 2
  values, so that a few values that happen to agree do not read as certain; none
  for fewer than 2 values.
- *best arm* (the baseline of every card): the arm with the highest mean reward
  over its credited decisions in the window, among arms with at least
  ``min(10, the most any arm has)`` of them. Each arm served its own share of the
  requests, not all of them (the CLI's demo replays every model on every request;
  the dashboard sees only what was served), so an arm kept on the tasks it is good
  at looks better here than it would on all traffic: an estimate, not a replay.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from scipy import stats

BEST_ARM_MIN_REWARDED = 10
# the prior spread's weight in an interval, in values (see mean_interval)
PRIOR_DF = 2.0
BEST_ARM_RULE = (
    "the arm with the highest mean reward over its credited decisions in the window, "
    f"among arms with at least min({BEST_ARM_MIN_REWARDED}, the most any arm has) of them"
)
_NAMED = {300.0: "last 5 min", 3600.0: "last hour", 86400.0: "last 24 h"}


@dataclass(frozen=True)
class Window:
    """The decisions made in the ``seconds`` before ``until`` (None: all time)."""

    seconds: float | None
    until: datetime

    @property
    def since(self) -> datetime | None:
        return None if self.seconds is None else self.until - timedelta(seconds=self.seconds)

    @property
    def label(self) -> str:
        s = self.seconds
        if s is None:
            return "all time"
        if s in _NAMED:
            return _NAMED[s]
        for unit, name in ((86400.0, "d"), (3600.0, "h"), (60.0, "min")):
            if s >= unit and s % unit == 0:
                return f"last {s / unit:g} {name}"
        return f"last {s:g} s"

    def as_dict(self) -> dict[str, Any]:
        since = self.since
        return {
            "seconds": self.seconds,
            "label": self.label,
            "since": None if since is None else since.isoformat(),
            "until": self.until.isoformat(),
        }


def mean_interval(
    n: int,
    mean: float | None,
    sd: float | None,
    level: float = 0.95,
    prior_sd: float | None = None,
    prior_n: float = PRIOR_DF,
) -> tuple[float, float] | None:
    """``mean ± t sd / sqrt(n)``: the ``level`` confidence interval of a mean of ``n``
    values with sample standard deviation ``sd``; None for fewer than 2 values.

    With ``prior_sd`` (the pooled spread of the other arms, :func:`pooled_sd`), the
    variance is moderated: ``((n-1) sd^2 + prior_n prior_sd^2) / (n-1 + prior_n)``
    on ``n-1 + prior_n`` degrees of freedom, so a few values that happen to agree
    (2 answers both rated 1) do not read as a near-certain mean; with many values
    the prior's weight vanishes and the interval is the plain one."""
    if n < 2 or mean is None or sd is None or not math.isfinite(sd):
        return None
    df = float(n - 1)
    var = sd * sd
    if prior_sd is not None and math.isfinite(prior_sd) and prior_n > 0:
        var = (df * var + prior_n * prior_sd * prior_sd) / (df + prior_n)
        df += prior_n
    half = float(stats.t.ppf(0.5 + level / 2, df)) * math.sqrt(var) / math.sqrt(n)
    return (mean - half, mean + half)


def pooled_sd(groups: Iterable[tuple[int, float | None]]) -> float | None:
    """The pooled within-group standard deviation of ``(n, sd)`` pairs,
    ``sqrt(sum (n-1) sd^2 / sum (n-1))``; None when no group has 2 values."""
    num = den = 0.0
    for n, sd in groups:
        if n >= 2 and sd is not None and math.isfinite(sd):
            num += (n - 1) * sd * sd
            den += n - 1
    return math.sqrt(num / den) if den else None


def best_arm(arms: Sequence[dict[str, Any]], n_key: str = "reward_n") -> dict[str, Any] | None:
    """The row of ``arms`` with the highest ``mean_reward`` among those whose ``n_key``
    (credited decisions) is at least ``min(10, the largest n_key)``; None if no arm
    has one. Ties go to the arm with more credited decisions, then by name."""
    rated = [a for a in arms if a.get(n_key) and a.get("mean_reward") is not None]
    if not rated:
        return None
    floor = min(BEST_ARM_MIN_REWARDED, max(int(a[n_key]) for a in rated))
    eligible = [a for a in rated if a[n_key] >= floor]
    return max(eligible, key=lambda a: (a["mean_reward"], a[n_key], _desc(a["arm"])))


def _desc(name: str) -> tuple[int, ...]:
    """A key that sorts names in reverse, so ``max`` prefers the first by name."""
    return tuple(-ord(c) for c in name)


def compare(ours: float | None, theirs: float | None) -> dict[str, Any]:
    """Our mean cost (or energy) per answer against the baseline arm's.

    ``ratio`` = ours / theirs; ``saved`` = theirs - ours; ``saved_pct`` = 100 saved /
    theirs; ``figure``: "62.3% less", "18.0% more", or from twice the baseline on,
    "2.1× as much" (a saving of -110% says nothing a reader can use)."""
    out: dict[str, Any] = {"ours": ours, "theirs": theirs, "ratio": None, "saved": None,
                           "saved_pct": None, "figure": None}  # fmt: skip
    if ours is None or theirs is None:
        return out
    out["saved"] = theirs - ours
    if theirs <= 0:
        return out
    ratio = ours / theirs
    out["ratio"] = ratio
    out["saved_pct"] = 100.0 * (1.0 - ratio)
    out["figure"] = ratio_figure(ratio)
    return out


def ratio_figure(ratio: float) -> str:
    """How ``ours / theirs`` reads on a card."""
    if ratio <= 1.0:
        return f"{100.0 * (1.0 - ratio):.1f}% less"
    if ratio < 2.0:
        return f"{100.0 * (ratio - 1.0):.1f}% more"
    return f"{ratio:.1f}× as much"
