"""The relayer's reads and writes in PostgreSQL: transfers, release attempts, sweeps.

The relayer is the one writer of ``release_attempts`` and of the relay-side columns
of ``transfers`` (``release_*``, ``attempts``, ``last_error``). Status changes go
through ``ferry.transitions.move_transfers`` as the last statement of their
transaction, so every move writes its history row and one NOTIFY at COMMIT.

Guard against double bookkeeping: the indexer may see the ``TransferReleased``
event and move the transfer to RELEASED too. ``record_released`` fills the
``release_*`` columns only while the transfer can still move to RELEASED, in the
same transaction as the move, so exactly one RELEASED history row is ever written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from ferry.domain import ALLOWED_FROM, TransferStatus
from ferry.transitions import Change, Move, move_transfers

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
    recipient: str
    amount: Decimal
    status: TransferStatus
    lock_block_time: datetime
    attempts: int


@dataclass(frozen=True)
class AttemptRow:
    """One release transaction the relayer signed (``release_attempts``)."""

    id: int
    transfer_id: str
    chain_id: int
    account: str
    account_nonce: int
    tx_hash: str
    raw_tx: bytes
    status: str


@dataclass(frozen=True)
class Released:
    """Where a release was mined: the transaction, its block and the block's time."""

    tx_hash: str | None
    block_number: int | None
    block_time: datetime | None


async def load_transfer(pool: asyncpg.Pool, transfer_id: str) -> TransferRow | None:
    row = await pool.fetchrow(
        """
        SELECT id, route_id, token, source_chain_id, source_bridge, nonce, target_chain_id,
               target_bridge, recipient, amount, status, lock_block_time, attempts
          FROM transfers WHERE id = $1
        """,
        transfer_id,
    )
    if row is None:
        return None
    values: dict[str, Any] = dict(row)
    values["status"] = TransferStatus(values["status"])
    return TransferRow(**values)


async def route_paused(pool: asyncpg.Pool, route_id: str) -> bool:
    """Whether an operator paused the route (a route without a row is not paused)."""
    paused: bool | None = await pool.fetchval("SELECT paused FROM routes WHERE route_id = $1", route_id)
    return bool(paused)


async def last_attempt(pool: asyncpg.Pool, transfer_id: str) -> AttemptRow | None:
    row = await pool.fetchrow(
        """
        SELECT id, transfer_id, chain_id, account, account_nonce, tx_hash, raw_tx, status
          FROM release_attempts WHERE transfer_id = $1 ORDER BY id DESC LIMIT 1
        """,
        transfer_id,
    )
    return None if row is None else AttemptRow(**dict(row))


async def attempt_by_hash(pool: asyncpg.Pool, tx_hash: str) -> AttemptRow | None:
    row = await pool.fetchrow(
        """
        SELECT id, transfer_id, chain_id, account, account_nonce, tx_hash, raw_tx, status
          FROM release_attempts WHERE tx_hash = $1
        """,
        tx_hash,
    )
    return None if row is None else AttemptRow(**dict(row))


async def set_attempt_status(
    pool: asyncpg.Pool, attempt_id: int, status: str, *, error: str | None = None, block: int | None = None
) -> None:
    await pool.execute(
        """
        UPDATE release_attempts
           SET status = $2, error = COALESCE($3, error), block_number = COALESCE($4, block_number),
               updated_at = now()
         WHERE id = $1
        """,
        attempt_id,
        status,
        error,
        block,
    )


async def record_error(pool: asyncpg.Pool, transfer_id: str, error: str, *, count_try: bool = False) -> None:
    """Remember why the last run could not finish (the status does not change).

    ``count_try``: the run tried to release and the bridge refused before anything was
    signed; it counts in ``attempts`` like a signed release transaction does.
    """
    await pool.execute(
        "UPDATE transfers SET last_error = $2, attempts = attempts + $3 WHERE id = $1",
        transfer_id,
        error,
        1 if count_try else 0,
    )


async def tries(pool: asyncpg.Pool, transfer_id: str) -> int:
    """How many times the relayer tried to release the transfer (``transfers.attempts``)."""
    count: int | None = await pool.fetchval("SELECT attempts FROM transfers WHERE id = $1", transfer_id)
    return count or 0


async def record_released(
    pool: asyncpg.Pool, transfer_id: str, released: Released, attempt_id: int | None = None
) -> list[Change]:
    """Mark the transfer RELEASED (at most once) and its winning attempt MINED."""
    async with pool.acquire() as conn, conn.transaction():
        if attempt_id is not None:
            await conn.execute(
                """
                UPDATE release_attempts SET status = 'MINED', block_number = $2, updated_at = now()
                 WHERE id = $1
                """,
                attempt_id,
                released.block_number,
            )
        await conn.execute(
            """
            UPDATE transfers
               SET release_tx_hash = $2, release_block_number = $3, release_block_time = $4
             WHERE id = $1 AND status = ANY($5::text[])
            """,
            transfer_id,
            released.tx_hash,
            released.block_number,
            released.block_time,
            [s.value for s in ALLOWED_FROM[S.RELEASED]],
        )
        move = Move(transfer_id, S.RELEASED, tx_hash=released.tx_hash, block_number=released.block_number)
        return await move_transfers(conn, [move])


async def stop_transfer(pool: asyncpg.Pool, transfer: TransferRow, reason: str) -> list[Change]:
    """HELD (a CONFIRMED transfer, for an operator) or FAILED (one already SUBMITTED)."""
    target = S.HELD if transfer.status is S.CONFIRMED else S.FAILED
    return await move(pool, transfer.id, target, reason)


async def move(pool: asyncpg.Pool, transfer_id: str, status: TransferStatus, reason: str) -> list[Change]:
    async with pool.acquire() as conn, conn.transaction():
        return await move_transfers(conn, [Move(transfer_id, status, reason=reason)])


async def due_transfer_ids(pool: asyncpg.Pool, stale_after: float, limit: int) -> list[str]:
    """Transfers the relayer owes work: CONFIRMED ones, and SUBMITTED ones gone quiet.

    Transfers of a route an operator paused wait until it is resumed.
    """
    rows = await pool.fetch(
        """
        SELECT t.id
          FROM transfers AS t
          LEFT JOIN routes AS r ON r.route_id = t.route_id
         WHERE (t.status = 'CONFIRMED'
                OR (t.status = 'SUBMITTED' AND t.updated_at < now() - make_interval(secs => $1)))
           AND r.paused IS NOT TRUE
         ORDER BY t.updated_at
         LIMIT $2
        """,
        stale_after,
        limit,
    )
    return [row["id"] for row in rows]
