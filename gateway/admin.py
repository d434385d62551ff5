"""Admin mutations and the audit log: what operators may do through the API, and the trail it leaves.

Every mutation needs an admin's credentials (``gateway.auth``); without them it
fails with an authentication error before anything is read or written. Each
writes one ``operator_requests`` row (who, what, when, from where, why) in the
same transaction as its effect, so the audit log holds every action taken:

- ``pauseRoute`` / ``resumeRoute`` flip ``routes.paused`` (a flag, not chain data)
  and record a request that is processed at once.
- ``retryTransfer``, ``cancelTransfer``, ``approveHeldTransfer``, ``rejectHeldTransfer``
  record a request and NOTIFY ``ferry_operator_requests``; the relayer carries it
  out and fills ``processedAt`` and ``outcome``. The transfer's state is checked
  first so an action that cannot apply is a clear error, not a queued refusal.
  ``waitSeconds`` (0 to 10) waits for the relayer's outcome before answering.

The writes go through a small pool of their own on the primary; the gateway's
read pool stays read-only.
"""

from __future__ import annotations

import asyncio
import enum
from datetime import datetime

import asyncpg
import strawberry

from ferry import metrics
from ferry.domain import TransferStatus
from gateway.auth import Principal
from gateway.errors import UserError, checked_text
from gateway.resolvers import canonical_transfer_id
from gateway.scalars import BigInt
from gateway.types import Info

#: The relayer's channel for new operator requests (relayer.operator.OPERATOR_CHANNEL).
OPERATOR_CHANNEL = "ferry_operator_requests"
MAX_WAIT_SECONDS = 10.0
_POLL_SECONDS = 0.1
_MAX_REASON = 500
_REQUEST_COLUMNS = (
    "id, action, transfer_id, route_id, actor, actor_role, origin, reason, created_at, processed_at, outcome"
)
_REQUEST_BY_ID = f"SELECT {_REQUEST_COLUMNS} FROM operator_requests WHERE id = $1"  # noqa: S608 (constant)
_INSERT_ROUTE_REQUEST = (
    "INSERT INTO operator_requests"  # noqa: S608 (constant column list)
    " (action, route_id, actor, actor_role, origin, reason, processed_at, outcome)"
    f" VALUES ($1, $2, $3, $4, $5, $6, now(), $7) RETURNING {_REQUEST_COLUMNS}"
)
_INSERT_TRANSFER_REQUEST = (
    "INSERT INTO operator_requests"  # noqa: S608 (constant column list)
    " (action, transfer_id, actor, actor_role, origin, reason)"
    f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_REQUEST_COLUMNS}"
)
#: For each transfer action: the states it applies to.
_APPLIES_TO: dict[str, frozenset[TransferStatus]] = {
    "APPROVE": frozenset({TransferStatus.HELD}),
    "REJECT": frozenset({TransferStatus.HELD}),
    "RETRY": frozenset({TransferStatus.FAILED}),
    "CANCEL": frozenset({TransferStatus.HELD, TransferStatus.FAILED}),
}


@strawberry.enum(description="An admin action.")
class OperatorAction(enum.Enum):
    PAUSE_ROUTE = "PAUSE_ROUTE"
    RESUME_ROUTE = "RESUME_ROUTE"
    RETRY = "RETRY"
    CANCEL = "CANCEL"
    APPROVE = "APPROVE"
    REJECT = "REJECT"


@strawberry.enum(description="PENDING until the process that owns the data has acted on it.")
class OperatorRequestStatus(enum.Enum):
    PENDING = "PENDING"
    PROCESSED = "PROCESSED"


@strawberry.type(description="An admin action: the request and its audit record.")
class OperatorRequest:
    id: BigInt
    action: OperatorAction
    transfer_id: str | None
    route_id: str | None
    actor: str = strawberry.field(description="Who: the JWT subject, key:<API key name>, or cli:<user>.")
    actor_role: str
    origin: str | None = strawberry.field(description="From where: the client's address or host.")
    reason: str | None
    created_at: datetime
    processed_at: datetime | None
    outcome: str | None = strawberry.field(description="What happened, in a sentence (once processed).")
    status: OperatorRequestStatus

    @classmethod
    def of(cls, row: asyncpg.Record) -> OperatorRequest:
        return cls(
            id=BigInt(row["id"]),
            action=OperatorAction(row["action"]),
            transfer_id=row["transfer_id"],
            route_id=row["route_id"],
            actor=row["actor"],
            actor_role=row["actor_role"],
            origin=row["origin"],
            reason=row["reason"],
            created_at=row["created_at"],
            processed_at=row["processed_at"],
            outcome=row["outcome"],
            status=OperatorRequestStatus.PENDING
            if row["processed_at"] is None
            else OperatorRequestStatus.PROCESSED,
        )


async def _admin(info: Info, action: str) -> Principal:
    try:
        principal = await info.context.principal()
        principal.require("admin")
    except UserError:
        metrics.ADMIN_ACTIONS.labels(action, "unauthorized").inc()
        raise
    return principal


def _reason(reason: str | None) -> str | None:
    return None if reason is None else checked_text(reason, "reason", _MAX_REASON)


async def _set_route_paused(info: Info, route_id: str, paused: bool, reason: str | None) -> OperatorRequest:
    action = "PAUSE_ROUTE" if paused else "RESUME_ROUTE"
    principal = await _admin(info, action)
    reason = _reason(reason)
    checked_text(route_id, "routeId")
    pool = await info.context.gateway.admin_pool()
    async with pool.acquire() as conn, conn.transaction():
        updated = await conn.fetchval(
            "UPDATE routes SET paused = $2, paused_reason = $3, updated_at = now() WHERE route_id = $1"
            " RETURNING route_id",
            route_id,
            paused,
            reason if paused else None,
        )
        if updated is None:
            raise UserError(f"there is no route {route_id[:100]!r}: the routes query lists them")
        outcome = "paused: no new releases on this route" if paused else "resumed"
        row = await conn.fetchrow(
            _INSERT_ROUTE_REQUEST,
            action,
            route_id,
            principal.actor,
            principal.role,
            info.context.origin(),
            reason,
            outcome,
        )
        await conn.execute("SELECT pg_notify($1, $2)", OPERATOR_CHANNEL, str(row["id"]))
    metrics.ADMIN_ACTIONS.labels(action, "applied").inc()
    return OperatorRequest.of(row)


async def _request(
    info: Info, action: str, id: strawberry.ID, reason: str | None, wait_seconds: float
) -> OperatorRequest:
    principal = await _admin(info, action)
    transfer = canonical_transfer_id(id)
    reason = _reason(reason)
    if not 0 <= wait_seconds <= MAX_WAIT_SECONDS:
        raise UserError(f"waitSeconds must be between 0 and {MAX_WAIT_SECONDS:g}")
    pool = await info.context.gateway.admin_pool()
    async with pool.acquire() as conn, conn.transaction():
        status = await conn.fetchval("SELECT status FROM transfers WHERE id = $1", transfer)
        if status is None:
            raise UserError(f"there is no transfer {transfer}")
        allowed = _APPLIES_TO[action]
        if TransferStatus(status) not in allowed:
            metrics.ADMIN_ACTIONS.labels(action, "refused").inc()
            names = " or ".join(sorted(s.value for s in allowed))
            raise UserError(f"the transfer is {status}; {action} applies to a {names} transfer")
        row = await conn.fetchrow(
            _INSERT_TRANSFER_REQUEST,
            action,
            transfer,
            principal.actor,
            principal.role,
            info.context.origin(),
            reason,
        )
        await conn.execute("SELECT pg_notify($1, $2)", OPERATOR_CHANNEL, str(row["id"]))
    metrics.ADMIN_ACTIONS.labels(action, "requested").inc()
    if wait_seconds > 0:
        row = await _wait_for_outcome(pool, row, wait_seconds)
    return OperatorRequest.of(row)


async def _wait_for_outcome(pool: asyncpg.Pool, row: asyncpg.Record, wait: float) -> asyncpg.Record:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while loop.time() < deadline:
        await asyncio.sleep(_POLL_SECONDS)
        latest = await pool.fetchrow(_REQUEST_BY_ID, row["id"])
        if latest is not None and latest["processed_at"] is not None:
            return latest
    return row


async def pause_route(info: Info, route_id: str, reason: str | None = None) -> OperatorRequest:
    return await _set_route_paused(info, route_id, True, reason)


async def resume_route(info: Info, route_id: str, reason: str | None = None) -> OperatorRequest:
    return await _set_route_paused(info, route_id, False, reason)


async def retry_transfer(
    info: Info, id: strawberry.ID, reason: str | None = None, wait_seconds: float = 0
) -> OperatorRequest:
    return await _request(info, "RETRY", id, reason, wait_seconds)


async def cancel_transfer(
    info: Info, id: strawberry.ID, reason: str | None = None, wait_seconds: float = 0
) -> OperatorRequest:
    return await _request(info, "CANCEL", id, reason, wait_seconds)


async def approve_held_transfer(
    info: Info, id: strawberry.ID, reason: str | None = None, wait_seconds: float = 0
) -> OperatorRequest:
    return await _request(info, "APPROVE", id, reason, wait_seconds)


async def reject_held_transfer(
    info: Info, id: strawberry.ID, reason: str | None = None, wait_seconds: float = 0
) -> OperatorRequest:
    return await _request(info, "REJECT", id, reason, wait_seconds)


@strawberry.type(description="Admin actions; each needs an admin credential and is written to the audit log.")
class Mutation:
    pause_route: OperatorRequest = strawberry.mutation(
        resolver=pause_route, description="Stop releases on a route. Takes effect at once."
    )
    resume_route: OperatorRequest = strawberry.mutation(
        resolver=resume_route, description="Let releases on a paused route continue."
    )
    retry_transfer: OperatorRequest = strawberry.mutation(
        resolver=retry_transfer, description="Relay a FAILED transfer again; the relayer acts on it."
    )
    cancel_transfer: OperatorRequest = strawberry.mutation(
        resolver=cancel_transfer, description="Close a HELD or FAILED transfer for good, never released."
    )
    approve_held_transfer: OperatorRequest = strawberry.mutation(
        resolver=approve_held_transfer, description="Release a HELD transfer despite its limits."
    )
    reject_held_transfer: OperatorRequest = strawberry.mutation(
        resolver=reject_held_transfer, description="Refuse a HELD transfer: FAILED, never released."
    )


async def audit_log(
    info: Info,
    first: int = 50,
    before_id: BigInt | None = None,
    transfer_id: strawberry.ID | None = None,
    route_id: str | None = None,
) -> list[OperatorRequest]:
    """Operator requests, newest first (operator or admin role)."""
    await info.context.principal()
    limit = info.context.gateway.settings.max_page_size
    if not 1 <= first <= limit:
        raise UserError(f"first must be between 1 and {limit} (got {first}); page with beforeId instead")
    wanted = None if transfer_id is None else canonical_transfer_id(transfer_id)
    if route_id is not None:
        checked_text(route_id, "routeId")
    rows = await info.context.gateway.pool.fetch(
        f"SELECT {_REQUEST_COLUMNS} FROM operator_requests"  # noqa: S608 (constant columns)
        " WHERE ($1::bigint IS NULL OR id < $1) AND ($2::text IS NULL OR transfer_id = $2)"
        " AND ($3::text IS NULL OR route_id = $3) ORDER BY id DESC LIMIT $4",
        before_id,
        wanted,
        route_id,
        first,
    )
    return [OperatorRequest.of(row) for row in rows]
