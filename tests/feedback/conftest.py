"""Fixtures of the data-layer tests."""

from __future__ import annotations

import pytest

from feedback.repositories import arms as arms_repo
from tests.feedback.factories import ARMS


@pytest.fixture
def arms(engine):
    """The test database's engine, with :data:`ARMS` registered."""
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, ARMS)
    return engine
