"""The generated feedback-token secret is created 0600 (and an older file made 0600)."""

from __future__ import annotations

import stat

from controlplane.cli.launch import feedback_secret
from controlplane.settings import Settings


def test_generated_secret_is_private_from_the_start(tmp_path, monkeypatch):
    monkeypatch.delenv("BANDITCTL_FEEDBACK_SECRET", raising=False)
    settings = Settings(data_dir=tmp_path, feedback_secret=None)
    secret = feedback_secret(settings)
    path = tmp_path / "feedback.secret"
    assert len(secret) >= 32 and path.read_text() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert feedback_secret(settings) == secret  # kept


def test_an_open_secret_file_is_made_private(tmp_path):
    path = tmp_path / "feedback.secret"
    path.write_text("an-old-secret-0123456789")
    path.chmod(0o644)
    assert (
        feedback_secret(Settings(data_dir=tmp_path, feedback_secret=None))
        == "an-old-secret-0123456789"
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
