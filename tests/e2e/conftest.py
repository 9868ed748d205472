"""The e2e fixtures (``ray_session``, ``deployed``) live in ``tests/ray_fixtures.py``,
shared with the browser tests; the names below stay importable from here."""

from __future__ import annotations

from tests.ray_fixtures import (  # noqa: F401
    ADMIN_KEY,
    FEEDBACK_KEY,
    READONLY_KEY,
    SECRET,
    Deployed,
    e2e_config,
)
