"""The relay job's reads and writes in PostgreSQL: transfers to vet, route pauses, the sweep.

Status changes go through ``ferry.transitions.move_transfers`` as the last
statement of their transaction, so every move writes its history row and one
NOTIFY at COMMIT. The submitter's own tables and moves live in ``relayer.txstore``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from ferry.domain import TransferStatus

S = TransferStatus


@dataclass(frozen=True)
class TransferRow:
    """The columns of a transfer the relayer needs."""

    id: str
    route_id: str
    token: str
    source_chain_id: int
    source_bridge: str
    nonce: Decimal
    target_chain_id: int
    target_bridge: str | None
    sender: str
    recipient: str
    amount: Decimal
    status: TransferStatus
    lock_block_time: datetime
    attempts: int


async def route_paused(pool: asyncpg.Pool, route_id: str) -> bool:
    """Whether an operator paused the route (a route without a row is not paused)."""
    paused: bool | None = await pool.fetchval("SELECT paused FROM routes WHERE route_id = $1", route_id)
    return bool(paused)


@dataclass(frozen=True)
class DueRoute:
    """A route with CONFIRMED transfers not yet handed over."""

    route_id: str
    transfers: int
    #: Seconds since the longest-waiting of them last moved.
    waiting: float


async def due_routes(pool: asyncpg.Pool) -> list[DueRoute]:
    """Routes with CONFIRMED transfers not yet handed to a submitter (routes an operator paused wait)."""
    rows = await pool.fetch(
        """
        SELECT t.route_id, count(*) AS transfers,
               extract(epoch FROM now() - min(t.updated_at))::float8 AS waiting
          FROM transfers AS t
          LEFT JOIN routes AS r ON r.route_id = t.route_id
          LEFT JOIN relay_notes AS n ON n.transfer_id = t.id
         WHERE t.status = 'CONFIRMED' AND n.vetted_at IS NULL AND r.paused IS NOT TRUE
         GROUP BY t.route_id
         ORDER BY min(t.updated_at)
        """
    )
    return [DueRoute(row["route_id"], row["transfers"], row["waiting"]) for row in rows]


async def short_of_liquidity_for(pool: asyncpg.Pool, transfer_id: str) -> float:
    """Seconds since the target bridge first lacked liquidity for this transfer (0 now: first time)."""
    seconds: float = await pool.fetchval(
        """
        INSERT INTO relay_notes (transfer_id, short_of_liquidity_since) VALUES ($1, now())
        ON CONFLICT (transfer_id) DO UPDATE
           SET short_of_liquidity_since = COALESCE(relay_notes.short_of_liquidity_since, now())
        RETURNING extract(epoch FROM now() - short_of_liquidity_since)::float8
        """,
        transfer_id,
    )
    return seconds
