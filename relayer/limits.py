"""Route limits, checked for a whole set of transfers at once: over one, a transfer is HELD.

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
workers racing can only hold too much, never let too much through.

Set-based: ``LimitBook.load`` reads, for all the candidates of one route, the
day's volume before the first of them (one aggregate query) and the counted
transfers from an hour before the first candidate (of the candidates' senders)
and between the first and the last candidate (of everyone) in one query. ``check``
then walks the candidates in lock order keeping running aggregates (the day's
volume, a sliding hour per sender), so a candidate held here stops counting for
the candidates after it, exactly as if they had been checked one by one. No query
runs per transfer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import asyncpg

from ferry.settings import RouteConfig

#: States of transfers that were not let through: they do not count towards limits.
NOT_COUNTED = ("PENDING", "ORPHANED", "HELD", "FAILED")
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class LimitSubject:
    """What the limits look at in one transfer."""

    id: str
    sender: str
    recipient: str
    amount: Decimal
    nonce: Decimal
    lock_block_time: datetime

    @property
    def key(self) -> tuple[datetime, Decimal, str]:
        return (self.lock_block_time, self.nonce, self.id)


@dataclass(frozen=True)
class _Counted:
    """A transfer that counts towards the limits of its route (let through, or still waiting)."""

    id: str
    sender: str
    amount: Decimal
    lock_block_time: datetime
    nonce: Decimal
    #: Before the first candidate: already in the day's base volume, read only for the hourly count.
    before_first: bool

    @property
    def key(self) -> tuple[datetime, Decimal, str]:
        return (self.lock_block_time, self.nonce, self.id)


@dataclass
class LimitBook:
    """The counted transfers around a set of candidates of one route, and the running aggregates."""

    route: RouteConfig
    counted: list[_Counted]
    day_volume: dict[date, Decimal]
    _hours: dict[str, deque[datetime]] = field(default_factory=dict)

    @classmethod
    async def load(
        cls, conn: asyncpg.Connection, route: RouteConfig, candidates: Sequence[LimitSubject]
    ) -> LimitBook:
        """Read what the limits of ``candidates`` (one route) depend on, in two queries."""
        if not candidates:
            return cls(route, [], {})
        first = min(candidates, key=lambda c: c.key)
        last = max(candidates, key=lambda c: c.key)
        day_volume: dict[date, Decimal] = {}
        if route.daily_cap is not None:
            day_volume[_day(first.lock_block_time)] = await conn.fetchval(
                """
                SELECT COALESCE(sum(amount), 0) FROM transfers
                 WHERE route_id = $1 AND status <> ALL($4::text[])
                   AND lock_block_time >= date_trunc('day', $2::timestamptz, 'UTC')
                   AND (lock_block_time, nonce, id) < ($2, $3, $5)
                """,
                route.route_id,
                first.lock_block_time,
                first.nonce,
                list(NOT_COUNTED),
                first.id,
            )
        rows = await conn.fetch(
            """
            SELECT id, sender, amount, lock_block_time, nonce, false AS before_first FROM transfers
             WHERE route_id = $1 AND status <> ALL($2::text[])
               AND (lock_block_time, nonce, id) >= ($3, $4, $5)
               AND (lock_block_time, nonce, id) <= ($6, $7, $8)
            UNION ALL
            SELECT id, sender, amount, lock_block_time, nonce, true FROM transfers
             WHERE route_id = $1 AND status <> ALL($2::text[]) AND sender = ANY($9::text[])
               AND lock_block_time > $3::timestamptz - interval '1 hour'
               AND (lock_block_time, nonce, id) < ($3, $4, $5)
            """,
            route.route_id,
            list(NOT_COUNTED),
            first.lock_block_time,
            first.nonce,
            first.id,
            last.lock_block_time,
            last.nonce,
            last.id,
            sorted({c.sender for c in candidates}),
        )
        counted = sorted((_Counted(**dict(row)) for row in rows), key=lambda c: c.key)
        return cls(route, counted, day_volume)

    def check(
        self, candidates: Sequence[LimitSubject], skip: frozenset[str] = frozenset()
    ) -> dict[str, tuple[str, str]]:
        """(limit name, reason) for each candidate over a limit, walking in lock order.

        ``skip`` names candidates held for another reason: they stop counting too.
        """
        by_id = {c.id: c for c in candidates}
        problems: dict[str, tuple[str, str]] = {}
        for row in self.counted:
            if row.id in skip:
                continue
            subject = by_id.get(row.id)
            if subject is not None:
                found = self._problem(subject)
                if found is not None:
                    problems[row.id] = found
                    continue
            self._count(row)
        return problems

    def _count(self, row: _Counted) -> None:
        self._hours.setdefault(row.sender, deque()).append(row.lock_block_time)
        if not row.before_first and self.route.daily_cap is not None:
            day = _day(row.lock_block_time)
            self.day_volume[day] = self.day_volume.get(day, Decimal(0)) + row.amount

    def _problem(self, subject: LimitSubject) -> tuple[str, str] | None:
        route = self.route
        found = static_problem(route, subject)
        if found is not None:
            return found
        window = self._hours.setdefault(subject.sender, deque())
        while window and window[0] <= subject.lock_block_time - HOUR:
            window.popleft()
        if len(window) >= route.sender_hourly_limit:
            return "sender_rate", (
                f"sender {subject.sender} already made {len(window)} transfers on route {route.route_id} in "
                f"the hour before this one; the limit is {route.sender_hourly_limit} an hour"
            )
        if route.daily_cap is not None:
            volume = self.day_volume.get(_day(subject.lock_block_time), Decimal(0))
            if volume + subject.amount > route.daily_cap:
                day = _day(subject.lock_block_time).isoformat()
                return "daily_cap", (
                    f"route {route.route_id} already carried {int(volume)} on {day} (UTC); this transfer's "
                    f"{int(subject.amount)} would pass the daily cap of {route.daily_cap}"
                )
        return None


def static_problem(route: RouteConfig, subject: LimitSubject) -> tuple[str, str] | None:
    """The limits that look at the transfer alone: the legacy adapter's recipient and ``max_amount``."""
    if route.adapter == "legacy" and subject.recipient.lower() != subject.sender.lower():
        return "legacy_recipient", (
            f"route {route.route_id} releases through a legacy bridge that pays the sender "
            f"{subject.sender}, but the transfer names recipient {subject.recipient}: approve it "
            "to pay the sender anyway, or reject it"
        )
    if route.max_amount is not None and subject.amount > route.max_amount:
        return "max_amount", (
            f"the amount {int(subject.amount)} is over route {route.route_id}'s per-transfer limit "
            f"of {route.max_amount}"
        )
    return None


def _day(moment: datetime) -> date:
    """The UTC day of a lock's block time."""
    return moment.astimezone(UTC).date()
