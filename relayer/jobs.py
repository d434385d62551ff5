"""The relay jobs: vet confirmed transfers in bulk and hand them to their target chain's submitter.

``vet_route(ctx, route_id)`` is an arq job keyed ``<queue>:vet:<route id>``: it runs
``relayer.vetting.vet_route`` rounds for the route until no CONFIRMED transfer is
left to hand over (or its time budget is spent; the sweeper enqueues it again).
One job per route at a time (arq refuses a second job with the same id), so the
rate of hand-offs no longer depends on one job per transfer.

``relay_transfer(ctx, transfer_id)`` vets one transfer the same way (kept for
jobs enqueued by an older relayer, and for tests and tools that name a transfer).

arq delivers at least once and any process may die at any line, so every run
starts from what PostgreSQL says now and every step is idempotent (see
``relayer.vetting``). Database trouble raises arq's ``Retry`` with exponential
back-off and jitter; the sweeper enqueues the route again anyway if Redis loses
the job. Nothing here talks to a chain.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import asyncpg
from arq.worker import Retry

from ferry import logs
from ferry.db import DatabaseUnavailable
from ferry.metrics import JOBS_IN_FLIGHT, RELAY_JOBS
from relayer.context import relayer_context
from relayer.vetting import VetRound, vet_route, vet_transfers

log = logging.getLogger(__name__)

#: Longest wait before a job that met a database problem runs again, in seconds.
MAX_RETRY_DELAY = 60.0
#: Seconds a route job keeps taking new rounds before it leaves the rest to the next job.
ROUTE_JOB_BUDGET = 5.0

_DATABASE_TROUBLE = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, DatabaseUnavailable)


async def vet_route_job(ctx: dict[str, Any], route_id: str) -> str:
    """Vet the route's confirmed transfers round after round; returns what happened."""
    relayer = relayer_context(ctx)
    JOBS_IN_FLIGHT.inc()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ROUTE_JOB_BUDGET
    decided = 0
    try:
        with logs.bind(route_id=route_id):
            while True:
                round_ = await vet_route(relayer, route_id)
                decided += round_.decided
                if round_.paused:
                    return _outcome("paused")
                if round_.decided == 0 or loop.time() >= deadline:
                    break
        log.debug("route %s: %d transfers vetted", route_id, decided)
        return _outcome("handed_over" if decided else "noop")
    except _DATABASE_TROUBLE as exc:
        raise _retry(ctx, exc, {"route_id": route_id}) from exc
    finally:
        JOBS_IN_FLIGHT.dec()


async def relay_transfer(ctx: dict[str, Any], transfer_id: str) -> str:
    """Vet one transfer; returns what happened (arq does not keep it)."""
    relayer = relayer_context(ctx)
    JOBS_IN_FLIGHT.inc()
    try:
        with logs.bind(transfer_id=transfer_id):
            return _outcome(_one(await vet_transfers(relayer, [transfer_id]), transfer_id))
    except _DATABASE_TROUBLE as exc:
        raise _retry(ctx, exc, {"transfer_id": transfer_id}) from exc
    finally:
        JOBS_IN_FLIGHT.dec()


def _one(round_: VetRound, transfer_id: str) -> str:
    if round_.paused:
        return "paused"
    if transfer_id in round_.held:
        return "held"
    return "handed_over" if transfer_id in round_.handed_over else "noop"


def _outcome(outcome: str) -> str:
    RELAY_JOBS.labels(outcome).inc()
    return outcome


def _retry(ctx: dict[str, Any], exc: BaseException, extra: dict[str, str]) -> Retry:
    delay = _backoff(ctx)
    log.warning("relay job deferred %.1f s: %s", delay, exc, extra=extra)
    _outcome("retry")
    return Retry(defer=delay)


def _backoff(ctx: dict[str, Any]) -> float:
    tries = int(ctx.get("job_try", 1))
    ceiling = min(MAX_RETRY_DELAY, 2.0**tries)
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 -- jitter, not cryptography
