"""Signed feedback tokens: ``v1.<request_id>.<expiry>.<hmac>``.

The gateway hands one out with every answer; ``POST /v1/feedback`` accepts it
as proof that the caller received that answer, for that request id only,
until it expires. HMAC-SHA256 over the id and expiry with a shared secret,
so any gateway replica can verify what another signed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid

MAX_TOKEN_CHARS = 256


class TokenError(Exception):
    def __init__(self, reason: str, expired: bool = False) -> None:
        super().__init__(reason)
        self.expired = expired


class FeedbackTokens:
    def __init__(self, secret: str, ttl_s: float) -> None:
        if len(secret) < 16:
            raise ValueError("feedback token secret must be at least 16 characters")
        self._key = secret.encode()
        self.ttl_s = ttl_s

    def _sig(self, rid: str, exp: int) -> str:
        mac = hmac.new(self._key, f"v1.{rid}.{exp}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def issue(self, request_id: uuid.UUID, now: float | None = None) -> str:
        exp = int((time.time() if now is None else now) + self.ttl_s)
        rid = str(request_id)
        return f"v1.{rid}.{exp}.{self._sig(rid, exp)}"

    def verify(self, token: str, request_id: uuid.UUID, now: float | None = None) -> None:
        """Raise :class:`TokenError` unless ``token`` is valid for ``request_id`` now."""
        # only what we issue gets past here: ASCII, bounded, ASCII digits for the expiry
        # (str.isdigit() alone takes "²" and Arabic-Indic digits)
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not token.isascii():
            raise TokenError("malformed feedback token")
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != "v1":
            raise TokenError("malformed feedback token")
        _, rid, exp_s, sig = parts
        if not (exp_s.isdigit() and len(exp_s) <= 12):
            raise TokenError("malformed feedback token")
        if not hmac.compare_digest(sig, self._sig(rid, int(exp_s))):
            raise TokenError("invalid feedback token signature")
        if rid != str(request_id):
            raise TokenError("feedback token was issued for another request")
        if int(exp_s) < (time.time() if now is None else now):
            raise TokenError("feedback token expired", expired=True)
