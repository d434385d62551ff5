"""The sweeper: rebuilds the relay queue from PostgreSQL, so Redis never holds the truth.

Every CONFIRMED transfer not yet handed to its chain's submitter is enqueued as
``relay_transfer(transfer_id)`` with job id ``relay:<transfer id>`` (what happens
after the hand-off is the submitter's, which reads the database itself). arq
refuses a second job with an id that is queued or running, so sweeping often is
cheap and never runs one transfer twice at a time.

A sweep runs at start-up, soon after any NOTIFY on ``CHANGES_CHANNEL`` (debounced:
a burst of commits causes one sweep), after the LISTEN connection comes back, and
otherwise every ``sweep_interval`` seconds. If Redis is flushed or a worker dies
mid-job, the next sweep enqueues the transfer again: nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix

from ferry.db import Listener
from ferry.domain import CHANGES_CHANNEL
from ferry.metrics import SWEEP_ENQUEUED
from relayer import store

log = logging.getLogger(__name__)

#: Pause after a wake-up before sweeping, so a burst of commits causes one sweep.
DEBOUNCE_SECONDS = 0.05
#: Most transfers enqueued by one sweep (the next sweep takes the rest).
SWEEP_LIMIT = 1_000
LISTEN_TIMEOUT_SECONDS = 30.0
#: A transfer owed this long whose job id arq refuses is checked for a stranded job.
STRANDED_AFTER_SECONDS = 30.0

RELAY_FUNCTION = "relay_transfer"


def relay_job_id(queue_name: str, transfer_id: str) -> str:
    """The arq job id of a transfer's relay job.

    NOTE: arq's job keys are global to the Redis database, not per queue: the queue
    name is part of the id so two deployments (or test runs) sharing one Redis never
    dedupe each other's jobs.
    """
    return f"{queue_name}:relay:{transfer_id}"


class Sweeper:
    """Enqueues owed transfers on every wake-up and every ``interval`` seconds."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Any,
        *,
        dsn: str,
        queue_name: str,
        interval: float,
    ) -> None:
        self._pool = pool
        self._redis = redis  # an arq.connections.ArqRedis
        self._queue_name = queue_name
        self._interval = interval
        self._wake = asyncio.Event()
        self._listener = Listener(dsn, CHANGES_CHANNEL, self._on_notify, self._on_reconnect)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await asyncio.wait_for(self._listener.start(), LISTEN_TIMEOUT_SECONDS)
        self._task = asyncio.create_task(self._run(), name="relayer-sweep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._listener.stop()

    def _on_notify(self, _payload: str) -> None:
        self._wake.set()

    async def _on_reconnect(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                # NOTE: the sweeper must outlive database and Redis outages; it tries again.
                log.exception("sweep failed; retrying in %.1f s", self._interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            if self._wake.is_set():
                await asyncio.sleep(DEBOUNCE_SECONDS)
            self._wake.clear()

    async def sweep(self) -> int:
        """Enqueue every owed transfer that has no job yet; returns how many were enqueued."""
        due = await store.due_transfers(self._pool, SWEEP_LIMIT)
        enqueued = 0
        for transfer_id, waiting in due:
            job_id = relay_job_id(self._queue_name, transfer_id)
            job = await self._enqueue(transfer_id, job_id)
            if job is None and waiting > STRANDED_AFTER_SECONDS and await self._stranded(job_id):
                # NOTE: a partial Redis loss can leave a job key without its queue entry; arq
                # would refuse the id for a day. The database says the work is owed: drop it.
                log.warning("relay job of %s was stranded in Redis; enqueuing it again", transfer_id)
                await self._redis.delete(job_key_prefix + job_id, retry_key_prefix + job_id)
                job = await self._enqueue(transfer_id, job_id)
            if job is not None:
                enqueued += 1
                log.debug("enqueued", extra={"transfer_id": transfer_id})
        SWEEP_ENQUEUED.inc(enqueued)
        return enqueued

    async def _enqueue(self, transfer_id: str, job_id: str) -> Any:
        return await self._redis.enqueue_job(
            RELAY_FUNCTION, transfer_id, _job_id=job_id, _queue_name=self._queue_name
        )

    async def _stranded(self, job_id: str) -> bool:
        """A job key exists but the job is neither queued nor running."""
        queued = await self._redis.zscore(self._queue_name, job_id)
        running = await self._redis.exists(in_progress_key_prefix + job_id)
        return queued is None and not running
