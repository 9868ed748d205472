"""Process settings, read from the environment (``DATABASE_URL``, ``BANDITCTL_*``).

Built on demand by :func:`get_settings` (never at import time) so tests can
construct their own :class:`Settings`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from feedback.database import DatabaseHandle


def _default_data_dir() -> Path:
    return Path.home() / ".banditctl"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BANDITCTL_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "BANDITCTL_DATABASE_URL"),
        description="SQLAlchemy URL (postgresql+psycopg://...). Unset: an embedded server.",
    )
    data_dir: Path = Field(default_factory=_default_data_dir)
    embedded_database: str = "banditctl"
    config_file: Path | None = None
    ray_address: str | None = Field(
        default=None, validation_alias=AliasChoices("RAY_ADDRESS", "BANDITCTL_RAY_ADDRESS")
    )
    feedback_secret: str | None = None
    log_level: str = "INFO"

    @field_validator("database_url")
    @classmethod
    def _normalise_url(cls, v: str | None) -> str | None:
        if not v:
            return None
        if v.startswith("postgres://"):
            v = "postgresql://" + v[len("postgres://") :]
        if v.startswith("postgresql://"):
            v = "postgresql+psycopg://" + v[len("postgresql://") :]
        if not v.startswith("postgresql+psycopg://"):
            raise ValueError("DATABASE_URL must be a PostgreSQL URL (postgresql+psycopg://...)")
        return v

    def database(self) -> AbstractContextManager[DatabaseHandle]:
        """The configured database: ``database_url``, else the embedded server in ``data_dir``."""
        from feedback.database import open_database

        return open_database(self.database_url, self.data_dir, self.embedded_database)


def get_settings() -> Settings:
    return Settings()
