"""Route limits: a confirmed transfer over one is HELD for an operator, never released.

Checked once per transfer, before its first release attempt (a transfer with a
release attempt or a counted try was already let through, and a reorg that moves
it back to CONFIRMED must not hold it half-released). An operator's APPROVE
waives the checks for that transfer (``relay_notes.limits_waived_at``).

The limits of a route (``RouteConfig``, token base units):

- ``max_amount``: largest amount one transfer may carry.
- ``daily_cap``: most volume per UTC day of the lock's block time, counting the
  route's earlier transfers of that day that were let through (or still wait).
- ``sender_hourly_limit``: transfers per sender in the hour up to the lock's block
  time (default 10, as the original design asked).
- adapter ``legacy``: the original design's bridges pay the sender, so a transfer
  that names another recipient is held rather than paying an address the user
  did not name.

"Earlier" is (lock block time, lock nonce), so every worker reaches the same
answer. Counting includes transfers still CONFIRMED whose fate is undecided, so
a transfer's answer never depends on a decision being made concurrently: two
workers racing can only hold too much, never let too much through (no lock is
needed, and vetting runs in parallel).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from ferry.domain import TransferStatus
from ferry.metrics import LIMIT_HOLDS, TRANSFER_TRANSITIONS
from ferry.settings import ChainsConfig, RouteConfig
from ferry.transitions import Move, move_transfers

#: States of transfers that were not let through: they do not count towards limits.
NOT_COUNTED = ("PENDING", "ORPHANED", "HELD", "FAILED")


@dataclass(frozen=True)
class LimitSubject:
    """What the limits look at in one transfer."""

    route_id: str
    sender: str
    recipient: str
    amount: Decimal
    nonce: Decimal
    lock_block_time: datetime


async def hold_if_over_limits(pool: asyncpg.Pool, chains: ChainsConfig, transfer_id: str) -> str | None:
    """Move a CONFIRMED, never-tried transfer over a limit to HELD; returns the reason, or None."""
    async with pool.acquire() as conn, conn.transaction():
        subject = await _subject_if_unchecked(conn, transfer_id)
        if subject is None:
            return None
        route = _route_of(chains, subject.route_id)
        if route is None:
            return None  # NOTE: relayer.plan holds transfers of unconfigured routes.
        found = await limit_problem(conn, route, subject)
        if found is None:
            return None
        limit, reason = found
        changes = await move_transfers(
            conn,
            [
                Move(
                    transfer_id,
                    TransferStatus.HELD,
                    reason=reason,
                    only_from=frozenset({TransferStatus.CONFIRMED}),
                )
            ],
        )
    if changes:
        LIMIT_HOLDS.labels(subject.route_id, limit).inc()
        TRANSFER_TRANSITIONS.labels(subject.route_id, TransferStatus.HELD.value).inc()
        return reason
    return None


def _route_of(chains: ChainsConfig, route_id: str) -> RouteConfig | None:
    return next((r for r in chains.routes if r.route_id == route_id), None)


async def _subject_if_unchecked(conn: asyncpg.Connection, transfer_id: str) -> LimitSubject | None:
    row = await conn.fetchrow(
        """
        SELECT t.route_id, t.sender, t.recipient, t.amount, t.nonce, t.lock_block_time
          FROM transfers AS t
          LEFT JOIN relay_notes AS n ON n.transfer_id = t.id
         WHERE t.id = $1 AND t.status = 'CONFIRMED' AND t.attempts = 0
           AND n.limits_waived_at IS NULL
           AND NOT EXISTS (SELECT 1 FROM release_attempts AS a WHERE a.transfer_id = t.id)
        """,
        transfer_id,
    )
    return None if row is None else LimitSubject(**dict(row))


async def limit_problem(
    conn: asyncpg.Connection, route: RouteConfig, subject: LimitSubject
) -> tuple[str, str] | None:
    """(limit name, reason sentence) of the first limit the transfer breaks, or None."""
    if route.adapter == "legacy" and subject.recipient.lower() != subject.sender.lower():
        return "legacy_recipient", (
            f"route {route.route_id} releases through a legacy bridge that pays the sender "
            f"{subject.sender}, but the transfer names recipient {subject.recipient}: approve it "
            "to pay the sender anyway, or reject it"
        )
    if route.max_amount is not None and subject.amount > route.max_amount:
        return "max_amount", (
            f"the amount {subject.amount} is over route {route.route_id}'s per-transfer limit "
            f"of {route.max_amount}"
        )
    sent = await _sender_count(conn, subject)
    if sent >= route.sender_hourly_limit:
        return "sender_rate", (
            f"sender {subject.sender} already made {sent} transfers on route {route.route_id} in the "
            f"hour before this one; the limit is {route.sender_hourly_limit} an hour"
        )
    if route.daily_cap is not None:
        volume = await _day_volume(conn, subject)
        if volume + subject.amount > route.daily_cap:
            day = subject.lock_block_time.date().isoformat()
            return "daily_cap", (
                f"route {route.route_id} already carried {volume} on {day} (UTC); this transfer's "
                f"{subject.amount} would pass the daily cap of {route.daily_cap}"
            )
    return None


async def _sender_count(conn: asyncpg.Connection, subject: LimitSubject) -> int:
    count: int = await conn.fetchval(
        """
        SELECT count(*) FROM transfers
         WHERE route_id = $1 AND sender = $2 AND status <> ALL($5::text[])
           AND lock_block_time > $3::timestamptz - interval '1 hour'
           AND (lock_block_time, nonce) < ($3, $4)
        """,
        subject.route_id,
        subject.sender,
        subject.lock_block_time,
        subject.nonce,
        list(NOT_COUNTED),
    )
    return count


async def _day_volume(conn: asyncpg.Connection, subject: LimitSubject) -> Decimal:
    volume: Decimal = await conn.fetchval(
        """
        SELECT COALESCE(sum(amount), 0) FROM transfers
         WHERE route_id = $1 AND status <> ALL($4::text[])
           AND lock_block_time >= date_trunc('day', $2::timestamptz, 'UTC')
           AND (lock_block_time, nonce) < ($2, $3)
        """,
        subject.route_id,
        subject.lock_block_time,
        subject.nonce,
        list(NOT_COUNTED),
    )
    return volume
