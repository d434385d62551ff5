"""The embedded fallback really starts PostgreSQL and Redis when nothing answers."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import psycopg
import redis

from ferry.devchain import free_port
from ferry.services import ensure_postgres, ensure_redis, postgres_reachable, redis_reachable


def test_embedded_servers_start_when_nothing_answers_and_stop(tmp_path: Path) -> None:
    # NOTE: the embedded PostgreSQL runs as an unprivileged user that cannot enter
    # pytest's private tmp folder, so its data goes to a folder of its own.
    pg_dir = Path(tempfile.mkdtemp(prefix="ferry-test-pg-"))
    dead_port = free_port()
    pg = ensure_postgres(f"postgresql://postgres@127.0.0.1:{dead_port}/postgres", pg_dir)
    rd = ensure_redis(f"redis://127.0.0.1:{dead_port}/0", tmp_path / "redis")
    try:
        assert pg.started
        assert rd.started
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
        client = redis.Redis.from_url(rd.url)
        client.set("ferry:probe", "ok")
        assert client.get("ferry:probe") == b"ok"
        client.close()
    finally:
        rd.stop()
        pg.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)
    assert not redis_reachable(rd.url)
    assert not postgres_reachable(pg.url)


def test_reachable_services_are_used_as_they_are(services: tuple[str, str], tmp_path: Path) -> None:
    pg = ensure_postgres(services[0], tmp_path / "pg")
    assert not pg.started
    assert pg.url == services[0]
