"""Shared fixtures: real PostgreSQL, Redis and anvil chains for every test that needs them.

- ``services``: PostgreSQL and Redis at FERRY_TEST_DATABASE_URL / FERRY_TEST_REDIS_URL
  (defaults 127.0.0.1:5432 and :6379), or embedded ones when nothing answers there.
- ``database_url``: a fresh database for this test run, migrated once, dropped at
  the end.
- ``redis_url``: a Redis database; tests use their own queue name (``queue_name``).
- ``dev_chains``: two anvil chains with token, bridge and routes (ferry.devstack).
- ``clean_db``: truncates every table before a test that wants a blank slate.
- ``pool``: an asyncpg pool (``ferry.db.create_pool``) on that blank slate.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

from ferry.db import create_pool
from ferry.devstack import DevNetwork, start_dev_network
from ferry.services import Embedded, ensure_postgres, ensure_redis
from tests.support.databases import migrated_database

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def services() -> Iterator[tuple[str, str]]:
    # NOTE: not under pytest's tmp folder: that one is private to root (0700), and the
    # embedded PostgreSQL runs as its own unprivileged user, which must reach its data.
    workdir = Path(tempfile.mkdtemp(prefix="ferry-test-services-"))
    postgres: Embedded = ensure_postgres(
        os.environ.get("FERRY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        workdir / "postgres",
    )
    redis: Embedded = ensure_redis(
        os.environ.get("FERRY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"), workdir / "redis"
    )
    yield postgres.url, redis.url
    redis.stop()
    postgres.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(services: tuple[str, str]) -> Iterator[str]:
    with migrated_database(services[0]) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url(services: tuple[str, str]) -> str:
    return services[1]


@pytest.fixture
def queue_name() -> str:
    """A queue of this test's own, so tests never see each other's jobs."""
    return f"ferry:test:{uuid.uuid4().hex[:8]}"


@pytest.fixture
def clean_db(database_url: str) -> str:
    """Every table of the public schema emptied (the migrations' own bookkeeping kept)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT quote_ident(tablename) FROM pg_tables"
            " WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        ).fetchall()
        conn.execute(f"TRUNCATE {', '.join(r[0] for r in rows)} RESTART IDENTITY CASCADE")
    return database_url


@pytest.fixture
async def pool(clean_db: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the blank slate of ``clean_db`` (a module may define its own ``pool``)."""
    pool = await create_pool(clean_db)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
def dev_chains(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevNetwork]:
    network = start_dev_network(tmp_path_factory.mktemp("chains"))
    yield network
    network.stop()
