"""Every SQL query the gateway runs, all reads, all parameterised.

Resolvers and the change feed call these functions; none of them builds SQL
from client text (filters become ``$n`` parameters through ``_Query``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, NamedTuple

import asyncpg

from gateway.paging import TransferFilter, TransferPosition
from gateway.records import HISTORY_COLUMNS, TRANSFER_COLUMNS, StatusChange, TransferRecord

log = logging.getLogger(__name__)

_TRANSFER_SELECT = f"SELECT {', '.join(TRANSFER_COLUMNS)} FROM transfers"  # noqa: S608 (constant column list)
_NEWEST_FIRST = "lock_block_time DESC, source_chain_id DESC, source_bridge DESC, nonce DESC"
_POSITION = "(lock_block_time, source_chain_id, source_bridge, nonce)"


class _Query:
    """WHERE conditions and their ``$n`` arguments, built up one filter at a time."""

    def __init__(self) -> None:
        self.conditions: list[str] = []
        self.args: list[Any] = []

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def where(self) -> str:
        return f" WHERE {' AND '.join(self.conditions)}" if self.conditions else ""


async def transfers_by_id(pool: asyncpg.Pool, ids: Sequence[str]) -> dict[str, TransferRecord]:
    rows = await pool.fetch(f"{_TRANSFER_SELECT} WHERE id = ANY($1::text[])", list(set(ids)))
    return {row["id"]: TransferRecord.from_row(row) for row in rows}


async def transfer_page(
    pool: asyncpg.Pool, transfer_filter: TransferFilter, after: TransferPosition | None, limit: int
) -> list[TransferRecord]:
    """Up to ``limit`` transfers matching the filter, newest lock first, strictly after ``after``."""
    query = _Query()
    if transfer_filter.addresses is not None:
        spellings = query.arg(list(transfer_filter.addresses))
        query.conditions.append(
            f"(sender = ANY({spellings}::text[]) OR recipient = ANY({spellings}::text[]))"
        )
    if after is not None:
        key = ", ".join(
            (
                query.arg(after.locked_at),
                query.arg(after.source_chain_id),
                query.arg(after.source_bridge),
                query.arg(after.nonce),
            )
        )
        query.conditions.append(f"{_POSITION} < ({key})")
    sql = f"{_TRANSFER_SELECT}{query.where()} ORDER BY {_NEWEST_FIRST} LIMIT {query.arg(limit)}"
    return [TransferRecord.from_row(row) for row in await pool.fetch(sql, *query.args)]


async def histories(pool: asyncpg.Pool, transfer_ids: Sequence[str]) -> dict[str, list[StatusChange]]:
    """The full status timeline of each transfer, oldest change first."""
    rows = await pool.fetch(
        f"SELECT {HISTORY_COLUMNS} FROM transfer_status_history"  # noqa: S608 (constant column list)
        " WHERE transfer_id = ANY($1::text[]) ORDER BY id",
        list(set(transfer_ids)),
    )
    timelines: dict[str, list[StatusChange]] = defaultdict(list)
    for row in rows:
        timelines[row["transfer_id"]].append(StatusChange.from_row(row))
    return timelines


async def history_after(pool: asyncpg.Pool, transfer_id: str, after: int, limit: int) -> list[StatusChange]:
    """One transfer's changes with id > ``after``, oldest first (subscription replay)."""
    rows = await pool.fetch(
        f"SELECT {HISTORY_COLUMNS} FROM transfer_status_history"  # noqa: S608 (constant column list)
        " WHERE transfer_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        transfer_id,
        after,
        limit,
    )
    return [StatusChange.from_row(row) for row in rows]


class HistoryBatch(NamedTuple):
    """Changes read in commit order; ``last_id`` is the highest id read, ``full`` if more may follow."""

    changes: list[StatusChange]
    last_id: int
    full: bool


async def changes_after(pool: asyncpg.Pool, after: int, limit: int) -> HistoryBatch:
    """Every transfer's changes with id > ``after`` (up to ``limit`` rows), in commit order.

    A row the gateway cannot read (a status it does not know) is logged and
    skipped rather than stalling every subscriber behind it.
    """
    rows = await pool.fetch(
        f"SELECT {HISTORY_COLUMNS} FROM transfer_status_history"  # noqa: S608 (constant column list)
        " WHERE id > $1 ORDER BY id LIMIT $2",
        after,
        limit,
    )
    changes: list[StatusChange] = []
    for row in rows:
        try:
            changes.append(StatusChange.from_row(row))
        except ValueError:
            log.error("skipping unreadable status history row", extra={"history_id": row["id"]})
    return HistoryBatch(changes, rows[-1]["id"] if rows else after, len(rows) == limit)


async def latest_change_id(pool: asyncpg.Pool) -> int:
    """The highest history id this database has committed (0 when there is none)."""
    value: int | None = await pool.fetchval("SELECT max(id) FROM transfer_status_history")
    return value or 0


async def database_answers(pool: asyncpg.Pool) -> bool:
    return bool(await pool.fetchval("SELECT 1") == 1)
