"""Fresh, migrated databases on the test PostgreSQL server.

Transfer ids are deterministic and repeat across fresh anvil chains, so a test that
runs the real processes on chains of its own wants a database of its own too.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg

from ferry.migrate import upgrade


def database_url(server_url: str, name: str) -> str:
    """``server_url`` pointing at database ``name`` (query options such as a socket host kept)."""
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


@contextlib.contextmanager
def migrated_database(server_url: str, prefix: str = "ferry_test") -> Iterator[str]:
    """Create a database, migrate it to the latest schema, yield its URL, drop it."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = database_url(server_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = database_url(server_url, name)
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
