"""Faults on the real test database: connections of one application killed with
``pg_terminate_backend`` (the server itself is never stopped: others use it)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import Engine, create_engine, text


def tagged_engine(url: str, **kwargs: Any) -> tuple[Engine, str]:
    """An engine whose connections carry an application name of their own, to be killed."""
    name = f"fault-{uuid.uuid4().hex[:10]}"
    kwargs.setdefault("pool_pre_ping", True)
    engine = create_engine(url, connect_args={"application_name": name}, **kwargs)
    return engine, name


def kill(admin: Engine, application_name: str, query_like: str | None = None) -> int:
    """Terminate the backends of ``application_name`` (only those running a query like
    ``query_like`` when given); returns how many."""
    sql = (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = :app AND pid <> pg_backend_pid()"
    )
    params: dict[str, Any] = {"app": application_name}
    if query_like is not None:
        sql += " AND query LIKE :q"
        params["q"] = query_like
    with admin.connect() as conn:
        n = int(conn.execute(text(sql), params).scalar_one())
        conn.commit()
    return n


def wait_for_query(admin: Engine, application_name: str, query_like: str, timeout_s=10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with admin.connect() as conn:
            found = conn.execute(
                text(
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = :app "
                    "AND state = 'active' AND query LIKE :q"
                ),
                {"app": application_name, "q": query_like},
            ).first()
        if found:
            return
        time.sleep(0.02)
    raise AssertionError(
        f"no query like {query_like!r} from {application_name} within {timeout_s}s"
    )


def kill_pid(admin: Engine, pid: int) -> None:
    with admin.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
        conn.commit()


def wait_until(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)
