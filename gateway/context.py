"""What resolvers work with: the process's shared resources and per-request loaders.

``Gateway`` owns the read pool and the change feed for the life of the process
(created once, shared by the GraphQL and health apps). ``GatewayContext`` is
built per HTTP request or per WebSocket connection and carries DataLoaders, so
a page of transfers asking for their histories costs one query, not one per
transfer. Loaders never cache across loads: a long-lived WebSocket connection
must see fresh rows on every change.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.websockets import WebSocket
from strawberry.dataloader import DataLoader

from ferry.db import DatabaseUnavailable, create_pool
from ferry.settings import Settings
from gateway import reads
from gateway.changes import ChangeFeed
from gateway.records import StatusChange, TransferRecord

log = logging.getLogger(__name__)

READ_POOL_SIZE = 10
#: Guards every read: the gateway's queries are small, a slow one is a bug or an overload.
STATEMENT_TIMEOUT_MS = 10_000
_READ_ONLY_SESSION = {
    "application_name": "ferry-gateway",
    "default_transaction_read_only": "on",
    "statement_timeout": str(STATEMENT_TIMEOUT_MS),
}


class Gateway:
    """The read pool and change feed shared by every request in this process."""

    def __init__(self, settings: Settings, *, queue_size: int | None = None) -> None:
        self.settings = settings
        self._queue_size = queue_size
        self._pool: asyncpg.Pool | None = None
        self._feed: ChangeFeed | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the gateway has not started")
        return self._pool

    @property
    def feed(self) -> ChangeFeed:
        if self._feed is None:
            raise RuntimeError("the gateway has not started")
        return self._feed

    async def start(self) -> None:
        """Connect (retrying until the database answers), then start the change feed."""
        self._pool = await _connect_until_up(self.settings.read_url)
        extra = {} if self._queue_size is None else {"queue_size": self._queue_size}
        # NOTE: LISTEN on the primary: PostgreSQL does not send notifications to replicas.
        self._feed = ChangeFeed(self._pool, self.settings.database_url.get_secret_value(), **extra)
        await self._feed.start()

    async def stop(self) -> None:
        if self._feed is not None:
            await self._feed.stop()
        if self._pool is not None:
            await self._pool.close()

    async def readiness(self) -> dict[str, str]:
        """Each dependency and "ok" or what is wrong with it."""
        return {
            "database": "ok" if await self._database_answers() else "unavailable",
            "listener": "ok" if self._feed is not None and self._feed.healthy else "down",
        }

    async def _database_answers(self) -> bool:
        if self._pool is None:
            return False
        try:
            async with asyncio.timeout(2.0):
                return await reads.database_answers(self._pool)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False


async def _connect_until_up(dsn: str) -> asyncpg.Pool:
    delay = 0.2
    while True:
        try:
            return await create_pool(dsn, max_size=READ_POOL_SIZE, server_settings=_READ_ONLY_SESSION)
        except DatabaseUnavailable as exc:
            log.warning("%s; retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


@dataclass
class Loaders:
    """Batching loaders for one request or one WebSocket connection."""

    transfers: DataLoader[str, TransferRecord | None]
    histories: DataLoader[str, list[StatusChange]]

    @classmethod
    def on(cls, pool: asyncpg.Pool) -> Loaders:
        async def load_transfers(ids: list[str]) -> list[TransferRecord | None]:
            found = await reads.transfers_by_id(pool, ids)
            return [found.get(transfer_id) for transfer_id in ids]

        async def load_histories(ids: list[str]) -> list[list[StatusChange]]:
            found = await reads.histories(pool, ids)
            return [found.get(transfer_id, []) for transfer_id in ids]

        return cls(DataLoader(load_transfers, cache=False), DataLoader(load_histories, cache=False))


@dataclass
class GatewayContext:
    """``info.context`` in every resolver."""

    gateway: Gateway
    loaders: Loaders
    request: Request | WebSocket
    #: Set by Strawberry from a WebSocket ``connection_init`` payload (auth will read it).
    connection_params: dict[str, Any] | None = field(default=None)
