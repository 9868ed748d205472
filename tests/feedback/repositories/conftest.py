from __future__ import annotations

import pytest
from sqlalchemy import Engine

from feedback.repositories import arms
from tests.feedback.factories import ARMS


@pytest.fixture
def db(engine: Engine) -> Engine:
    """The test engine, on empty tables but for the factory arms."""
    with engine.begin() as conn:
        arms.upsert_arms(conn, ARMS)
    return engine
