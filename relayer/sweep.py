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

import logging
from typing import Any

import asyncpg
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix

from ferry.domain import CHANGES_CHANNEL
from ferry.metrics import SWEEP_ENQUEUED
from relayer import store
from relayer.wakeup import NotifiedLoop

log = logging.getLogger(__name__)

#: Pause after a wake-up before sweeping, so a burst of commits causes one sweep.
DEBOUNCE_SECONDS = 0.05
#: Most transfers enqueued by one sweep (the next sweep takes the rest).
SWEEP_LIMIT = 1_000
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
        self._loop = NotifiedLoop(
            self.sweep,
            dsn=dsn,
            channel=CHANGES_CHANNEL,
            interval=interval,
            name="relayer-sweep",
            debounce=DEBOUNCE_SECONDS,
        )

    async def start(self) -> None:
        await self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

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
