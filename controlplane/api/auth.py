"""API keys and their scopes; who may post feedback and roll a policy back.

The keys are the values of the environment variables the config's ``api_keys``
name, read when the app is built; a request shows one as
``Authorization: Bearer <key>``. Feedback without a key needs the answer's
signed feedback token instead.
"""

from __future__ import annotations

import os
import uuid
from typing import Annotated, Any

from fastapi import Depends, Request

from controlplane.api.errors import AuthError
from controlplane.tokens import FeedbackTokens, TokenError


class ApiKeys:
    def __init__(self, config_keys: Any) -> None:
        self.keys: dict[str, set[str]] = {}
        for k in config_keys:
            value = os.environ.get(k.key_env)
            if value:
                self.keys[value] = set(k.scopes)

    def scopes(self, request: Request) -> set[str] | None:
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return None
        key = auth[7:].strip()
        if key not in self.keys:
            raise AuthError(401, "unknown API key")
        return self.keys[key]


async def get_api_keys(request: Request) -> ApiKeys:
    keys: ApiKeys = request.app.state.api_keys
    return keys


ApiKeysDep = Annotated[ApiKeys, Depends(get_api_keys)]


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
            raise AuthError(403, "API key lacks the feedback scope")
        return True
    if not token:
        raise AuthError(401, "feedback needs the answer's feedback_token or an API key")
    try:
        tokens.verify(str(token), rid)
    except TokenError as exc:
        raise AuthError(403 if exc.expired else 401, str(exc)) from None
    return False


def authorise_rollback(request: Request, keys: ApiKeys) -> None:
    granted = keys.scopes(request)
    if granted is None:
        raise AuthError(401, "rollback needs an API key with the admin scope")
    if "admin" not in granted:
        raise AuthError(403, "API key lacks the admin scope")
