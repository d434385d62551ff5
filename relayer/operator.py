"""Operator actions on transfers: the relayer applies what the gateway or the CLI asked.

Requests are rows of ``operator_requests`` (written by the gateway's admin
mutations and by ``ferry transfers ...``). The relayer is the one that acts on the
transfer actions: it takes each unprocessed row under ``FOR UPDATE SKIP LOCKED``
(several workers may run), applies the move through ``ferry.transitions`` and
fills ``processed_at`` and ``outcome`` in the same transaction, so a request is
applied exactly once and its audit record always says what happened.

What each action means:

- APPROVE a HELD transfer: back to CONFIRMED with its limits waived; it is
  released despite the limit that held it.
- REJECT a HELD transfer: FAILED with the reason ``rejected by operator``; closed.
- RETRY a FAILED transfer (a dead letter): back to CONFIRMED, its try count kept;
  refused for a transfer an operator rejected or cancelled.
- CANCEL a HELD or FAILED transfer: FAILED with the reason ``cancelled by
  operator``; closed, never released, and a later RETRY is refused.

An action that does not fit the transfer's state is still processed: its outcome
says why nothing changed. Route actions (PAUSE_ROUTE, RESUME_ROUTE) are applied
by whoever wrote them (the gateway flips ``routes.paused``); they are not ours.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

from ferry.domain import TransferStatus
from ferry.metrics import (
    DEAD_LETTERS,
    HELD_TRANSFERS,
    OPERATOR_ACTIONS,
    RELEASE_FAILURES,
    ROUTE_PAUSED,
)
from ferry.transitions import Move, move_transfers
from relayer.wakeup import NotifiedLoop

log = logging.getLogger(__name__)

S = TransferStatus
#: The channel writers of operator requests NOTIFY after inserting one.
OPERATOR_CHANNEL = "ferry_operator_requests"
TRANSFER_ACTIONS = ("APPROVE", "REJECT", "RETRY", "CANCEL")
REJECTED = "rejected by operator"
CANCELLED = "cancelled by operator"
#: Routes the held/dead-letter gauges have a value for.
_GAUGED_ROUTES: set[str] = set()


@dataclass(frozen=True)
class OperatorRequest:
    id: int
    action: str
    transfer_id: str | None
    actor: str


async def process_requests(pool: asyncpg.Pool, limit: int = 100) -> int:
    """Apply up to ``limit`` unprocessed transfer requests, oldest first; returns how many."""
    done = 0
    while done < limit:
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """
                SELECT id, action, transfer_id, actor FROM operator_requests
                 WHERE processed_at IS NULL AND action = ANY($1::text[])
                 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED
                """,
                list(TRANSFER_ACTIONS),
            )
            if row is None:
                return done
            request = OperatorRequest(**dict(row))
            applied, outcome = await apply_request(conn, request)
            await conn.execute(
                "UPDATE operator_requests SET processed_at = now(), outcome = $2 WHERE id = $1",
                request.id,
                outcome,
            )
        OPERATOR_ACTIONS.labels(request.action, "applied" if applied else "refused").inc()
        log.info("operator request %d (%s): %s", request.id, request.action, outcome)
        done += 1
    return done


async def apply_request(conn: asyncpg.Connection, request: OperatorRequest) -> tuple[bool, str]:
    """Apply one request inside the caller's transaction: (applied, outcome sentence)."""
    if request.transfer_id is None:
        return False, f"refused: {request.action} needs a transfer id"
    row = await conn.fetchrow(
        """
        SELECT t.status, t.route_id, n.closed_at FROM transfers AS t
          LEFT JOIN relay_notes AS n ON n.transfer_id = t.id
         WHERE t.id = $1 FOR UPDATE OF t
        """,
        request.transfer_id,
    )
    if row is None:
        return False, f"refused: there is no transfer {request.transfer_id}"
    status, closed = TransferStatus(row["status"]), row["closed_at"] is not None
    plan = _plan(request.action, status, closed)
    if isinstance(plan, str):
        return False, plan
    to_status, reason, note, outcome = plan
    await _note(conn, request, note)
    if to_status is not None:
        move = Move(request.transfer_id, to_status, reason=reason, only_from=frozenset({status}))
        await move_transfers(conn, [move])
        if to_status is S.FAILED:
            RELEASE_FAILURES.labels(row["route_id"], "operator").inc()
    else:
        await conn.execute("UPDATE transfers SET last_error = $2 WHERE id = $1", request.transfer_id, reason)
    return True, outcome


_Plan = tuple[TransferStatus | None, str, str, str]


def _plan(action: str, status: TransferStatus, closed: bool) -> _Plan | str:
    """(new status or None, reason, note column, outcome) for ``action``, or why it is refused."""
    if action == "APPROVE" and status is S.HELD:
        return S.CONFIRMED, "approved by operator", "limits_waived_at", "approved: released despite its hold"
    if action == "REJECT" and status is S.HELD:
        return S.FAILED, REJECTED, "closed_at", "rejected: FAILED, never released"
    if action == "RETRY" and status is S.FAILED and not closed:
        return S.CONFIRMED, "retried by operator", "retry", "retried: CONFIRMED again"
    if action == "CANCEL" and status is S.HELD:
        return S.FAILED, CANCELLED, "closed_at", "cancelled: FAILED, never released"
    if action == "CANCEL" and status is S.FAILED:
        return None, CANCELLED, "closed_at", "cancelled: stays FAILED, never released"
    if action == "RETRY" and closed:
        return "refused: an operator rejected or cancelled this transfer; it is never released"
    allowed = {"APPROVE": "HELD", "REJECT": "HELD", "RETRY": "FAILED", "CANCEL": "HELD or FAILED"}
    return f"refused: the transfer is {status.value}; {action} applies to a {allowed[action]} transfer"


async def _note(conn: asyncpg.Connection, request: OperatorRequest, column: str) -> None:
    """Record the decision in ``relay_notes`` (a retry clears the back-off and liquidity clock)."""
    sets = "short_of_liquidity_since = NULL, retry_at = NULL" if column == "retry" else f"{column} = now()"
    # NOTE: column comes from _plan's fixed set of names, never from input.
    await conn.execute(
        """
        INSERT INTO relay_notes (transfer_id, request_id) VALUES ($1, $2)
        ON CONFLICT (transfer_id) DO UPDATE SET request_id = $2
        """,
        request.transfer_id,
        request.id,
    )
    await conn.execute(
        f"UPDATE relay_notes SET {sets} WHERE transfer_id = $1",  # noqa: S608 -- constants chosen by _plan
        request.transfer_id,
    )


async def refresh_gauges(pool: asyncpg.Pool) -> None:
    """Set the held, dead-letter and route-paused gauges from the database (the source of truth)."""
    rows = await pool.fetch(
        """
        SELECT route_id, count(*) FILTER (WHERE status = 'HELD') AS held,
               count(*) FILTER (WHERE status = 'FAILED') AS failed
          FROM transfers WHERE status IN ('HELD', 'FAILED') GROUP BY route_id
        """
    )
    # NOTE: a route whose last held transfer left must drop to 0, not keep its old value.
    for route in _GAUGED_ROUTES - {row["route_id"] for row in rows}:
        HELD_TRANSFERS.labels(route).set(0)
        DEAD_LETTERS.labels(route).set(0)
    _GAUGED_ROUTES.update(row["route_id"] for row in rows)
    for row in rows:
        HELD_TRANSFERS.labels(row["route_id"]).set(row["held"])
        DEAD_LETTERS.labels(row["route_id"]).set(row["failed"])
    for route in await pool.fetch("SELECT route_id, paused FROM routes"):
        ROUTE_PAUSED.labels(route["route_id"]).set(1 if route["paused"] else 0)


class OperatorDesk:
    """Applies operator requests on every NOTIFY and every ``interval`` seconds."""

    def __init__(self, pool: asyncpg.Pool, *, dsn: str, interval: float) -> None:
        self._pool = pool
        self._loop = NotifiedLoop(
            self._round, dsn=dsn, channel=OPERATOR_CHANNEL, interval=interval, name="relayer-operator-desk"
        )

    async def start(self) -> None:
        await self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def _round(self) -> None:
        # NOTE: a failed round is retried by the loop; the requests wait in the table.
        await process_requests(self._pool)
        await refresh_gauges(self._pool)
