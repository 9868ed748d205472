"""COPY helpers shared by the bulk write paths (request log, feedback batches)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, IntegrityError


def copy_into(
    conn: Connection,
    target: str,
    cols: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    types: Sequence[str] | None = None,
) -> None:
    """COPY ``rows`` into ``target``'s ``cols``. ``types``: the columns' PostgreSQL types,
    one per column, exactly as the table has them: the rows then go in COPY's binary
    format, which costs the client about half the CPU of the text format (no bytea hex,
    no float or timestamp text); a wrong type fails the COPY."""
    statement = f"COPY {target} ({', '.join(cols)}) FROM STDIN"
    if types is not None:
        statement += " (FORMAT BINARY)"
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(statement) as copy:
            if types is not None:
                copy.set_types(list(types))
            for row in rows:
                copy.write_row(row)
    except psycopg.Error as exc:  # surface driver errors as SQLAlchemy's, like every other call
        raise DBAPIError.instance(statement, None, exc, psycopg.Error) from exc
    finally:
        cursor.close()


def copy_insert(
    conn: Connection,
    table: str,
    cols: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    returning: str | None = None,
    types: Sequence[str] | None = None,
) -> list[Any]:
    """COPY rows into a temp twin of ``table``, then insert them, skipping known keys.

    Returns the ``returning`` expression of each inserted row (empty if None).
    """
    if not rows:
        return []
    tmp = f"_in_{table}"
    collist = ", ".join(cols)
    conn.execute(
        text(
            f"CREATE TEMP TABLE IF NOT EXISTS {tmp} ON COMMIT DELETE ROWS AS "
            f"SELECT {collist} FROM {table} WITH NO DATA"
        )
    )
    conn.execute(text(f"TRUNCATE {tmp}"))
    copy_into(conn, tmp, cols, rows, types)
    sql = f"INSERT INTO {table} ({collist}) SELECT {collist} FROM {tmp} ON CONFLICT DO NOTHING"
    if returning:
        return list(conn.execute(text(f"{sql} RETURNING {returning}")))
    return [None] * int(conn.execute(text(sql)).rowcount)


def bulk_insert(
    conn: Connection,
    table: str,
    cols: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    *,
    guarded: bool = True,
    types: Sequence[str] | None = None,
) -> int:
    """COPY straight into ``table``; if a key already exists (a batch retried after
    its commit was acknowledged late), redo it through the conflict-skipping path.

    ``guarded=False``: no savepoint around the COPY (two round trips fewer); a key that
    exists then fails the caller's transaction with the unique violation
    (:func:`is_duplicate`), and the caller writes the batch again, guarded, in a new one."""
    if not rows:
        return 0
    if not guarded:
        copy_into(conn, table, cols, rows, types)
        return len(rows)
    try:
        with conn.begin_nested():
            copy_into(conn, table, cols, rows, types)
        return len(rows)
    except IntegrityError as exc:
        if not is_duplicate(exc):  # not a unique violation: bad data
            raise
    return len(copy_insert(conn, table, cols, rows, types=types))


def is_duplicate(exc: BaseException) -> bool:
    """Whether ``exc`` is a unique violation (a row with that key exists)."""
    return isinstance(exc, IntegrityError) and getattr(exc.orig, "sqlstate", None) == "23505"
