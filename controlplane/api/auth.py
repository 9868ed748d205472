"""API keys and their scopes: who may chat, post feedback and roll a policy back.

The config names each key by id (``name``) with ``key_env`` (the environment variable
holding the key, read when the app is built) or ``key_sha256`` (its hex SHA-256). Only
the SHA-256 of each key is kept; a request shows a key as ``Authorization: Bearer
<key>``, whose SHA-256 is compared with every known one in constant time. Logs and
decision rows carry the key's id, never the key.

Scopes: ``chat`` (chat completions, models, route explain; open to anyone under
``auth: {open_chat: true}``), ``feedback``, ``read`` (the dashboard's data and the
budgets in ``/v1/stats``; open to anyone under ``auth: {open_dashboard: true}``),
``admin`` (all of them, rollback too).
Feedback without a key needs the answer's signed feedback token instead.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import uuid
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from fastapi import Depends, Request

from controlplane.api.errors import AuthError
from controlplane.config import ApiKey
from controlplane.tokens import FeedbackTokens, TokenError

log = logging.getLogger(__name__)

INVALID_KEY = "invalid_api_key"
INSUFFICIENT_SCOPE = "insufficient_scope"


def key_digest(raw: str) -> bytes:
    return hashlib.sha256(raw.encode()).digest()


class ApiKeys:
    """The configured keys, by the SHA-256 of the key (the raw keys are not kept)."""

    def __init__(
        self, config_keys: Iterable[ApiKey], environ: Mapping[str, str] | None = None
    ) -> None:
        env = os.environ if environ is None else environ
        self._keys: list[tuple[bytes, ApiKey]] = []
        for k in config_keys:
            if k.key_sha256 is not None:
                digest = bytes.fromhex(k.key_sha256)
            else:
                assert k.key_env is not None
                raw = env.get(k.key_env)
                if not raw:
                    log.warning("API key %s is disabled: %s is not set", k.name, k.key_env)
                    continue
                digest = key_digest(raw)
            if any(hmac.compare_digest(digest, d) for d, _ in self._keys):
                raise ValueError(f"API key {k.name!r} is the same key as another one")
            self._keys.append((digest, k))

    def lookup(self, raw: str) -> ApiKey | None:
        """The key whose SHA-256 matches ``raw``'s; every stored digest is compared, each
        in constant time, so the time taken does not tell which one matched."""
        digest = key_digest(raw)
        found = None
        for known, key in self._keys:
            if hmac.compare_digest(digest, known):
                found = key
        return found

    def identify(self, request: Request) -> ApiKey | None:
        """The key the request shows; None without one. 401 for an unknown key."""
        raw = _bearer(request)
        if raw is None:
            return None
        key = self.lookup(raw)
        if key is None:
            raise AuthError(401, "unknown API key", INVALID_KEY)
        return key

    def scopes(self, request: Request) -> set[str] | None:
        key = self.identify(request)
        return None if key is None else set(key.scopes)


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if not auth.lower().startswith("bearer "):
        return None
    return auth[7:].strip() or None


async def get_api_keys(request: Request) -> ApiKeys:
    keys: ApiKeys = request.app.state.api_keys
    return keys


ApiKeysDep = Annotated[ApiKeys, Depends(get_api_keys)]


async def chat_key(request: Request, keys: ApiKeysDep) -> ApiKey | None:
    """The key a chat, models or explain request is made with (None: anonymous).

    Needs a key with the ``chat`` (or ``admin``) scope: 401 without a key or with an
    unknown one, 403 with a key that lacks the scope. Under ``auth.open_chat`` anyone may
    call: a known key is still identified (logged and limited), an unknown one ignored
    (OpenAI clients always send one)."""
    if request.app.state.core.config.auth.open_chat:
        raw = _bearer(request)
        return None if raw is None else keys.lookup(raw)
    key = keys.identify(request)
    if key is None:
        raise AuthError(
            401,
            "this endpoint needs an API key with the chat scope (Authorization: Bearer)",
            INVALID_KEY,
        )
    if "chat" not in key.scopes and "admin" not in key.scopes:
        log.info("API key %s refused: no chat scope", key.name)
        raise AuthError(403, "API key lacks the chat scope", INSUFFICIENT_SCOPE)
    return key


ChatKeyDep = Annotated[ApiKey | None, Depends(chat_key)]


def may_read(request: Request, keys: ApiKeys) -> bool:
    """Whether the caller may read per-user data (recent feedback, budgets): the config
    opens the dashboard, or the request shows a key with the read or admin scope. An
    unknown key is refused (401) rather than treated as anonymous."""
    if request.app.state.core.config.auth.open_dashboard:
        return True
    scopes = keys.scopes(request)
    return scopes is not None and bool(scopes & {"read", "admin"})


async def read_key(request: Request, keys: ApiKeysDep) -> None:
    """The dashboard's data endpoints: 401 without a key, 403 without the read scope,
    unless ``auth.open_dashboard``."""
    if may_read(request, keys):
        return
    if keys.identify(request) is None:
        raise AuthError(
            401,
            "the dashboard's data needs an API key with the read scope (Authorization: Bearer)",
            INVALID_KEY,
        )
    raise AuthError(403, "API key lacks the read scope", INSUFFICIENT_SCOPE)


ReadDep = Depends(read_key)


def authorise_feedback(
    request: Request,
    payload: dict[str, Any],
    rid: uuid.UUID,
    keys: ApiKeys,
    tokens: FeedbackTokens,
) -> bool:
    """Returns whether the decision must already be stored (API key path)."""
    token = payload.get("feedback_token") or request.headers.get("x-feedback-token")
    scopes = keys.scopes(request)
    if scopes is not None:
        if "feedback" not in scopes and "admin" not in scopes:
            raise AuthError(403, "API key lacks the feedback scope", INSUFFICIENT_SCOPE)
        return True
    if not token:
        raise AuthError(
            401, "feedback needs the answer's feedback_token or an API key", INVALID_KEY
        )
    try:
        tokens.verify(str(token), rid)
    except TokenError as exc:
        raise AuthError(403 if exc.expired else 401, str(exc)) from None
    return False


def authorise_rollback(request: Request, keys: ApiKeys) -> None:
    granted = keys.scopes(request)
    if granted is None:
        raise AuthError(401, "rollback needs an API key with the admin scope", INVALID_KEY)
    if "admin" not in granted:
        raise AuthError(403, "API key lacks the admin scope", INSUFFICIENT_SCOPE)
