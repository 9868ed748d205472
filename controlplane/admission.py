"""Whether a chat request may be served, and on which arms: rate limits, then budgets
(and, for every route, the per-address limit on anonymous requests:
:mod:`controlplane.api.flood`).

:meth:`Admission.admit` runs before anything is decided or logged; a refused request
raises :class:`controlplane.limits.LimitExceeded` (HTTP 429) and leaves no decision row.
An admitted one gets a :class:`Ticket`: the arms its budgets exclude (the gateway
selects among the rest) and what to settle once the answer is in
(:meth:`Admission.settle`): the tokens it really used, and its real cost.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from controlplane.address_limits import AddressLimiter, ClientAddresses
from controlplane.budgets import ArmCosts, BudgetTracker
from controlplane.config import ApiKey, BanditConfig
from controlplane.limits import RateLimiter, estimate_prompt_tokens
from learners.base import Learner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ticket:
    request_id: uuid.UUID
    key: ApiKey | None
    prompt_tokens: int  # the estimate the token limit took
    exclude: frozenset[str]  # arms the budgets leave out
    budgeted: bool  # whether budgets hold this request's cost


def request_tenant(key: ApiKey | None, body: Mapping[str, Any]) -> str | None:
    """The tenant a request counts as: its key's, else ``metadata.tenant`` (as logged)."""
    if key is not None and key.tenant is not None:
        return key.tenant
    meta = body.get("metadata")
    tenant = meta.get("tenant") if isinstance(meta, Mapping) else None
    return None if tenant is None else str(tenant)[:200]


class Admission:
    """One per gateway replica. ``clock``: monotonic seconds (rate limits); ``now``: the
    wall clock in UTC (budget periods)."""

    def __init__(
        self,
        config: BanditConfig,
        engine: Engine,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.limits = RateLimiter(config.api_keys, clock)
        # anonymous requests, per client address (controlplane.api.flood)
        self.addresses = AddressLimiter.from_limits(config.limits, clock)
        self.clients = ClientAddresses(
            config.limits.trusted_proxies, config.limits.anonymous_ipv6_prefix
        )
        self.budgets = BudgetTracker(config.budgets, engine, clock=now)
        self.costs = ArmCosts(config)
        self.refresh_s = config.gateway.budget_refresh_s
        self._refreshing: asyncio.Task[None] | None = None
        self._tried_at: datetime | None = None

    async def admit(
        self,
        key: ApiKey | None,
        body: Mapping[str, Any],
        arms: Sequence[str],
        learner: Learner,
        request_id: uuid.UUID,
    ) -> Ticket:
        """Check the key's rate limits and the request's budgets; count it if admitted."""
        prompt = estimate_prompt_tokens(body)
        which = self.budgets.applicable(key.name if key else None, request_tenant(key, body))
        if which:
            await self.keep_fresh()
        if key is not None:
            self.limits.check(key, prompt)
        exclude: frozenset[str] = frozenset()
        usd = joules = 0.0
        if which:
            completion = self.costs.completion_estimate(body)
            costs = self.costs.expected(arms, prompt, completion, learner)
            exclude = self.budgets.constrain(which, costs)
            allowed = [costs[a] for a in arms if a not in exclude]
            usd = max(c[0] for c in allowed)
            joules = max(c[1] for c in allowed)
        # nothing awaited since the checks: count the request in both at once
        if key is not None:
            self.limits.take(key, prompt)
        if which:
            self.budgets.hold(request_id, which, usd, joules)
        return Ticket(request_id, key, prompt, exclude, bool(which))

    def settle(self, ticket: Ticket, result: Mapping[str, Any] | None) -> None:
        """The answer (``None``: the request failed): its real tokens and cost."""
        if result is None:
            if ticket.budgeted:
                self.budgets.release(ticket.request_id)
            return
        if ticket.key is not None:
            used = int(result.get("usage", {}).get("total_tokens", ticket.prompt_tokens))
            self.limits.settle(ticket.key, ticket.prompt_tokens, used)
        if ticket.budgeted:
            meta = result.get("banditctl", {})
            self.budgets.settle(
                ticket.request_id,
                float(meta.get("cost_usd", 0.0)),
                float(meta.get("energy_j", 0.0)),
            )

    async def keep_fresh(self) -> None:
        """Seed the budgets from Postgres on first use (waiting for it); after that,
        refresh them in the background once ``gateway.budget_refresh_s`` has passed since
        the last try."""
        if not self.budgets.budgets:
            return
        if self._tried_at is None:  # not seeded: concurrent first requests each wait
            await self._refresh()
            return
        stale = (self.budgets.clock() - self._tried_at).total_seconds() >= self.refresh_s
        if stale and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.create_task(self._refresh())

    async def _refresh(self) -> None:
        try:
            await asyncio.to_thread(self.budgets.refresh)
        except Exception as exc:  # keep enforcing what is known; tried again when stale
            self.budgets.last_error = repr(exc)[:500]
            log.warning("budget refresh failed: %r", exc)
        finally:
            self._tried_at = self.budgets.clock()
