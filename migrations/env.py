"""Alembic environment: migrates the database named by the Ferry settings.

The URL comes from ``config.attributes['database_url']`` when ``ferry migrate``
calls us, else from the Ferry settings (``FERRY_DATABASE_URL`` / ``DATABASE_URL``).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from ferry.migrate import sqlalchemy_url
from ferry.settings import load_settings
from ferry.tables import metadata

config = context.config


def _url() -> str:
    url = config.attributes.get("database_url")
    if url is None:
        url = load_settings().database_url.get_secret_value()
    return sqlalchemy_url(url)


def run_migrations_online() -> None:
    engine = create_engine(_url())
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
