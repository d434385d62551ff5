"""Every SQL query the gateway runs about transfers and their changes, all parameterised.

Resolvers and the change feed call these functions; none of them builds SQL
from client text: filters become ``$n`` parameters through ``_Query``, and the
only identifiers put into SQL come from the ``SortField`` enum.

A page of one address's transfers in lock-time order (``transfer_page_query``) is a
``UNION ALL`` of two index-ordered scans, each stopped at the page size: the
address's transfers as sender (``transfers_sender_time_idx``), then as recipient
but not sender (``transfers_recipient_time_idx``; a self-transfer comes once), and
only those at most 2 × limit rows are sorted. ``sender = $a OR recipient = $a``
would read and sort every transfer of the address. Other orders have no index
after the address, so they keep the plain query.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import asyncpg

from gateway.paging import SortField, TransferFilter, TransferOrder, TransferPosition
from gateway.records import HISTORY_COLUMNS, TRANSFER_COLUMNS, StatusChange, TransferRecord

log = logging.getLogger(__name__)

_TRANSFER_SELECT = f"SELECT {', '.join(TRANSFER_COLUMNS)} FROM transfers"  # noqa: S608 (constant column list)
_HISTORY_SELECT = (
    f"SELECT {', '.join('h.' + c for c in HISTORY_COLUMNS.split(', '))}"  # noqa: S608 (constant columns)
    " FROM transfer_status_history h"
)


class _Query:
    """WHERE conditions and their ``$n`` arguments, built up one filter at a time."""

    def __init__(self) -> None:
        self.conditions: list[str] = []
        self.args: list[Any] = []

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, template: str, value: Any) -> None:
        """Add a condition; ``{}`` in ``template`` becomes the parameter holding ``value``."""
        self.conditions.append(template.format(self.arg(value)))

    def where(self) -> str:
        return f" WHERE {' AND '.join(self.conditions)}" if self.conditions else ""


def filter_conditions(
    query: _Query, wanted: TransferFilter, table: str = "", status_column: str | None = None
) -> None:
    """Add ``wanted`` to ``query`` as conditions on the transfers table (aliased ``table``).

    ``status_column`` replaces the transfer's status (change replays match the status a
    change moved to, as the live feed does).
    """
    t = f"{table}." if table else ""
    status = status_column or f"{t}status"
    optional: list[tuple[str, Any]] = [
        (f"({t}sender = {{0}} OR {t}recipient = {{0}})", wanted.address),
        (f"{t}sender = {{}}", wanted.sender),
        (f"{t}recipient = {{}}", wanted.recipient),
        (
            f"{status} = ANY({{}}::text[])",
            None if wanted.statuses is None else [str(s) for s in wanted.statuses],
        ),
        (f"{t}source_chain_id = {{}}", wanted.source_chain_id),
        (f"{t}target_chain_id = {{}}", wanted.target_chain_id),
        (f"{t}route_id = {{}}", wanted.route_id),
        (f"{t}token = {{}}", wanted.token),
        (f"{t}amount >= {{}}", wanted.amount_min),
        (f"{t}amount <= {{}}", wanted.amount_max),
        (f"{t}lock_block_time >= {{}}", wanted.locked_after),
        (f"{t}lock_block_time < {{}}", wanted.locked_before),
    ]
    for template, value in optional:
        if value is not None:
            query.add(template, value)


#: Transfers by id (``transfer(id)`` and the DataLoader); the query benchmark's baseline runs it too.
TRANSFERS_BY_ID_SQL = f"{_TRANSFER_SELECT} WHERE id = ANY($1::text[])"


async def transfers_by_id(pool: asyncpg.Pool, ids: Sequence[str]) -> dict[str, TransferRecord]:
    rows = await pool.fetch(TRANSFERS_BY_ID_SQL, list(set(ids)))
    return {row["id"]: TransferRecord.from_row(row) for row in rows}


async def transfers_by_source_tx(pool: asyncpg.Pool, chain_id: int, tx_hash: str) -> list[TransferRecord]:
    """Every transfer locked by one transaction, in log order."""
    rows = await pool.fetch(
        f"{_TRANSFER_SELECT} WHERE source_chain_id = $1 AND lock_tx_hash = ANY($2::text[])"
        " ORDER BY lock_log_index",
        chain_id,
        [tx_hash.lower(), tx_hash],
    )
    return [TransferRecord.from_row(row) for row in rows]


#: Orders with an index on (sender, column, seq) and on (recipient, column, seq) (migrations 0005, 0012).
_ADDRESS_INDEXED = frozenset({SortField.LOCKED_AT})


def transfer_page_query(
    wanted: TransferFilter,
    order: TransferOrder,
    start: TransferPosition | None,
    limit: int,
    *,
    backwards: bool = False,
) -> tuple[str, list[Any]]:
    """The SQL and arguments of ``transfer_page`` (also what ``bench/gateway_queries.py``'s baseline runs)."""
    by_address = wanted.address is not None and order.field in _ADDRESS_INDEXED
    query = _Query()
    filter_conditions(query, replace(wanted, address=None) if by_address else wanted)
    column = order.field.value
    descending = order.descending != backwards
    if start is not None:
        comparison = "<" if descending else ">"
        query.conditions.append(
            f"({column}, seq) {comparison} ({query.arg(start.value)}, {query.arg(start.seq)})"
        )
    direction = "DESC" if descending else "ASC"
    ordered = f" ORDER BY {column} {direction}, seq {direction} LIMIT {query.arg(limit)}"
    if not by_address:
        return f"{_TRANSFER_SELECT}{query.where()}{ordered}", query.args
    address = query.arg(wanted.address)
    # NOTE: each branch keeps every condition (cursor included) so its index scan stops
    # after ``limit`` matching rows; the outer ORDER BY/LIMIT merges the two.
    branches = [
        f"({_TRANSFER_SELECT} WHERE {' AND '.join([only, *query.conditions])}{ordered})"
        for only in (f"sender = {address}", f"recipient = {address} AND sender <> {address}")
    ]
    return f"{' UNION ALL '.join(branches)}{ordered}", query.args


async def transfer_page(
    pool: asyncpg.Pool,
    wanted: TransferFilter,
    order: TransferOrder,
    start: TransferPosition | None,
    limit: int,
    *,
    backwards: bool = False,
) -> list[TransferRecord]:
    """Up to ``limit`` transfers matching ``wanted`` strictly beyond ``start`` in ``order``.

    ``backwards`` walks the order in reverse from ``start`` (for ``last``/``before``);
    rows still come back in that reversed order, and the caller flips them.
    """
    sql, args = transfer_page_query(wanted, order, start, limit, backwards=backwards)
    return [TransferRecord.from_row(row) for row in await pool.fetch(sql, *args)]


async def count_transfers(pool: asyncpg.Pool, wanted: TransferFilter) -> int:
    query = _Query()
    filter_conditions(query, wanted)
    count: int = await pool.fetchval(f"SELECT count(*) FROM transfers{query.where()}", *query.args)  # noqa: S608 (parameterised)
    return count


async def histories(pool: asyncpg.Pool, transfer_ids: Sequence[str]) -> dict[str, list[StatusChange]]:
    """The full status timeline of each transfer, oldest change first."""
    rows = await pool.fetch(
        f"{_HISTORY_SELECT} WHERE h.transfer_id = ANY($1::text[]) ORDER BY h.id", list(set(transfer_ids))
    )
    timelines: dict[str, list[StatusChange]] = defaultdict(list)
    for row in rows:
        timelines[row["transfer_id"]].append(StatusChange.from_row(row))
    return timelines


async def history_after(pool: asyncpg.Pool, transfer_id: str, after: int, limit: int) -> list[StatusChange]:
    """One transfer's changes with id > ``after``, oldest first (subscription replay)."""
    rows = await pool.fetch(
        f"{_HISTORY_SELECT} WHERE h.transfer_id = $1 AND h.id > $2 ORDER BY h.id LIMIT $3",
        transfer_id,
        after,
        limit,
    )
    return [StatusChange.from_row(row) for row in rows]


async def matching_history_after(
    pool: asyncpg.Pool, wanted: TransferFilter, after: int, until: int, limit: int
) -> list[StatusChange]:
    """Changes ``after < id <= until`` to transfers matching ``wanted``, oldest first (replay)."""
    query = _Query()
    query.add("h.id > {}", after)
    query.add("h.id <= {}", until)
    filter_conditions(query, wanted, "t", status_column="h.to_status")
    sql = (
        f"{_HISTORY_SELECT} JOIN transfers t ON t.id = h.transfer_id{query.where()}"
        f" ORDER BY h.id LIMIT {query.arg(limit)}"
    )
    return [StatusChange.from_row(row) for row in await pool.fetch(sql, *query.args)]


class HistoryBatch(NamedTuple):
    """Changes read in commit order; ``last_id`` is the highest id read, ``full`` if more may follow."""

    changes: list[tuple[StatusChange, TransferRecord | None]]
    last_id: int
    full: bool


async def changes_after(pool: asyncpg.Pool, after: int, limit: int) -> HistoryBatch:
    """Every transfer's changes with id > ``after`` (up to ``limit`` rows), in commit order,
    each with its transfer as it is now (for address and filter subscriptions).

    A row the gateway cannot read (a status it does not know) is logged and
    skipped rather than stalling every subscriber behind it.
    """
    rows = await pool.fetch(
        f"{_HISTORY_SELECT} WHERE h.id > $1 ORDER BY h.id LIMIT $2",
        after,
        limit,
    )
    records = await transfers_by_id(pool, [row["transfer_id"] for row in rows]) if rows else {}
    changes: list[tuple[StatusChange, TransferRecord | None]] = []
    for row in rows:
        try:
            changes.append((StatusChange.from_row(row), records.get(row["transfer_id"])))
        except ValueError:
            log.error("skipping unreadable status history row", extra={"history_id": row["id"]})
    return HistoryBatch(changes, rows[-1]["id"] if rows else after, len(rows) == limit)


async def latest_change_id(pool: asyncpg.Pool) -> int:
    """The highest history id this database has committed (0 when there is none)."""
    value: int | None = await pool.fetchval("SELECT max(id) FROM transfer_status_history")
    return value or 0


async def database_answers(pool: asyncpg.Pool) -> bool:
    return bool(await pool.fetchval("SELECT 1") == 1)
