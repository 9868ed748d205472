"""Signed feedback tokens: ``v2.<key_id>.<request_id>.<expiry>.<hmac>``.

The gateway hands one out with every answer; ``POST /v1/feedback`` accepts it
as proof that the caller received that answer, for that request id only,
until it expires. HMAC-SHA256 over the key id, the request id and the expiry
with a shared secret, so any gateway replica can verify what another signed.

Secrets rotate by key id (``auth.feedback_tokens``): new tokens are always
signed with the current secret (``BANDITCTL_FEEDBACK_SECRET``, id ``key_id``);
a previous secret, listed with its id, the environment variable holding it and
``expires_at``, still verifies the tokens it signed until then, and after that
they are refused as expired (403). A token whose key id is not configured at
all is refused as unknown (401). Tokens from before key ids (``v1.<request_id>.
<expiry>.<hmac>``) count as signed by the key id ``default``, the current
secret's id until the first rotation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controlplane.config import BanditConfig

log = logging.getLogger(__name__)

MAX_TOKEN_CHARS = 256
MIN_SECRET_CHARS = 16
LEGACY_KEY_ID = "default"  # the key id of a v1 token (no key id in it)


class TokenError(Exception):
    def __init__(self, reason: str, expired: bool = False) -> None:
        super().__init__(reason)
        self.expired = expired


@dataclass(frozen=True)
class PreviousSecret:
    """A secret that signed tokens before the current one: it verifies them until
    ``expires_at`` (Unix seconds), and no token after."""

    key_id: str
    secret: str
    expires_at: float


class FeedbackTokens:
    """Issues tokens with the current secret (``key_id``) and verifies them with it or
    with a previous secret still within its grace period. ``clock``: Unix seconds."""

    def __init__(
        self,
        secret: str,
        ttl_s: float,
        *,
        key_id: str = LEGACY_KEY_ID,
        previous: Iterable[PreviousSecret] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        _check_secret(key_id, secret)
        self.key_id = key_id
        self.ttl_s = ttl_s
        self.clock = clock
        self._keys: dict[str, bytes] = {key_id: secret.encode()}
        self._expires: dict[str, float] = {}
        for p in previous:
            _check_secret(p.key_id, p.secret)
            if p.key_id in self._keys:
                raise ValueError(f"feedback token key id {p.key_id!r} is configured twice")
            self._keys[p.key_id] = p.secret.encode()
            self._expires[p.key_id] = p.expires_at

    @classmethod
    def from_config(
        cls,
        secret: str,
        config: BanditConfig,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> FeedbackTokens:
        """The current ``secret`` under the config's ``auth.feedback_tokens.key_id``, and
        each previous secret read from its environment variable (one that is unset is
        left out, with a warning: its tokens are then refused as unknown)."""
        env = os.environ if environ is None else environ
        spec = config.auth.feedback_tokens
        previous = []
        for p in spec.previous:
            raw = env.get(p.secret_env)
            if not raw:
                log.warning(
                    "feedback token key %s is disabled: %s is not set", p.key_id, p.secret_env
                )
                continue
            previous.append(PreviousSecret(p.key_id, raw, p.expires_at.timestamp()))
        return cls(
            secret,
            config.gateway.feedback_token_ttl_s,
            key_id=spec.key_id,
            previous=previous,
            clock=clock,
        )

    def _sig(self, key: bytes, message: str) -> str:
        # hmac.new, not the one-shot hmac.digest: the one-shot lets the GIL go around
        # OpenSSL's call, and on a gateway replica another thread then holds it for
        # up to the switch interval (5 ms) before the request goes on; the same MAC
        mac = hmac.new(key, message.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def issue(self, request_id: uuid.UUID, now: float | None = None) -> str:
        exp = int((self.clock() if now is None else now) + self.ttl_s)
        body = f"v2.{self.key_id}.{request_id}.{exp}"
        return f"{body}.{self._sig(self._keys[self.key_id], body)}"

    def verify(self, token: str, request_id: uuid.UUID, now: float | None = None) -> None:
        """Raise :class:`TokenError` unless ``token`` is valid for ``request_id`` now."""
        # only what we issue gets past here: ASCII, bounded, ASCII digits for the expiry
        # (str.isdigit() alone takes "²" and Arabic-Indic digits)
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not token.isascii():
            raise TokenError("malformed feedback token")
        parts = token.split(".")
        if len(parts) == 5 and parts[0] == "v2":
            _, key_id, rid, exp_s, sig = parts
            body = f"v2.{key_id}.{rid}.{exp_s}"
        elif len(parts) == 4 and parts[0] == "v1":
            _, rid, exp_s, sig = parts
            key_id, body = LEGACY_KEY_ID, f"v1.{rid}.{exp_s}"
        else:
            raise TokenError("malformed feedback token")
        if not (exp_s.isdigit() and len(exp_s) <= 12):
            raise TokenError("malformed feedback token")
        key = self._keys.get(key_id)
        if key is None:
            raise TokenError("feedback token signed with an unknown key")
        if not hmac.compare_digest(sig, self._sig(key, body)):
            raise TokenError("invalid feedback token signature")
        if rid != str(request_id):
            raise TokenError("feedback token was issued for another request")
        at = self.clock() if now is None else now
        retired = self._expires.get(key_id)
        if retired is not None and retired <= at:
            when = datetime.fromtimestamp(retired, UTC).isoformat(timespec="seconds")
            raise TokenError(
                f"feedback token expired: its key {key_id} was retired at {when}", expired=True
            )
        if int(exp_s) < at:
            raise TokenError("feedback token expired", expired=True)


def _check_secret(key_id: str, secret: str) -> None:
    if len(secret) < MIN_SECRET_CHARS:
        raise ValueError(
            f"feedback token secret {key_id!r} must be at least {MIN_SECRET_CHARS} characters"
        )
