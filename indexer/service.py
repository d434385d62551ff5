"""``ferry indexer``: follow every configured chain until SIGTERM or SIGINT.

Start-up registers the configured chains (a new chain's cursor starts just
before its lowest bridge ``start_block``; an existing cursor is never moved
back) and routes (new ones only, so operator switches survive restarts), starts
the metrics server, then runs one ``Follower`` per chain concurrently. A signal
cancels the followers (each is between statements or inside a transaction that
rolls back), closes their RPC clients and the pool, and returns.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import asyncpg

from ferry import metrics
from ferry.db import create_pool
from ferry.settings import ChainsConfig, Settings
from indexer import store
from indexer.follower import Follower

log = logging.getLogger(__name__)


async def prepare_database(pool: asyncpg.Pool, config: ChainsConfig) -> None:
    """Register the configured chains and routes (idempotent)."""
    async with pool.acquire() as conn, conn.transaction():
        await store.register_chains(conn, config.chains)
        await store.register_routes(conn, config)


async def run(settings: Settings) -> None:
    """Run the indexer until SIGTERM/SIGINT."""
    config = settings.chains()
    pool = await create_pool(settings.database_url.get_secret_value(), max_size=len(config.chains) + 2)
    followers: list[Follower] = []
    try:
        await prepare_database(pool, config)
        metrics.serve(settings.metrics_host, settings.metrics_port)
        followers = [Follower(chain, config, pool) for chain in config.chains]
        log.info("indexer following %s", ", ".join(f"{c.name} ({c.id})" for c in config.chains))
        await _run_until_signal(followers)
    finally:
        for follower in followers:
            await follower.close()
        await pool.close()
    log.info("indexer stopped")


async def _run_until_signal(followers: list[Follower]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(f.run(), name=f"follow:{f.chain.name}") for f in followers]
    stopper = asyncio.create_task(stop.wait(), name="indexer:stop")
    try:
        await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        for task in [stopper, *tasks]:
            task.cancel()
        results = await asyncio.gather(stopper, *tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            raise result
    if stop.is_set():
        log.info("indexer received a stop signal")
