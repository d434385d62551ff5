"""The relay job: vet one confirmed transfer and hand it to its target chain's submitter.

``relay_transfer(ctx, transfer_id)`` is an arq job keyed ``relay:<transfer id>``.
arq delivers at least once and any process may die at any line, so every run
starts from what PostgreSQL says now, and every step is idempotent:

1. Only a CONFIRMED transfer is vetted (anything else: nothing to do).
2. A paused route holds it back (it stays CONFIRMED until the route resumes).
3. Route limits (``relayer.limits``) may move it to HELD with the reason.
4. Its fields must match this relayer's configuration (``relayer.plan``);
   otherwise it is HELD for an operator, never released on a guess.
5. Then it is handed over: ``relay_notes.vetted_at`` is set and the chain's
   submitter is woken (NOTIFY ``ferry_relay_ready``). From there the submitter
   batches, signs, sends and follows it (``relayer.submitter``); nothing in this
   job talks to a chain.

Database trouble raises arq's ``Retry`` with exponential back-off and jitter; the
sweeper enqueues the transfer again anyway if Redis loses the job.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import asyncpg
from arq.worker import Retry

from ferry import logs
from ferry.db import DatabaseUnavailable
from ferry.domain import TransferStatus
from ferry.metrics import JOBS_IN_FLIGHT, RELAY_JOBS, TRANSFER_TRANSITIONS
from relayer import store, txstore
from relayer.context import relayer_context
from relayer.limits import hold_if_over_limits
from relayer.plan import plan_release
from relayer.submitter import READY_CHANNEL

log = logging.getLogger(__name__)

#: Longest wait before a job that met a database problem runs again, in seconds.
MAX_RETRY_DELAY = 60.0


async def relay_transfer(ctx: dict[str, Any], transfer_id: str) -> str:
    """Vet one transfer; returns what happened (arq does not keep it)."""
    JOBS_IN_FLIGHT.inc()
    try:
        with logs.bind(transfer_id=transfer_id):
            return _outcome(await _vet(ctx, transfer_id))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, DatabaseUnavailable) as exc:
        delay = _backoff(ctx)
        log.warning("relay job deferred %.1f s: %s", delay, exc, extra={"transfer_id": transfer_id})
        _outcome("retry")
        raise Retry(defer=delay) from exc
    finally:
        JOBS_IN_FLIGHT.dec()


async def _vet(ctx: dict[str, Any], transfer_id: str) -> str:
    relayer = relayer_context(ctx)
    extra = {"transfer_id": transfer_id}
    transfer = await store.load_transfer(relayer.pool, transfer_id)
    if transfer is None or transfer.status is not TransferStatus.CONFIRMED:
        return "noop"
    if await store.route_paused(relayer.pool, transfer.route_id):
        log.info("route %s is paused; the transfer waits", transfer.route_id, extra=extra)
        return "paused"
    held = await hold_if_over_limits(relayer.pool, relayer.chains, transfer_id)
    if held is not None:
        log.warning("relay held: %s", held, extra=extra)
        return "held"
    plan = plan_release(relayer, transfer)
    if isinstance(plan, str):
        changes = await store.move(relayer.pool, transfer_id, TransferStatus.HELD, plan)
        for change in changes:
            TRANSFER_TRANSITIONS.labels(transfer.route_id, change.to_status.value).inc()
        log.error("relay held: %s", plan, extra=extra)
        return "held" if changes else "noop"
    await txstore.mark_vetted(relayer.pool, transfer_id)
    await relayer.pool.execute("SELECT pg_notify($1, $2)", READY_CHANNEL, str(transfer.target_chain_id))
    return "handed_over"


def _outcome(outcome: str) -> str:
    RELAY_JOBS.labels(outcome).inc()
    return outcome


def _backoff(ctx: dict[str, Any]) -> float:
    tries = int(ctx.get("job_try", 1))
    ceiling = min(MAX_RETRY_DELAY, 2.0**tries)
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 -- jitter, not cryptography
