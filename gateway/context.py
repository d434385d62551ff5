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
from redis import asyncio as redis
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.websockets import WebSocket
from strawberry.dataloader import DataLoader

from ferry.db import DatabaseUnavailable, create_pool
from ferry.settings import ChainsConfig, ConfigError, Settings
from gateway import catalog_reads, reads
from gateway.auth import Principal, authenticate, bearer
from gateway.catalog_reads import ChainRow, RouteRow
from gateway.changes import ChangeFeed
from gateway.records import StatusChange, TransferRecord

log = logging.getLogger(__name__)

#: Read connections. A connection handed from one request to the next waits for the
#: event loop between the two (a release, then a wake-up), so with 64 clients 10 sat idle
#: part of the time: 20 answered 22-44% more requests with a lower p99 on this 2-core
#: machine, 32 fewer than 20 (alternated runs, 1,000,000 transfers; docs/graphql.md).
READ_POOL_SIZE = 20
ADMIN_POOL_SIZE = 2
#: Database roles of migration 0005, taken at connection when gateway_database_roles is on.
READER_ROLE = "ferry_gateway_reader"
ADMIN_ROLE = "ferry_gateway_admin"
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
        self._admin_pool: asyncpg.Pool | None = None
        self._admin_pool_lock = asyncio.Lock()
        self._feed: ChangeFeed | None = None
        self.chains_config: ChainsConfig | None = _chains_or_none(settings)
        self._decimals = {
            (chain.id, symbol): deployment.decimals
            for chain in (self.chains_config.chains if self.chains_config else [])
            for symbol, deployment in chain.bridges.items()
        }

    def decimals(self, chain_id: int, token: str) -> int | None:
        """The token's decimals on ``chain_id`` per the chains file, None when it is not there."""
        return self._decimals.get((chain_id, token))

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
        session = dict(_READ_ONLY_SESSION)
        if self.settings.gateway_database_roles:
            session["role"] = READER_ROLE
        self._pool = await _connect_until_up(self.settings.read_url, session)
        queue_size = self.settings.gateway_subscriber_queue if self._queue_size is None else self._queue_size
        extra = {"queue_size": queue_size}
        # NOTE: LISTEN on the primary: PostgreSQL does not send notifications to replicas.
        self._feed = ChangeFeed(self._pool, self.settings.database_url.get_secret_value(), **extra)
        await self._feed.start()

    async def admin_pool(self) -> asyncpg.Pool:
        """The small read-write pool for admin mutations (primary), opened on first use."""
        async with self._admin_pool_lock:
            if self._admin_pool is None:
                session = {"application_name": "ferry-gateway-admin"}
                if self.settings.gateway_database_roles:
                    session["role"] = ADMIN_ROLE
                self._admin_pool = await create_pool(
                    self.settings.database_url.get_secret_value(),
                    max_size=ADMIN_POOL_SIZE,
                    server_settings=session,
                )
            return self._admin_pool

    async def stop(self) -> None:
        if self._admin_pool is not None:
            await self._admin_pool.close()
        if self._feed is not None:
            await self._feed.stop()
        if self._pool is not None:
            await self._pool.close()

    async def readiness(self) -> dict[str, str]:
        """Each dependency and "ok" or what is wrong with it.

        ``redis`` is for admins (the relayer's queue that admin actions feed); the
        gateway serves without it, so it does not make the gateway unready.
        """
        return {
            "database": "ok" if await self._database_answers() else "unavailable",
            "listener": "ok" if self._feed is not None and self._feed.healthy else "down",
            "redis": "ok" if await self._redis_answers() else "unavailable",
        }

    async def _redis_answers(self) -> bool:
        client = redis.Redis.from_url(self.settings.redis_url.get_secret_value(), socket_connect_timeout=1.0)
        try:
            async with asyncio.timeout(2.0):
                return bool(await client.ping())
        except (OSError, TimeoutError, RedisError):
            return False
        finally:
            await client.aclose()

    async def _database_answers(self) -> bool:
        if self._pool is None:
            return False
        try:
            async with asyncio.timeout(2.0):
                return await reads.database_answers(self._pool)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False


def _chains_or_none(settings: Settings) -> ChainsConfig | None:
    try:
        return settings.chains()
    except ConfigError as exc:
        log.warning("serving without a chains file (no decimals, names or limits): %s", exc)
        return None


async def _keep_session(_connection: asyncpg.Connection) -> None:
    """Return a read connection to the pool without asyncpg's reset query.

    NOTE: asyncpg still rolls back an open transaction and drops listeners; its reset
    query (RESET ALL, UNLISTEN *, CLOSE ALL, advisory unlocks) is a second round trip
    per request, for session state the gateway's reads never change (settings are
    fixed at connect; no SET, LISTEN, cursors outside transactions or advisory locks).
    """


async def _connect_until_up(dsn: str, session: dict[str, str]) -> asyncpg.Pool:
    delay = 0.2
    while True:
        try:
            return await create_pool(
                dsn, max_size=READ_POOL_SIZE, server_settings=session, reset=_keep_session, fair=True
            )
        except DatabaseUnavailable as exc:
            log.warning("%s; retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


@dataclass
class Loaders:
    """Batching loaders for one request or one WebSocket connection."""

    transfers: DataLoader[str, TransferRecord | None]
    histories: DataLoader[str, list[StatusChange]]
    chains: DataLoader[int, ChainRow | None]
    routes: DataLoader[str, RouteRow | None]

    @classmethod
    def on(cls, pool: asyncpg.Pool) -> Loaders:
        async def load_transfers(ids: list[str]) -> list[TransferRecord | None]:
            found = await reads.transfers_by_id(pool, ids)
            return [found.get(transfer_id) for transfer_id in ids]

        async def load_histories(ids: list[str]) -> list[list[StatusChange]]:
            found = await reads.histories(pool, ids)
            return [found.get(transfer_id, []) for transfer_id in ids]

        async def load_chains(ids: list[int]) -> list[ChainRow | None]:
            found = await catalog_reads.chains(pool, list(set(ids)))
            return [found.get(chain_id) for chain_id in ids]

        async def load_routes(ids: list[str]) -> list[RouteRow | None]:
            found = await catalog_reads.routes(pool, list(set(ids)))
            return [found.get(route_id) for route_id in ids]

        return cls(
            DataLoader(load_transfers, cache=False),
            DataLoader(load_histories, cache=False),
            DataLoader(load_chains, cache=False),
            DataLoader(load_routes, cache=False),
        )


@dataclass
class GatewayContext:
    """``info.context`` in every resolver."""

    gateway: Gateway
    request: Request | WebSocket
    #: Set by Strawberry from a WebSocket ``connection_init`` payload.
    connection_params: dict[str, Any] | None = field(default=None)
    _principal: Principal | None = field(default=None, repr=False)
    _loaders: Loaders | None = field(default=None, repr=False)

    @property
    def loaders(self) -> Loaders:
        """This request's (or connection's) DataLoaders, made on first use.

        Most of a subscriber's life needs none: making them lazily keeps the memory
        per WebSocket connection down when thousands are open.
        """
        if self._loaders is None:
            self._loaders = Loaders.on(self.gateway.pool)
        return self._loaders

    async def principal(self) -> Principal:
        """The authenticated caller (cached per request); AuthenticationError when there is none."""
        if self._principal is None:
            header = self.request.headers.get("authorization")
            if header is None and self.connection_params is not None:
                value = self.connection_params.get("Authorization") or self.connection_params.get(
                    "authorization"
                )
                header = value if isinstance(value, str) else None
            token = bearer(header)
            self._principal = await authenticate(self.gateway.settings, self.gateway.pool, token)
        return self._principal

    def origin(self) -> str | None:
        """The client's address as the server saw it (behind a proxy: the proxy's)."""
        client = self.request.client
        return None if client is None else client.host
