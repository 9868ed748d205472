"""Arms on the real server: upsert, retire, list."""

from __future__ import annotations

import pytest

from feedback.errors import NotFound
from feedback.repositories import arms
from tests.feedback.factories import ARMS


def test_arms_upsert_retire_and_list(db):
    with db.begin() as conn:
        arms.retire_arm(conn, "large")
        assert [a.id for a in arms.list_arms(conn, active_only=True)] == ["base:sql", "small"]
        arms.upsert_arms(conn, [a for a in ARMS if a.id == "large"])  # re-adding revives it
        assert len(arms.list_arms(conn, active_only=True)) == 3
        with pytest.raises(NotFound):
            arms.retire_arm(conn, "ghost")
