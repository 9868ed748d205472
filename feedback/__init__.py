"""The persistence layer: the tables, the repositories (the only SQL on them), the reward
objective, the batched writer, the embedded Postgres and the migrations API.

- ``models``: the SQLAlchemy tables, the one schema Alembic migrations are checked against.
- ``records``: plain, validated records passed to and returned by the repositories.
- ``errors``: typed errors (invalid input, not found, writer full) the HTTP layer maps to codes.
- ``objective``: the reward objective and the missing-quality rule, in pure Python.
- ``repositories``: the only SQL on the tables, one module per aggregate; none commits.
- ``writer``: the batched, asynchronous decision/outcome log behind the request path.
- ``database``: where the database lives, a given ``DATABASE_URL`` or an embedded server.
- ``migrate``: schema management through Alembic: upgrade, downgrade, current, drift check.
"""
