"""Leader election per chain: a PostgreSQL session advisory lock on a dedicated connection.

Several indexer processes may run. For each chain, the one that holds the lock
``hashtextextended('ferry:indexer:<chain id>', 0)`` follows it; the others stand
by and try again every ``RETRY`` seconds. The lock lives as long as the holding
session: when a leader dies (even ``kill -9``), the kernel closes its socket,
PostgreSQL ends the session and frees the lock, and a standby takes over on its
next try. A leader that loses its lock connection stops following at once
(``watch`` returns), so two processes never write one chain for long; the
cursor guard in the follower's transaction covers the moment in between.
"""

from __future__ import annotations

import asyncio
import logging
import os

import asyncpg

log = logging.getLogger(__name__)

#: Seconds between a standby's attempts, and between a leader's checks of its lock session.
RETRY = 1.0
_LOCK = "SELECT pg_try_advisory_lock(hashtextextended($1, 0))"


def lock_name(chain_id: int) -> str:
    return f"ferry:indexer:{chain_id}"


async def acquire(dsn: str, chain_id: int, retry: float = RETRY) -> asyncpg.Connection:
    """Wait until this process holds the chain's lock; returns the connection that holds it."""
    announced = False
    while True:
        conn: asyncpg.Connection | None = None
        try:
            conn = await asyncpg.connect(
                dsn, server_settings={"application_name": f"ferry-indexer:{os.getpid()}"}
            )
            if await conn.fetchval(_LOCK, lock_name(chain_id)):
                return conn
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning(
                "chain %d: cannot reach PostgreSQL for the leader lock (%s)", chain_id, type(exc).__name__
            )
        if conn is not None:
            await conn.close()
        if not announced:
            log.info(
                "chain %d: another indexer leads it; standing by", chain_id, extra={"chain_id": chain_id}
            )
            announced = True
        await asyncio.sleep(retry)


async def watch(conn: asyncpg.Connection, interval: float = RETRY) -> None:
    """Return when the lock session is gone (the connection died or stopped answering)."""
    while True:
        await asyncio.sleep(interval)
        try:
            async with asyncio.timeout(max(interval * 5, 5.0)):  # NOTE: wait_for may swallow a cancel
                await conn.fetchval("SELECT 1")
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return
