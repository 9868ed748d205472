"""The command line a newcomer meets: --version, examples under --help, lazy imports,
``status`` (read-only unless --migrate) and ``db prune-snapshots``, on the test database
with no gateway and no Ray answering."""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import UTC, datetime
from importlib.metadata import version

import pytest

from controlplane.cli import COMMANDS, EXAMPLES, main
from controlplane.learner_loop import LearnerLoop
from feedback import migrate
from feedback.repositories import snapshots
from tests.conftest import REPO_ROOT
from tests.controlplane.learning import learning_config, write_traffic


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_version_comes_from_the_installed_package(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"banditctl {version('banditctl')}\n"


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_every_help_shows_examples(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"] if command else ["--help"])
    out = capsys.readouterr().out
    assert "examples:\n" in out
    for line in EXAMPLES[command]:
        assert f"  {line}" in out  # kept as written, not re-wrapped
        assert line.startswith(("banditctl ", "DATABASE_URL="))


def test_help_imports_nothing_heavy():
    probe = (
        "import sys; from controlplane.cli import build_parser; build_parser().format_help(); "
        "print(sorted(m for m in ('ray', 'sqlalchemy', 'numpy', 'httpx', 'fastapi', 'alembic')"
        " if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.fixture
def nothing_running(monkeypatch):
    """No gateway at --url and nothing at RAY_ADDRESS; the status command's arguments."""
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{_closed_port()}")
    return ["--url", f"http://127.0.0.1:{_closed_port()}", "--timeout", "0.5"]


def test_status_reports_the_database_and_nothing_running(
    engine, db_url, monkeypatch, capsys, nothing_running
):
    cfg = learning_config()
    write_traffic(engine, cfg, 31)
    loop = LearnerLoop(engine, cfg, clock=lambda: datetime.now(UTC))
    loop.start()
    loop.run_until_idle()
    loop.stop()
    monkeypatch.setenv("DATABASE_URL", db_url)

    assert main(["status", *nothing_running]) == 0
    out = capsys.readouterr().out
    assert f"revision     : {migrate.head_revision()} (head)" in out
    assert "decisions 240" in out
    assert f"policy       : version {loop.version} (update" in out
    assert f"watermark {loop.watermark}, {loop.events_applied:,} events applied" in out
    assert f"versions     : {loop.version} stored, {loop.version} holding a state" in out
    assert "0 compacted by retention" in out
    assert "learner lag  : " in out and "(feedback window 30 s)" in out  # the demo objective
    assert "/healthz     : not running" in out
    assert "ray          : not running (nothing answers at 127.0.0.1:" in out


def test_status_is_read_only_unless_migrate(pg_server, monkeypatch, capsys, nothing_running):
    url = pg_server.create_database("banditctl_status")
    monkeypatch.setenv("DATABASE_URL", url)
    assert main(["status", *nothing_running]) == 0
    assert "revision     : none: an empty database" in capsys.readouterr().out
    assert migrate.current_revision(url) is None  # nothing migrated
    assert main(["status", "--migrate", *nothing_running]) == 0
    out = capsys.readouterr().out
    assert "upgraded to head (--migrate)" in out and "policy       : none published yet" in out
    assert migrate.current_revision(url) == migrate.head_revision()


def test_status_exits_1_without_a_database(monkeypatch, tmp_path, capsys, nothing_running):
    monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg://nobody@127.0.0.1:{_closed_port()}/x")
    assert main(["status", *nothing_running]) == 1
    assert "cannot reach the database" in capsys.readouterr().out
    monkeypatch.delenv("DATABASE_URL")  # the embedded default, never created here
    monkeypatch.setenv("BANDITCTL_DATA_DIR", str(tmp_path / "data"))
    assert main(["status", *nothing_running]) == 1
    assert "none yet (DATABASE_URL is unset)" in capsys.readouterr().out
    assert not (tmp_path / "data").exists()  # status created nothing


def test_prune_snapshots_dry_run_then_for_real(engine, db_url, monkeypatch, capsys):
    cfg = learning_config()
    write_traffic(engine, cfg, 32)
    loop = LearnerLoop(engine, cfg, clock=lambda: datetime.now(UTC))
    loop.start()
    loop.run_until_idle()
    loop.stop()
    n = loop.version
    assert n >= 4
    monkeypatch.setenv("DATABASE_URL", db_url)
    args = ["db", "prune-snapshots", "--keep-last", "2", "--keep-served-s", "0"]

    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would compact: {n - 2} versions" in out and f"1-{n - 2}" in out
    with engine.connect() as conn:
        assert snapshots.storage(conn)["with_state"] == n

    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"compacted: {n - 2} versions" in out
    assert f"kept (last    ):     2  {n - 1}-{n}" in out
    with engine.connect() as conn:
        assert snapshots.storage(conn)["with_state"] == 2
    assert main(args) == 0
    assert "compacted: 0 versions" in capsys.readouterr().out
