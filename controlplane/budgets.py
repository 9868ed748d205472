"""Spend budgets per API key or tenant, enforced as a constraint on the arms a request
may be routed to.

A budget (``controlplane.config.Budget``) allows so many US dollars and/or joules per
calendar hour, day or month in UTC. What a budget has spent in its period is

- what Postgres holds: the outcomes (``cost_usd``, ``energy_j``) of the decisions made for
  its key or tenant since the period began (``feedback.repositories.spend``), read when
  the replica starts and again every ``gateway.budget_refresh_s``; plus
- what this replica admitted since and Postgres does not hold yet: each admitted request
  holds its expected cost (the dearest arm it may go to) until its real cost is known,
  and that until its outcome is found in Postgres.

Other replicas' spend shows up at the next refresh: with several replicas a budget can
be overrun by what they spend in one refresh interval.

Before a request is served, :meth:`BudgetTracker.constrain` excludes every arm whose
expected cost for it (:class:`ArmCosts`) is more than a budget has left; when no arm is
left it refuses the request (429 ``budget_exceeded``, ``Retry-After`` until the budget's
period ends). The learner is not told: it learns from whatever was served.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from controlplane.config import BanditConfig, Budget, BudgetPeriod
from controlplane.limits import LimitExceeded
from feedback.repositories import spend as spend_repo
from learners.base import Learner

log = logging.getLogger(__name__)


def period_bounds(now: datetime, period: BudgetPeriod) -> tuple[datetime, datetime]:
    """The calendar period (UTC) holding ``now``: its start and its end."""
    now = now.astimezone(UTC)
    if period == "hour":
        start = now.replace(minute=0, second=0, microsecond=0)
        return start, start + timedelta(hours=1)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return start, start + timedelta(days=1)
    start = start.replace(day=1)
    year, month = divmod(start.month, 12)  # month 12 -> (1, 0): January of the next year
    return start, start.replace(year=start.year + year, month=month + 1)


class ArmCosts:
    """What serving a request on an arm is expected to cost, in USD and joules.

    From the arm's price table (``usd_per_1k_*_tokens``, ``joules_per_token``) times the
    estimated prompt and completion tokens; where the arm has no prices, the arm's mean
    cost (energy) so far from the learner's estimates (0 for an arm never served)."""

    def __init__(self, config: BanditConfig) -> None:
        self.arms = {a.name: a for a in config.arms}
        self.bounds = config.objective.bounds
        self.completion_tokens = config.gateway.expected_completion_tokens
        self._learner: Learner | None = None
        self._means: dict[str, dict[str, float]] = {}

    def completion_estimate(self, body: Mapping[str, Any]) -> int:
        """The request's ``max_completion_tokens`` / ``max_tokens``, else the config's guess."""
        for field in ("max_completion_tokens", "max_tokens"):
            v = body.get(field)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
        return self.completion_tokens

    def expected(
        self,
        arms: Sequence[str],
        prompt_tokens: int,
        completion_tokens: int,
        learner: Learner,
    ) -> dict[str, tuple[float, float]]:
        means = self._learned(learner)
        out = {}
        for name in arms:
            a = self.arms[name]
            learned = means.get(name, {})
            if a.usd_per_1k_prompt_tokens or a.usd_per_1k_completion_tokens:
                usd = (
                    prompt_tokens * a.usd_per_1k_prompt_tokens
                    + completion_tokens * a.usd_per_1k_completion_tokens
                ) / 1000.0
            else:
                usd = learned.get("cost_usd", 0.0)
            if a.joules_per_token:
                joules = a.joules_per_token * (prompt_tokens + completion_tokens)
            else:
                joules = learned.get("energy_j", 0.0)
            out[name] = (usd, joules)
        return out

    def _learned(self, learner: Learner) -> dict[str, dict[str, float]]:
        """Per arm, the learner's mean raw cost and energy (once per policy version)."""
        if learner is not self._learner:
            means: dict[str, dict[str, float]] = {}
            for arm, row in learner.arm_summary().items():
                means[arm] = {
                    c: self._raw(c, row.get(f"mean_{c}")) for c in ("cost_usd", "energy_j")
                }
            self._learner, self._means = learner, means
        return self._means

    def _raw(self, component: str, value: float | None) -> float:
        """The learner's mean in the component's own unit (undo the objective's bounds)."""
        if value is None or not math.isfinite(value):
            return 0.0
        if component in self.bounds:
            lo, hi = self.bounds[component]
            value = lo + value * (hi - lo)
        return max(0.0, float(value))


@dataclass
class _Held:
    """A request this replica admitted under budgets, until its outcome is in Postgres."""

    at: datetime
    budgets: tuple[int, ...]
    usd: float
    joules: float


class BudgetTracker:
    """Every budget's spend in its current period, as this replica knows it.

    Thread-safe: requests hold and settle on the event loop while :meth:`refresh` runs in
    a worker thread. ``clock``: the wall clock (aware UTC datetimes)."""

    def __init__(
        self,
        budgets: Sequence[Budget],
        engine: Engine,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.budgets = tuple(budgets)
        self.engine = engine
        self.clock = clock
        self.by_key: dict[str, list[int]] = {}
        self.by_tenant: dict[str, list[int]] = {}
        for i, b in enumerate(self.budgets):
            if b.key is not None:
                self.by_key.setdefault(b.key, []).append(i)
            else:
                assert b.tenant is not None
                self.by_tenant.setdefault(b.tenant, []).append(i)
        n = len(self.budgets)
        self._lock = threading.Lock()
        self._start: list[datetime | None] = [None] * n  # the period the totals are for
        self._db: list[tuple[float, float]] = [(0.0, 0.0)] * n  # (usd, joules) in Postgres
        self._local: list[tuple[float, float]] = [(0.0, 0.0)] * n  # held, this period
        # the period_bounds last computed for each budget, while ``now`` stays in them
        self._bounds: list[tuple[datetime, datetime] | None] = [None] * n
        self._held: dict[uuid.UUID, _Held] = {}
        self.refreshed_at: datetime | None = None
        self.last_error: str | None = None

    def applicable(self, key_id: str | None, tenant: str | None) -> tuple[int, ...]:
        """The budgets a request of this key and tenant counts against (indexes)."""
        found: list[int] = []
        if key_id is not None:
            found += self.by_key.get(key_id, ())
        if tenant is not None:
            found += self.by_tenant.get(tenant, ())
        return tuple(found)

    # -- the request path ---------------------------------------------

    def constrain(
        self, which: Sequence[int], costs: Mapping[str, tuple[float, float]]
    ) -> frozenset[str]:
        """The arms (of ``costs``) that would overrun one of the budgets ``which``.

        Raises :class:`LimitExceeded` (``budget_exceeded``) when that is all of them, naming
        the budget that excludes the most arms, with ``Retry-After`` until its period ends.
        """
        now = self.clock()
        excluded: set[str] = set()
        blocking: list[tuple[int, int, float]] = []  # (arms excluded, budget, seconds left)
        with self._lock:
            for i in which:
                b = self.budgets[i]
                _, end = self._roll(i, now)
                usd_left, joules_left = self._left(i)
                out = {
                    arm
                    for arm, (usd, joules) in costs.items()
                    if (b.usd is not None and (usd_left <= 0 or usd > usd_left))
                    or (b.joules is not None and (joules_left <= 0 or joules > joules_left))
                }
                if out:
                    blocking.append((len(out), i, (end - now).total_seconds()))
                excluded |= out
            if costs and excluded >= set(costs):
                _, i, wait = max(blocking, key=lambda t: (t[0], -t[2]))
                raise self._refusal(i, now, wait)
        return frozenset(excluded)

    def hold(self, request_id: uuid.UUID, which: Sequence[int], usd: float, joules: float) -> None:
        """Count an admitted request at ``usd`` / ``joules`` until its real cost is known."""
        now = self.clock()
        with self._lock:
            held = _Held(now, tuple(which), usd, joules)
            self._held[request_id] = held
            self._add(held, 1.0)

    def settle(self, request_id: uuid.UUID, usd: float, joules: float) -> None:
        """Replace a held request's expected cost by its real one."""
        with self._lock:
            held = self._held.get(request_id)
            if held is None:  # its outcome is in Postgres already, and counted there
                return
            self._add(held, -1.0)
            held.usd, held.joules = usd, joules
            self._add(held, 1.0)

    def release(self, request_id: uuid.UUID) -> None:
        """Forget a held request that was not served (nothing of it reaches Postgres)."""
        with self._lock:
            held = self._held.pop(request_id, None)
            if held is not None:
                self._add(held, -1.0)

    # -- Postgres -----------------------------------------------------

    def refresh(self) -> None:
        """Read every budget's spend in its current period from Postgres (blocking).

        One snapshot (repeatable read) gives the totals and which held requests they
        already include; those are let go, the others keep counting here."""
        if not self.budgets:
            return
        now = self.clock()
        starts = [period_bounds(now, b.period)[0] for b in self.budgets]
        totals: dict[datetime, dict[tuple[str, str], tuple[float, float]]] = {}
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                for start in set(starts):
                    idx = [i for i, s in enumerate(starts) if s == start]
                    keys = {self.budgets[i].key for i in idx} - {None}
                    tenants = {self.budgets[i].tenant for i in idx} - {None}
                    totals[start] = spend_repo.spend_since(
                        conn,
                        start,
                        [k for k in keys if k is not None],
                        [t for t in tenants if t is not None],
                    )
                with self._lock:
                    ids = list(self._held)
                stored = spend_repo.outcomes_stored(conn, ids)
        with self._lock:
            for i, b in enumerate(self.budgets):
                who = ("key", b.key) if b.key is not None else ("tenant", b.tenant)
                self._start[i] = starts[i]
                self._db[i] = totals[starts[i]].get((who[0], str(who[1])), (0.0, 0.0))
            for rid in stored:
                self._held.pop(rid, None)
            oldest = min(starts)
            for rid in [r for r, h in self._held.items() if h.at < oldest]:
                del self._held[rid]  # from a period that is over for every budget
            self._recount()
            self.refreshed_at = now
            self.last_error = None

    # -- reports ------------------------------------------------------

    def report(self) -> list[dict[str, Any]]:
        """Each budget: its limits, spend, what is left and when it resets (``/v1/stats``)."""
        now = self.clock()
        out = []
        with self._lock:
            for i, b in enumerate(self.budgets):
                start, end = self._roll(i, now)
                usd, joules = self._spent(i)
                out.append(
                    {
                        "name": b.name,
                        "key": b.key,
                        "tenant": b.tenant,
                        "period": b.period,
                        "usd": b.usd,
                        "joules": b.joules,
                        "spent_usd": usd,
                        "spent_joules": joules,
                        "remaining_usd": None if b.usd is None else b.usd - usd,
                        "remaining_joules": None if b.joules is None else b.joules - joules,
                        "period_start": start.isoformat(),
                        "resets_at": end.isoformat(),
                        "refreshed_at": self.refreshed_at.isoformat()
                        if self.refreshed_at
                        else None,
                    }
                )
        return out

    # -- internals (under the lock) -------------------------------------

    def _roll(self, i: int, now: datetime) -> tuple[datetime, datetime]:
        """Start budget ``i``'s new period if ``now`` is past its last one."""
        bounds = self._bounds[i]
        if bounds is None or not bounds[0] <= now < bounds[1]:  # else the same period
            bounds = self._bounds[i] = period_bounds(now, self.budgets[i].period)
        start, end = bounds
        if self._start[i] != start:
            self._start[i] = start
            self._db[i] = (0.0, 0.0)
            self._recount()
        return start, end

    def _recount(self) -> None:
        local = [[0.0, 0.0] for _ in self.budgets]
        for held in self._held.values():
            for i in held.budgets:
                start = self._start[i]
                if start is None or held.at >= start:
                    local[i][0] += held.usd
                    local[i][1] += held.joules
        self._local = [(u, j) for u, j in local]

    def _add(self, held: _Held, sign: float) -> None:
        for i in held.budgets:
            start = self._start[i]
            if start is None or held.at >= start:
                u, j = self._local[i]
                self._local[i] = (u + sign * held.usd, j + sign * held.joules)

    def _spent(self, i: int) -> tuple[float, float]:
        (du, dj), (lu, lj) = self._db[i], self._local[i]
        return du + lu, dj + lj

    def _left(self, i: int) -> tuple[float, float]:
        b = self.budgets[i]
        usd, joules = self._spent(i)
        return (
            math.inf if b.usd is None else b.usd - usd,
            math.inf if b.joules is None else b.joules - joules,
        )

    def _refusal(self, i: int, now: datetime, wait_s: float) -> LimitExceeded:
        b = self.budgets[i]
        _, end = period_bounds(now, b.period)
        usd, joules = self._spent(i)
        parts = []
        if b.usd is not None:
            parts.append(f"${usd:.6g} of ${b.usd:.6g}")
        if b.joules is not None:
            parts.append(f"{joules:.6g} J of {b.joules:.6g} J")
        return LimitExceeded(
            "budget_exceeded",
            b.name,
            f"budget {b.name} leaves no arm that fits this request (spent "
            f"{' and '.join(parts)} this {b.period}); it resets at "
            f"{end.strftime('%Y-%m-%dT%H:%M:%SZ')}",
            wait_s,
        )
