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

from ferry import metrics, observability
from ferry.settings import Settings
from relayer.context import CONTEXT_KEY, open_context, relayer_context
from relayer.jobs import relay_transfer, vet_route_job
from relayer.keys import relay_keys
from relayer.operator import OperatorDesk
from relayer.submitters import Submitters
from relayer.sweep import VET_FUNCTION, Sweeper

log = logging.getLogger(__name__)

#: Relay jobs run at once by one worker (one per route at a time; most of their time is spent
#: waiting on PostgreSQL).
MAX_JOBS = 100
#: Seconds a relay job may run (a route job stops taking rounds after ROUTE_JOB_BUDGET).
JOB_TIMEOUT_SECONDS = 10
#: Tries per job before arq gives up on it (the sweeper enqueues it again later).
MAX_TRIES = 10
SWEEPER_KEY = "sweeper"
DESK_KEY = "operator_desk"
SUBMITTERS_KEY = "submitters"
SETTINGS_KEY = "settings"


def build_worker(settings: Settings, *, handle_signals: bool = True) -> Worker:
    """The arq worker for ``settings`` (not started)."""
    return Worker(
        functions=[
            func(vet_route_job, name=VET_FUNCTION, keep_result=0, max_tries=MAX_TRIES),
            func(relay_transfer, keep_result=0, max_tries=MAX_TRIES),
        ],
        queue_name=settings.queue_name,
        redis_settings=RedisSettings.from_dsn(settings.redis_url.get_secret_value()),
        on_startup=startup,
        on_shutdown=shutdown,
        ctx={SETTINGS_KEY: settings},
        handle_signals=handle_signals,
        max_jobs=MAX_JOBS,
        keep_result=0,
        max_tries=MAX_TRIES,
        # NOTE: a relay job only vets and hands over (database work; the submitter does the rest).
        # Short, because arq keeps a killed worker's job "in progress" for job_timeout + 10 s.
        job_timeout=JOB_TIMEOUT_SECONDS,
        poll_delay=0.05,  # NOTE: arq only looks for new jobs this often (one vetting job per route)
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
    )
    await sweeper.start()
    ctx[SWEEPER_KEY] = sweeper
    submitters = Submitters(relayer)
    await submitters.start()
    ctx[SUBMITTERS_KEY] = submitters
    desk = OperatorDesk(
        relayer.pool, dsn=settings.database_url.get_secret_value(), interval=settings.sweep_interval
    )
    await desk.start()
    ctx[DESK_KEY] = desk
    # NOTE: start-up objects (settings, ABIs, web3, keys, pools) live as long as the process: keep
    # the collector off them, as the indexer and the gateway do, so its full collections stay short
    # while receipts and batches churn through the heap (ARCHITECTURE.md: the collector dominated
    # worst-case latency elsewhere).
    observability.settle_heap()


async def shutdown(ctx: dict[str, Any]) -> None:
    desk: OperatorDesk | None = ctx.pop(DESK_KEY, None)
    if desk is not None:
        await desk.stop()
    submitters: Submitters | None = ctx.pop(SUBMITTERS_KEY, None)
    if submitters is not None:
        await submitters.stop()
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
