"""Typed errors the HTTP layer maps to status codes (422, 404, 409, 503)."""

from __future__ import annotations


class BanditctlError(Exception):
    """Base class of the errors the data layer raises on purpose."""


class InvalidInput(BanditctlError):
    """A field failed validation; nothing was written (HTTP 422)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFound(BanditctlError):
    """The referenced object does not exist (HTTP 404)."""

    def __init__(self, resource: str, key: object) -> None:
        super().__init__(f"unknown {resource}: {key}")
        self.resource = resource
        self.key = key


class WriterFull(BanditctlError):
    """The decision log buffer is full; the caller must shed load (HTTP 503)."""


class Compacted(BanditctlError):
    """The policy version exists but retention deleted its learner state (HTTP 409)."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"policy version {version} was compacted by retention: its learner state is "
            "deleted, so it cannot be loaded or rolled back to (list the kept versions "
            "with GET /v1/policies)"
        )
        self.version = version
