"""Run ``banditctl demo`` as a newcomer would: a subprocess with its own local Ray, on a
fresh database of the test server (the demo's own ``<name>_demo`` database dropped after)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, make_url, text

from tests.ray_fixtures import _free_port


def run_demo(
    pg_server: Any, data_dir: Path, out: Path, args: list[str], timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """``banditctl demo ARGS --port <free> --json OUT`` with ``BANDITCTL_DATA_DIR=data_dir``."""
    url = pg_server.create_database("banditctl_demo_test")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(DATABASE_URL=url, BANDITCTL_DATA_DIR=str(data_dir))
    cmd = [sys.executable, "-m", "controlplane.cli", "demo", *args,
           "--port", str(_free_port()), "--json", str(out)]  # fmt: skip
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    finally:  # the demo's own database, beside the one it was given
        demo_db = make_url(url).database + "_demo"
        admin = create_engine(pg_server.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{demo_db}" WITH (FORCE)'))
        admin.dispose()
