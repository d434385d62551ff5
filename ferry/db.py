"""Database access shared by the processes: the asyncpg pool and a LISTEN helper.

``Listener`` keeps one dedicated connection LISTENing on a channel and survives a
database restart: it reconnects with backoff and then calls ``on_reconnect`` so the
owner can catch up from its cursor (notifications sent while it was away are lost
by PostgreSQL's design; the database, not the notification, is the source of truth).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

NotifyCallback = Callable[[str], None]


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10, **kwargs: Any) -> asyncpg.Pool:
    """A pool to ``dsn``; raises a clear error (without the DSN) when unreachable."""
    try:
        pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, **kwargs)
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(
            f"cannot connect to PostgreSQL: {type(exc).__name__}: {_safe(exc)}"
        ) from None
    assert pool is not None
    return pool


class DatabaseUnavailable(Exception):
    """PostgreSQL cannot be reached; the message never contains the URL or password."""


def _safe(exc: BaseException) -> str:
    text = str(exc)
    return text.split("password")[0].strip() or type(exc).__name__


class Listener:
    """One connection LISTENing on ``channel``; reconnects forever until ``stop()``."""

    def __init__(
        self,
        dsn: str,
        channel: str,
        on_notify: NotifyCallback,
        on_reconnect: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._dsn = dsn
        self._channel = channel
        self._on_notify = on_notify
        self._on_reconnect = on_reconnect
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def start(self) -> None:
        """Start listening; returns once the first connection LISTENs (callers bound the wait)."""
        self._task = asyncio.create_task(self._run(), name=f"listen:{self._channel}")
        await self._connected.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        delay = 0.1
        first = True
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn)
                self._lost.clear()
                conn.add_termination_listener(lambda _c: self._lost.set())
                await conn.add_listener(self._channel, self._deliver)
                self._connected.set()
                delay = 0.1
                if not first and self._on_reconnect is not None:
                    await self._on_reconnect()
                first = False
                await self._watch(conn)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("LISTEN connection lost, reconnecting in %.1fs: %s", delay, type(exc).__name__)
            finally:
                self._connected.clear()
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _watch(self, conn: asyncpg.Connection) -> None:
        """Return when the connection dies (termination callback or failed health ping)."""
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), timeout=5.0)
                return
            except TimeoutError:
                await asyncio.wait_for(conn.execute("SELECT 1"), timeout=5.0)

    def _deliver(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._on_notify(payload)
