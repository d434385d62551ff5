"""Apply the Alembic migrations in ``migrations/`` to a database (``ferry migrate``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def sqlalchemy_url(url: str) -> str:
    """A libpq-style URL as SQLAlchemy wants it (psycopg 3 driver)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "heads") -> None:
    """Bring the database to ``revision``; safe to run repeatedly and concurrently-ish
    (Alembic's version table serialises it inside one transaction)."""
    command.upgrade(alembic_config(database_url), revision)
