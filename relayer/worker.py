"""``ferry relayer``: the arq worker that runs relay jobs, plus the sweeper that feeds it.

Start-up (arq ``on_startup``) builds the ``RelayerContext`` (database pool, one
RPC client per chain, signer and submitter keys) and starts the sweeper; shut-down
stops the sweeper and closes everything. SIGTERM/SIGINT stop the worker cleanly:
running jobs are cancelled and arq re-queues them, and since every job is
idempotent the next worker simply carries on.

Job results are not kept (``keep_result=0``): a finished ``relay:<transfer id>``
job can be enqueued again at once, which the sweeper relies on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Worker, func

from ferry import metrics
from ferry.settings import Settings
from relayer.context import CONTEXT_KEY, open_context, relay_keys, relayer_context
from relayer.jobs import relay_transfer
from relayer.sweep import Sweeper

log = logging.getLogger(__name__)

#: Relay jobs run at once by one worker (most of their time is spent waiting on nodes).
MAX_JOBS = 20
#: Tries per job before arq gives up on it (the sweeper enqueues it again later).
MAX_TRIES = 10
SWEEPER_KEY = "sweeper"
SETTINGS_KEY = "settings"


def build_worker(settings: Settings, *, handle_signals: bool = True) -> Worker:
    """The arq worker for ``settings`` (not started)."""
    return Worker(
        functions=[func(relay_transfer, keep_result=0, max_tries=MAX_TRIES)],
        queue_name=settings.queue_name,
        redis_settings=RedisSettings.from_dsn(settings.redis_url.get_secret_value()),
        on_startup=startup,
        on_shutdown=shutdown,
        ctx={SETTINGS_KEY: settings},
        handle_signals=handle_signals,
        max_jobs=MAX_JOBS,
        keep_result=0,
        max_tries=MAX_TRIES,
        # NOTE: a job waits up to release_timeout for a receipt, plus a few node calls.
        job_timeout=settings.release_timeout + 120,
        poll_delay=0.2,
    )


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx[SETTINGS_KEY]
    relayer = await open_context(settings)
    ctx[CONTEXT_KEY] = relayer
    sweeper = Sweeper(
        relayer.pool,
        ctx["redis"],
        dsn=settings.database_url.get_secret_value(),
        queue_name=settings.queue_name,
        interval=settings.sweep_interval,
        stale_after=settings.release_timeout,
    )
    await sweeper.start()
    ctx[SWEEPER_KEY] = sweeper


async def shutdown(ctx: dict[str, Any]) -> None:
    sweeper: Sweeper | None = ctx.pop(SWEEPER_KEY, None)
    if sweeper is not None:
        await sweeper.stop()
    if CONTEXT_KEY in ctx:
        await relayer_context(ctx).close()
        del ctx[CONTEXT_KEY]


async def run(settings: Settings) -> None:
    """Run the relayer until SIGTERM/SIGINT (or until this task is cancelled)."""
    relay_keys(settings)  # NOTE: a missing submitter key is a config error before anything starts.
    metrics.serve(settings.metrics_host, settings.metrics_port)
    worker = build_worker(settings)
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.info("relayer stopping on signal")
    finally:
        await worker.close()
