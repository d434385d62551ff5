"""Moving transfers between states: the one path to ``transfer_status_history``.

Every writer (indexer, relayer, admin actions) changes a transfer's status through
``move_transfers`` (existing rows) or ``record_new`` (rows it just inserted), inside
its own transaction, as the *last* statements before COMMIT. This module keeps
three promises:

1. A move only happens from a state listed in ``ALLOWED_FROM`` (or the caller's
   narrower set), so duplicate or late updates are no-ops, never regressions.
2. History ids are in commit order: the history insert takes a transaction-level
   advisory lock that is held until COMMIT, so two transactions can never commit
   their history rows out of id order. A reader that has seen id N has seen every
   change committed before it (the subscription cursor depends on this).
3. One ``NOTIFY ferry_transfer_changes, '<highest id>'`` per transaction, delivered
   by PostgreSQL only at COMMIT, so nobody hears of uncommitted state.
4. Every history row names an existing transfer: each insert's rows are counted
   joined to ``transfers`` (for the metrics below) and the count must be all of them,
   or ``UnknownTransfer`` rolls the writer back. This replaced a foreign key checked
   (and a row locked) per history row (migration 0010). The one exception: new
   transfers the caller COPYed in the same transaction and counted itself
   (``Created.tally``; the COPY is the proof they exist).

Many new transfers at once (a backfill's range) pass as ``Created``, two lists, and
their history rows are COPYed as text: no ``Change`` object per transfer.

The business counters (``ferry_transfer_transitions_total{route, status}`` and
``ferry_transfer_volume_tokens_total{route, status}``) are counted here, from the
same statement that writes the history rows: every writer moves transfers through
this module, so each change is counted once, by the process that made it. Amounts
become token units with the source token's decimals from the ``tokens`` table (a
transfer of an unregistered token adds no volume), and a route that is not
configured is labelled ``unrouted`` (a lock may name any target chain: labels stay
bounded). They are counted just before the writer's COMMIT: in the rare case that
the COMMIT then fails, the counters are ahead of the database, which stays the
exact ledger (``analytics.daily_volume``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import asyncpg

from ferry import metrics
from ferry.db import copy_text
from ferry.domain import ALLOWED_FROM, CHANGES_CHANNEL, TransferStatus

#: Arbitrary constant key of the advisory lock that orders history inserts.
HISTORY_LOCK_KEY = 0x0F3E_5E47
#: Changes in one call from which their history rows are COPYed (``_copy_history``).
COPY_HISTORY_FROM = 512
_HISTORY_COLUMNS = (
    "transfer_id",
    "from_status",
    "to_status",
    "reason",
    "tx_hash",
    "block_number",
    "created_at",
)


class Created(NamedTuple):
    """Many transfers this transaction inserted (a backfill's range): ids and first states, in order.

    Two parallel lists instead of one ``Change`` per transfer: their history rows are
    COPYed as text (``_insert_created``), so a range of thousands of locks costs no
    per-transfer Python object on this path.
    """

    transfer_ids: list[str]
    statuses: list[str]
    #: What the metrics count of these rows, when the caller knows it: only for transfers it has
    #: COPYed into ``transfers`` in this same transaction (the COPY proved they exist). Then the
    #: rows are not counted again joined to ``transfers`` (``_written``: 0.77 s of a 100,000-lock
    #: backfill's 8.6 s of statements); None: they are.
    tally: Sequence[Tally] | None = None


class Tally(NamedTuple):
    """History rows of one (route, status) and their volume in tokens, as ``_written`` counts them.

    ``route`` is the route id, or ``unrouted`` when the route is not configured; ``tokens``
    is the amount over ``10 ** decimals`` of the token (None when the token is unknown).
    """

    route: str
    status: str
    moved: int
    tokens: float | None


class UnknownTransfer(Exception):
    """A history row named a transfer that does not exist (a writer's bug): nothing is recorded."""


#: States whose move keeps the mover's reason as the transfer's ``last_error``.
_KEEPS_REASON = (TransferStatus.FAILED, TransferStatus.HELD)


@dataclass(frozen=True)
class Move:
    """Ask to move one transfer to ``to_status`` (from any allowed state, or ``only_from``)."""

    transfer_id: str
    to_status: TransferStatus
    reason: str | None = None
    tx_hash: str | None = None
    block_number: int | None = None
    only_from: frozenset[TransferStatus] | None = None


@dataclass(frozen=True)
class Change:
    """A move that happened (or a new transfer's first state, ``from_status`` None)."""

    transfer_id: str
    from_status: TransferStatus | None
    to_status: TransferStatus
    reason: str | None = None
    tx_hash: str | None = None
    block_number: int | None = None


async def move_transfers(
    conn: asyncpg.Connection,
    moves: Sequence[Move],
    created: Iterable[tuple[str, TransferStatus]] = (),
    bulk: Created | None = None,
) -> list[Change]:
    """Apply the legal moves among ``moves``; record history and NOTIFY once. Returns the changes.

    ``created`` names transfers the caller inserted in this transaction (their first
    state, recorded first), so one call records everything and sends the transaction's
    one NOTIFY. Must run inside a transaction; call it last, then commit promptly.
    ``bulk`` is the same for many transfers at once: their history rows come first of
    all, and they are not among the returned changes.

    Set-based: moves are taken in sequence order, so a transfer may move more than
    once (PENDING -> CONFIRMED -> RELEASED in one indexer range): its n-th move goes in
    the n-th wave, and each wave is one UPDATE per (target state, ``only_from``), rows
    locked in id order (two writers moving overlapping sets cannot deadlock). One
    statement per state instead of one round trip per transfer keeps the rows locked
    for milliseconds: the relayer settling transfers an indexer range also moves used
    to wait 1-3 s on them (docs/relayer.md).
    """
    changes = [Change(transfer_id, None, status) for transfer_id, status in created]
    for wave in _waves(moves):
        changes += await _move_wave(conn, wave)
    await record_history(conn, changes, bulk)
    return changes


def _waves(moves: Sequence[Move]) -> list[list[Move]]:
    """Split ``moves`` so that no transfer appears twice in a wave; a transfer's moves keep their order."""
    waves: list[list[Move]] = []
    seen: dict[str, int] = {}
    for move in moves:
        index = seen.get(move.transfer_id, -1) + 1
        seen[move.transfer_id] = index
        if index == len(waves):
            waves.append([])
        waves[index].append(move)
    return waves


async def _move_wave(conn: asyncpg.Connection, moves: Sequence[Move]) -> list[Change]:
    """Moves of distinct transfers: one UPDATE per (target state, ``only_from``); changes in move order."""
    groups: dict[tuple[TransferStatus, frozenset[TransferStatus] | None], list[Move]] = {}
    for move in moves:
        groups.setdefault((move.to_status, move.only_from), []).append(move)
    moved: dict[str, TransferStatus] = {}
    for (to_status, only_from), group in groups.items():
        allowed = ALLOWED_FROM[to_status] if only_from is None else ALLOWED_FROM[to_status] & only_from
        rows = await conn.fetch(
            """
            UPDATE transfers AS t
               SET status = $2, updated_at = now(), last_error = COALESCE(r.reason, t.last_error)
              FROM (SELECT id, status FROM transfers WHERE id = ANY($1::text[])
                     ORDER BY id FOR UPDATE) AS old,
                   unnest($1::text[], $4::text[]) AS r(id, reason)
             WHERE t.id = old.id AND r.id = old.id AND old.status = ANY($3::text[])
         RETURNING t.id, old.status AS from_status
            """,
            [m.transfer_id for m in group],
            to_status.value,
            [s.value for s in allowed],
            [m.reason if to_status in _KEEPS_REASON else None for m in group],
        )
        moved.update({row["id"]: TransferStatus(row["from_status"]) for row in rows})
    return [
        Change(m.transfer_id, moved[m.transfer_id], m.to_status, m.reason, m.tx_hash, m.block_number)
        for m in moves
        if m.transfer_id in moved
    ]


async def record_new(conn: asyncpg.Connection, created: Iterable[tuple[str, TransferStatus]]) -> list[Change]:
    """History for transfers the caller has just inserted in this transaction."""
    changes = [Change(transfer_id, None, status) for transfer_id, status in created]
    await record_history(conn, changes)
    return changes


async def record_history(
    conn: asyncpg.Connection, changes: Sequence[Change], bulk: Created | None = None
) -> int | None:
    """Insert history rows in commit order (``bulk`` first), NOTIFY once; returns the highest id written."""
    written = len(changes) + (len(bulk.transfer_ids) if bulk else 0)
    if not written:
        return None
    volumes: list[Mapping[str, Any]] = await _insert_created(conn, bulk) if bulk and bulk.transfer_ids else []
    if len(changes) >= COPY_HISTORY_FROM:
        volumes += await _copy_history(conn, changes)
    elif changes:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", HISTORY_LOCK_KEY)
        volumes += await conn.fetch(
            """
            WITH inserted AS (
            INSERT INTO transfer_status_history
                   (transfer_id, from_status, to_status, reason, tx_hash, block_number, created_at)
            SELECT transfer_id, from_status, to_status, reason, tx_hash, block_number, clock_timestamp()
              FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[])
                   AS c(transfer_id, from_status, to_status, reason, tx_hash, block_number)
            RETURNING id, transfer_id, to_status
            )
            SELECT max(max(i.id)) OVER () AS highest, coalesce(r.route_id, 'unrouted') AS route,
                   i.to_status AS status, count(*) AS moved,
                   sum(t.amount::float8 / 10::float8 ^ k.decimals) AS tokens
              FROM inserted AS i
              JOIN transfers AS t ON t.id = i.transfer_id
              LEFT JOIN routes AS r ON r.route_id = t.route_id
              LEFT JOIN tokens AS k ON k.chain_id = t.source_chain_id AND k.symbol = t.token
             GROUP BY 2, 3
            """,
            [c.transfer_id for c in changes],
            [c.from_status.value if c.from_status else None for c in changes],
            [c.to_status.value for c in changes],
            [c.reason for c in changes],
            [c.tx_hash for c in changes],
            [c.block_number for c in changes],
        )
    if sum(row["moved"] for row in volumes) != written:
        # NOTE: the rows are counted joined to ``transfers``: this is the check a foreign key made
        # per row (migration 0010); raising rolls the writer's transaction back
        raise UnknownTransfer(f"{written} history rows written, but only some name a transfer")
    for row in volumes:
        metrics.TRANSFER_TRANSITIONS.labels(route=row["route"], status=row["status"]).inc(row["moved"])
        if row["tokens"] is not None:
            metrics.TRANSFER_VOLUME.labels(route=row["route"], status=row["status"]).inc(row["tokens"])
    highest: int = max(row["highest"] for row in volumes)
    await conn.execute("SELECT pg_notify($1, $2)", CHANGES_CHANNEL, str(highest))
    return highest


async def _insert_created(conn: asyncpg.Connection, created: Created) -> list[Mapping[str, Any]]:
    """The first history rows of many new transfers: COPYed in text format, then counted by id range.

    As ``_copy_history``, but with no per-transfer ``Change``, tuple or binary row in
    Python: one text line per transfer (id, state, the shared stamp). Under the history
    lock like every history insert; the rows share one ``created_at``, the clock read
    right after the lock; COPY keeps the caller's order, so ids follow it.
    """
    unknown = set(created.statuses) - _STATES
    if unknown:
        raise ValueError(f"not transfer states: {sorted(unknown)}")
    stamp = await conn.fetchval(
        "SELECT clock_timestamp()::text FROM (SELECT pg_advisory_xact_lock($1)) AS locked", HISTORY_LOCK_KEY
    )
    tail, rows = f"\t{stamp}\n", len(created.transfer_ids)
    ids, statuses = created.transfer_ids, created.statuses
    text = "".join([f"{i}\t{s}{tail}" for i, s in zip(ids, statuses, strict=True)])
    # NOTE: transfer ids (chain:bridge:nonce) and states never hold COPY's special characters;
    # counted at C speed, and escaped one by one only if one ever does
    if text.count("\t") != 2 * rows or text.count("\n") != rows or "\\" in text or "\r" in text:
        text = "".join(f"{copy_text(i)}\t{copy_text(s)}{tail}" for i, s in zip(ids, statuses, strict=True))
    # NOTE: a memoryview (a buffer, sent as is), not a file object, which asyncpg reads through the
    # default thread pool: a hop through the event loop per read, that kept the history COPY (and
    # its transaction) open many times longer than its own work under a busy loop (a backfill).
    # Not plain bytes either: asyncpg takes bytes for a file name (os.fspath accepts them).
    await conn.copy_to_table(
        "transfer_status_history",
        source=memoryview(text.encode()),
        columns=("transfer_id", "to_status", "created_at"),
    )
    if created.tally is None:
        return await _written(conn, rows)
    if sum(t.moved for t in created.tally) != rows:
        raise ValueError(f"the tally counts {sum(t.moved for t in created.tally)} of {rows} new transfers")
    highest = await conn.fetchval("SELECT currval(pg_get_serial_sequence('transfer_status_history', 'id'))")
    return [{"highest": highest, **t._asdict()} for t in created.tally]


_STATES = frozenset(status.value for status in TransferStatus)


async def _copy_history(conn: asyncpg.Connection, changes: Sequence[Change]) -> list[asyncpg.Record]:
    """Many changes (a backfill's range): COPY the rows, then count them and their volume by id range.

    Cheaper than one ``INSERT ... FROM unnest(...)`` for thousands of rows: no array
    per column to encode, and PostgreSQL inserts COPY rows in batches. The rows share
    one ``created_at``: the clock read right after the history lock is taken (so
    timestamps still rise with ids across transactions). Under the lock no other
    writer draws ids, so this transaction's rows are the ``len(changes)`` ids up to the
    sequence's ``currval``.
    """
    stamp = await conn.fetchval(
        "SELECT clock_timestamp() FROM (SELECT pg_advisory_xact_lock($1)) AS locked", HISTORY_LOCK_KEY
    )
    await conn.copy_records_to_table(
        "transfer_status_history",
        records=[
            (
                c.transfer_id,
                c.from_status.value if c.from_status else None,
                c.to_status.value,
                c.reason,
                c.tx_hash,
                c.block_number,
                stamp,
            )
            for c in changes
        ],
        columns=_HISTORY_COLUMNS,
    )
    return await _written(conn, len(changes))


async def _written(conn: asyncpg.Connection, rows: int) -> list[asyncpg.Record]:
    """Counts and volume of the last ``rows`` history ids (this transaction's, under the history lock)."""
    volumes: list[asyncpg.Record] = await conn.fetch(
        """
        WITH written AS (
            SELECT currval(pg_get_serial_sequence('transfer_status_history', 'id')) AS highest
        )
        SELECT w.highest, coalesce(r.route_id, 'unrouted') AS route, h.to_status AS status,
               count(*) AS moved, sum(t.amount::float8 / 10::float8 ^ k.decimals) AS tokens
          FROM written AS w
          JOIN transfer_status_history AS h ON h.id > w.highest - $1 AND h.id <= w.highest
          JOIN transfers AS t ON t.id = h.transfer_id
          LEFT JOIN routes AS r ON r.route_id = t.route_id
          LEFT JOIN tokens AS k ON k.chain_id = t.source_chain_id AND k.symbol = t.token
         GROUP BY 1, 2, 3
        """,
        rows,
    )
    return volumes
