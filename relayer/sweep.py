"""The sweeper: rebuilds the relay queue from PostgreSQL, so Redis never holds the truth.

Every route with CONFIRMED transfers not yet handed to a submitter gets a
``vet_route(route_id)`` job with job id ``<queue>:vet:<route id>`` (the job vets
them all in bulk, ``relayer.vetting``; what happens after the hand-off is the
submitter's, which reads the database itself). arq refuses a second job with an
id that is queued or running, so sweeping often is cheap and never runs one
route's vetting twice at a time. When arq refused because the route's job is
still running, the sweeper looks again shortly after (``RECHECK_SECONDS``): the
job may have finished its last round just before the newest transfers committed.

A sweep runs at start-up, soon after any NOTIFY on ``CHANGES_CHANNEL`` (debounced:
a burst of commits causes one sweep), after the LISTEN connection comes back, and
otherwise every ``sweep_interval`` seconds. If Redis is flushed or a worker dies
mid-job, the next sweep enqueues the route again: nothing is lost.
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
#: A transfer owed this long whose route job id arq refuses is checked for a stranded job.
STRANDED_AFTER_SECONDS = 30.0
#: Pause before looking again when arq refused a route job that is still running.
RECHECK_SECONDS = 0.25

VET_FUNCTION = "vet_route"


def vet_job_id(queue_name: str, route_id: str) -> str:
    """The arq job id of a route's vetting job (queue name included, see ``relay_job_id``)."""
    return f"{queue_name}:vet:{route_id}"


def relay_job_id(queue_name: str, transfer_id: str) -> str:
    """The arq job id of a one-transfer relay job.

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
        """Enqueue a vetting job per route with owed transfers; returns how many transfers they cover."""
        due = await store.due_routes(self._pool)
        enqueued = 0
        busy = False
        for route in due:
            job_id = vet_job_id(self._queue_name, route.route_id)
            job = await self._enqueue(route.route_id, job_id)
            if job is None and route.waiting > STRANDED_AFTER_SECONDS and await self._stranded(job_id):
                # NOTE: a partial Redis loss can leave a job key without its queue entry; arq
                # would refuse the id for a day. The database says the work is owed: drop it.
                log.warning("vetting job of route %s was stranded in Redis; enqueued again", route.route_id)
                await self._redis.delete(job_key_prefix + job_id, retry_key_prefix + job_id)
                job = await self._enqueue(route.route_id, job_id)
            if job is None:
                busy = True
            else:
                enqueued += route.transfers
                log.debug("enqueued route %s (%d transfers)", route.route_id, route.transfers)
        if busy:
            self._loop.again_after(RECHECK_SECONDS)
        SWEEP_ENQUEUED.inc(enqueued)
        return enqueued

    async def _enqueue(self, route_id: str, job_id: str) -> Any:
        return await self._redis.enqueue_job(
            VET_FUNCTION, route_id, _job_id=job_id, _queue_name=self._queue_name
        )

    async def _stranded(self, job_id: str) -> bool:
        """A job key exists but the job is neither queued nor running."""
        queued = await self._redis.zscore(self._queue_name, job_id)
        running = await self._redis.exists(in_progress_key_prefix + job_id)
        return queued is None and not running
