"""Repositories: every SQL statement of banditctl, one module per aggregate.

Functions take a SQLAlchemy ``Connection`` and never commit: the caller owns
the transaction (``with engine.begin() as conn: ...``), so a batch is written
whole or not at all. Bulk paths use COPY into a temporary table followed by
``INSERT ... ON CONFLICT DO NOTHING``, which makes a retried batch idempotent.

Import the module you need (``from feedback.repositories import snapshots``);
this package re-exports nothing.
"""
