"""The per-address limit on anonymous requests (:mod:`controlplane.address_limits`), as a
dependency of every route: a request that shows no known API key counts against its
client address, before anything else is done for it. ``/healthz`` is never limited (the
probes of an orchestrator come from one address)."""

from __future__ import annotations

from fastapi import Request

from controlplane.admission import Admission
from controlplane.api.auth import ApiKeys, _bearer

EXEMPT = frozenset({"/healthz"})


async def limit_anonymous(request: Request) -> None:
    admission: Admission = request.app.state.admission
    if admission.addresses.per_minute is None or request.url.path in EXEMPT:
        return
    keys: ApiKeys = request.app.state.api_keys
    raw = _bearer(request)
    if raw is not None and keys.lookup(raw) is not None:
        return  # keyed traffic: the key's own limits apply
    peer = request.client.host if request.client is not None else None
    forwarded = ",".join(request.headers.getlist("x-forwarded-for")) or None
    admission.addresses.take(admission.clients.client(peer, forwarded))
