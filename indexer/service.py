"""``ferry indexer``: follow every configured chain until SIGTERM or SIGINT.

Start-up registers the configured chains (a new chain's cursor starts just
before its lowest bridge ``start_block``; an existing cursor is never moved
back) and routes (new ones only, so operator switches survive restarts), starts
the metrics server and ``/health`` + ``/ready`` (``indexer_health_port``), then
runs one ``ChainSupervisor`` per chain concurrently: it follows the chain while
this process holds the chain's leader lock, and restarts a stuck follower. A
signal cancels them (each follower is between statements or inside a
transaction that rolls back), closes their RPC clients and the pool, and returns.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import asyncpg

from ferry import metrics, observability
from ferry.db import create_pool
from ferry.settings import ChainsConfig, Settings
from indexer import store
from indexer.health import HealthServer
from indexer.supervisor import ChainSupervisor

log = logging.getLogger(__name__)


async def prepare_database(pool: asyncpg.Pool, config: ChainsConfig) -> None:
    """Register the configured chains and routes (idempotent)."""
    async with pool.acquire() as conn, conn.transaction():
        await store.register_chains(conn, config.chains)
        await store.register_routes(conn, config)


async def run(settings: Settings) -> None:
    """Run the indexer until SIGTERM/SIGINT."""
    config = settings.chains()
    dsn = settings.database_url.get_secret_value()
    pool = await create_pool(dsn, max_size=len(config.chains) + 2)
    supervisors = [ChainSupervisor(c, config, pool, dsn, settings.indexer_watchdog) for c in config.chains]
    health = HealthServer(
        settings.metrics_host,
        settings.indexer_health_port,
        lambda: [s.chain.name for s in supervisors if s.stalled],
    )
    try:
        await prepare_database(pool, config)
        metrics.serve(settings.metrics_host, settings.metrics_port)
        await health.start()
        log.info("indexer following %s", ", ".join(f"{c.name} ({c.id})" for c in config.chains))
        # NOTE: start-up objects (settings, ABIs, web3, pools) live as long as the process: keep the
        # collector off them, so its pauses do not add to the lock-to-row latency (ARCHITECTURE.md).
        observability.settle_heap()
        await _run_until_signal(supervisors)
    finally:
        await health.stop()
        await pool.close()
    log.info("indexer stopped")


async def _run_until_signal(supervisors: list[ChainSupervisor]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(s.run(), name=f"chain:{s.chain.name}") for s in supervisors]
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
