"""The submitter's reads and writes: ready transfers, release transactions by nonce, settlement.

Every write that changes a transfer's status goes through ``ferry.transitions``
(set-based) as the last statement of its transaction (one NOTIFY at COMMIT). The invariants
the submitter relies on are enforced here, in the database:

- ``relay_txs`` has one row per (chain, account, nonce): a nonce is never used
  for two different payloads, whoever writes.
- ``persist_tx`` / ``persist_txs`` commit the signed transaction, the orders it carries and their
  move to SUBMITTED *before* the broadcast, and only for transfers that are
  still CONFIRMED and not carried by another open transaction; otherwise it
  writes nothing and the caller tries again with fresh data.
- A transfer carried by an open transaction (SENT or MINED) is never picked
  again, even when the indexer moves it back to CONFIRMED after a reorg: that
  transaction decides first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from ferry.domain import ALLOWED_FROM, TransferStatus
from ferry.transitions import Change, Move, move_transfers
from relayer.fees import Fees

S = TransferStatus
OPEN = ("SENT", "MINED")


@dataclass(frozen=True)
class ReadyTransfer:
    """A vetted CONFIRMED transfer waiting for its chain's submitter."""

    id: str
    route_id: str
    token: str
    source_chain_id: int
    source_bridge: str
    nonce: Decimal
    sender: str
    recipient: str
    amount: Decimal
    lock_block_time: datetime
    attempts: int
    waited: float


@dataclass
class TxRow:
    """A release transaction holding one account nonce (``relay_txs``) and its orders."""

    id: int
    chain_id: int
    account: str
    nonce: int
    bridge: str
    tx_hash: str
    earlier_hashes: list[str]
    call_data: bytes
    gas: int
    raw_tx: bytes
    fees: Fees
    replacements: int
    status: str
    block_number: int | None
    block_hash: str | None
    mined_hash: str | None
    transfer_ids: list[str]
    #: Event-loop time of the last broadcast (a row read back gets it from relay_txs.sent_at).
    sent_at: float = 0.0
    #: The node's head when it answered the last broadcast of this version: a block above it was
    #: built with the release in the pool. None: not broadcast by this process yet (a row read
    #: back is taken as broadcast before any block this process judges: -1).
    broadcast_head: int | None = None

    @property
    def hashes(self) -> list[str]:
        return [self.tx_hash, *self.earlier_hashes]


@dataclass(frozen=True)
class Released:
    """Where a transfer's release was mined: transaction, block and block time."""

    transfer_id: str
    tx_hash: str | None
    block_number: int | None
    block_time: datetime | None


_READY = """
      FROM transfers AS t
      JOIN relay_notes AS n ON n.transfer_id = t.id
      LEFT JOIN routes AS r ON r.route_id = t.route_id
     WHERE t.status = 'CONFIRMED' AND t.target_chain_id = $1
       AND n.vetted_at IS NOT NULL AND n.closed_at IS NULL
       AND (n.retry_at IS NULL OR n.retry_at <= now())
       AND r.paused IS NOT TRUE
       AND NOT EXISTS (
           SELECT 1 FROM relay_tx_orders AS o JOIN relay_txs AS x ON x.id = o.tx_id
            WHERE o.transfer_id = t.id AND x.status IN ('SENT', 'MINED'))
"""


async def ready_transfers(pool: asyncpg.Pool, chain_id: int, limit: int) -> list[ReadyTransfer]:
    """Vetted CONFIRMED transfers for ``chain_id`` due now, oldest hand-off first."""
    rows = await pool.fetch(
        f"""
        SELECT t.id, t.route_id, t.token, t.source_chain_id, t.source_bridge, t.nonce, t.sender, t.recipient,
               t.amount, t.lock_block_time, t.attempts,
               extract(epoch FROM now() - n.vetted_at)::float8 AS waited
        {_READY}
         ORDER BY n.vetted_at, t.id
         LIMIT $2
        """,  # noqa: S608 -- constant SQL
        chain_id,
        limit,
    )
    return [ReadyTransfer(**dict(row)) for row in rows]


async def count_ready(pool: asyncpg.Pool, chain_id: int) -> int:
    """How many vetted CONFIRMED transfers for ``chain_id`` are due now."""
    count: int = await pool.fetchval(f"SELECT count(*) {_READY}", chain_id)
    return count


_TX_COLUMNS = """
    x.id, x.chain_id, x.account, x.nonce, x.bridge, x.tx_hash, x.earlier_hashes, x.call_data, x.gas,
    x.raw_tx, x.max_fee_per_gas, x.max_priority_fee_per_gas, x.replacements, x.status, x.block_number,
    x.block_hash, x.mined_hash,
    ARRAY(SELECT o.transfer_id FROM relay_tx_orders AS o WHERE o.tx_id = x.id ORDER BY o.transfer_id)
        AS transfer_ids,
    greatest(extract(epoch FROM clock_timestamp() - x.sent_at), 0)::float8 AS sent_ago
"""


def _tx(row: Any) -> TxRow:
    values = dict(row)
    fees = Fees(int(values.pop("max_fee_per_gas")), int(values.pop("max_priority_fee_per_gas")))
    # NOTE: the last broadcast's age, from the database's clock, on this process's event-loop clock:
    # a restart must not make every release left in flight look overdue for re-pricing.
    sent_at = asyncio.get_running_loop().time() - values.pop("sent_ago")
    return TxRow(fees=fees, sent_at=sent_at, broadcast_head=-1, **values)


async def open_txs(pool: asyncpg.Pool, chain_id: int, account: str) -> list[TxRow]:
    """The account's SENT and MINED (not yet final) transactions on ``chain_id``, by nonce."""
    rows = await pool.fetch(
        f"""
        SELECT {_TX_COLUMNS} FROM relay_txs AS x
         WHERE x.chain_id = $1 AND x.account = $2 AND x.status IN ('SENT', 'MINED')
         ORDER BY x.nonce
        """,  # noqa: S608 -- a constant column list
        chain_id,
        account,
    )
    return [_tx(row) for row in rows]


async def next_nonce_in_db(pool: asyncpg.Pool, chain_id: int, account: str) -> int | None:
    """One above the highest nonce the account ever used on ``chain_id`` here (None: none yet)."""
    highest: int | None = await pool.fetchval(
        "SELECT max(nonce) FROM relay_txs WHERE chain_id = $1 AND account = $2", chain_id, account
    )
    return None if highest is None else highest + 1


@dataclass(frozen=True)
class SignedTx:
    """A signed release transaction not yet stored."""

    chain_id: int
    account: str
    nonce: int
    bridge: str
    tx_hash: str
    call_data: bytes
    gas: int
    raw_tx: bytes
    fees: Fees


async def persist_tx(pool: asyncpg.Pool, signed: SignedTx, transfer_ids: Sequence[str]) -> TxRow | None:
    """Store the transaction and move its transfers to SUBMITTED, or nothing if one moved on.

    Raises ``asyncpg.UniqueViolationError`` when the nonce is already taken.
    """
    stored = await persist_txs(pool, [transfer_ids], signed.nonce, lambda _nonce, _ids: signed)
    return stored[0] if stored else None


async def persist_txs(
    pool: asyncpg.Pool,
    batches: Sequence[Sequence[str]],
    first_nonce: int,
    sign: Callable[[int, Sequence[str]], SignedTx],
) -> list[TxRow]:
    """Store release transactions for ``batches`` (transfer ids each) with consecutive nonces, in one COMMIT.

    A batch with a transfer that moved on (no longer CONFIRMED, or carried by another open
    transaction) is left out and takes no nonce; the others are signed (``sign(nonce, ids)``)
    with ``first_nonce``, ``first_nonce + 1``... in order, stored with their orders, and their
    transfers move to SUBMITTED, all before anything is broadcast. Raises
    ``asyncpg.UniqueViolationError`` (nothing stored) when a nonce is already taken.
    """
    # NOTE: a handful of statements for the whole round, not a few per batch: on a busy event
    # loop every round trip waits its turn, and this transaction holds the rows locked.
    async with pool.acquire() as conn, conn.transaction():
        free = set(await _free_transfers(conn, [tid for ids in batches for tid in ids]))
        kept = [ids for ids in batches if all(tid in free for tid in ids)]
        if not kept:
            return []
        signed = [sign(first_nonce + index, ids) for index, ids in enumerate(kept)]
        stored = await _insert_txs(conn, signed, [sorted(set(ids)) for ids in kept])
        carried = [tid for tx in stored for tid in tx.transfer_ids]
        await conn.execute("UPDATE transfers SET attempts = attempts + 1 WHERE id = ANY($1::text[])", carried)
        moves = [
            Move(tid, S.SUBMITTED, tx_hash=tx.tx_hash, only_from=frozenset({S.CONFIRMED}))
            for tx in stored
            for tid in tx.transfer_ids
        ]
        await move_transfers(conn, moves)
    return stored


async def _free_transfers(conn: asyncpg.Connection, transfer_ids: Sequence[str]) -> list[str]:
    """Those of ``transfer_ids`` still CONFIRMED and not carried by an open transaction (locked)."""
    rows = await conn.fetch(
        """
        SELECT t.id FROM transfers AS t
         WHERE t.id = ANY($1::text[]) AND t.status = 'CONFIRMED'
           AND NOT EXISTS (
               SELECT 1 FROM relay_tx_orders AS o JOIN relay_txs AS x ON x.id = o.tx_id
                WHERE o.transfer_id = t.id AND x.status IN ('SENT', 'MINED'))
         ORDER BY t.id FOR UPDATE OF t
        """,
        list(transfer_ids),
    )
    return [row["id"] for row in rows]


async def _insert_txs(
    conn: asyncpg.Connection, signed: Sequence[SignedTx], carried: Sequence[list[str]]
) -> list[TxRow]:
    """Insert the transactions and the orders each carries (``carried``, same order), in two statements."""
    ids = await conn.fetch(
        """
        INSERT INTO relay_txs (chain_id, account, nonce, bridge, tx_hash, call_data, gas, raw_tx,
                               max_fee_per_gas, max_priority_fee_per_gas, status)
        SELECT s.chain_id, s.account, s.nonce, s.bridge, s.tx_hash, s.call_data, s.gas, s.raw_tx,
               s.max_fee, s.max_tip, 'SENT'
          FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::bytea[],
                      $7::bigint[], $8::bytea[], $9::numeric[], $10::numeric[])
               AS s(chain_id, account, nonce, bridge, tx_hash, call_data, gas, raw_tx, max_fee, max_tip)
        RETURNING id, nonce
        """,
        [t.chain_id for t in signed], [t.account for t in signed], [t.nonce for t in signed],
        [t.bridge for t in signed], [t.tx_hash for t in signed], [t.call_data for t in signed],
        [t.gas for t in signed], [t.raw_tx for t in signed], [t.fees.max_fee_per_gas for t in signed],
        [t.fees.max_priority_fee_per_gas for t in signed],
    )  # fmt: skip
    tx_ids = {row["nonce"]: row["id"] for row in ids}
    await conn.execute(
        "INSERT INTO relay_tx_orders (tx_id, transfer_id) SELECT * FROM unnest($1::bigint[], $2::text[])",
        [tx_ids[t.nonce] for t, free in zip(signed, carried, strict=True) for _ in free],
        [tid for free in carried for tid in free],
    )
    return [_stored(t, tx_ids[t.nonce], free) for t, free in zip(signed, carried, strict=True)]


def _stored(signed: SignedTx, tx_id: int, carried: list[str]) -> TxRow:
    return TxRow(
        tx_id, signed.chain_id, signed.account, signed.nonce, signed.bridge, signed.tx_hash, [],
        signed.call_data, signed.gas, signed.raw_tx, signed.fees, 0, "SENT", None, None, None, carried,
    )  # fmt: skip


async def record_replacements(pool: asyncpg.Pool, replaced: Sequence[tuple[TxRow, str, bytes, Fees]]) -> None:
    """Each (tx, new hash, new raw, fees): the nonce's transaction is now that one (same payload,
    higher fees); the old hash is kept. All in one transaction."""
    if not replaced:
        return
    await pool.executemany(
        """
        UPDATE relay_txs
           SET earlier_hashes = earlier_hashes || tx_hash, tx_hash = $2, raw_tx = $3,
               max_fee_per_gas = $4, max_priority_fee_per_gas = $5, replacements = replacements + 1,
               sent_at = now(), updated_at = now()
         WHERE id = $1
        """,
        [(tx.id, tx_hash, raw, fees.max_fee_per_gas, fees.max_priority_fee_per_gas)
         for tx, tx_hash, raw, fees in replaced],
    )  # fmt: skip


@dataclass(frozen=True)
class Inclusion:
    """A receipt of one of a transaction's hashes."""

    tx_hash: str
    block_number: int
    block_hash: str
    succeeded: bool
    gas_used: int
    gas_price: int


async def record_mined(
    pool: asyncpg.Pool, tx: TxRow, inclusion: Inclusion, released: Sequence[Released]
) -> list[Change]:
    """The transaction is in a block: MINED; its released orders become RELEASED (at most once)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """
            UPDATE relay_txs SET status = 'MINED', mined_hash = $2, block_number = $3, block_hash = $4,
                   gas_used = $5, gas_price = $6, error = NULL, updated_at = now()
             WHERE id = $1
            """,
            tx.id, inclusion.tx_hash, inclusion.block_number, inclusion.block_hash,
            inclusion.gas_used, inclusion.gas_price,
        )  # fmt: skip
        return await _record_released(conn, released)


async def _record_released(conn: asyncpg.Connection, released: Sequence[Released]) -> list[Change]:
    if not released:
        return []
    await _set_release(conn, released)
    moves = [
        Move(r.transfer_id, S.RELEASED, tx_hash=r.tx_hash, block_number=r.block_number) for r in released
    ]
    return await move_transfers(conn, moves)


async def _set_release(conn: asyncpg.Connection, released: Sequence[Released]) -> None:
    """Where each transfer was released (only on transfers that may still become RELEASED)."""
    await conn.execute(
        """
        UPDATE transfers AS t
           SET release_tx_hash = r.tx_hash, release_block_number = r.block_number,
               release_block_time = r.block_time
          FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[])
               AS r(id, tx_hash, block_number, block_time)
         WHERE t.id = r.id AND t.status = ANY($5::text[])
        """,
        [r.transfer_id for r in released],
        [r.tx_hash for r in released],
        [r.block_number for r in released],
        [r.block_time for r in released],
        [s.value for s in ALLOWED_FROM[S.RELEASED]],
    )


async def record_released(pool: asyncpg.Pool, released: Sequence[Released]) -> list[Change]:
    async with pool.acquire() as conn, conn.transaction():
        return await _record_released(conn, released)


@dataclass(frozen=True)
class Settlement:
    """A transaction found in a block: its receipt's facts and what became of its orders."""

    tx: TxRow
    inclusion: Inclusion
    #: Orders released (by this transaction or another one); empty when it reverted.
    released: Sequence[Released]
    #: Orders it carried but did not release (sent again), with the reason; all of them when it reverted.
    missing: Sequence[str]
    error: str | None


async def record_settled(pool: asyncpg.Pool, settlements: Sequence[Settlement]) -> list[Change]:
    """Every transaction of a look at the chain settled in one COMMIT (one history lock, one NOTIFY).

    A succeeded one is MINED and its released orders RELEASED; a reverted one is REVERTED; the
    transfers of a reverted one, and orders a mined one skipped, go back to CONFIRMED.
    """
    if not settlements:
        return []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """
            UPDATE relay_txs AS x
               SET status = CASE WHEN s.ok THEN 'MINED' ELSE 'REVERTED' END, mined_hash = s.tx_hash,
                   block_number = s.block_number, block_hash = s.block_hash, gas_used = s.gas_used,
                   gas_price = s.gas_price, error = s.error, updated_at = now()
              FROM unnest($1::bigint[], $2::bool[], $3::text[], $4::bigint[], $5::text[], $6::numeric[],
                          $7::numeric[], $8::text[])
                   AS s(id, ok, tx_hash, block_number, block_hash, gas_used, gas_price, error)
             WHERE x.id = s.id
            """,
            [item.tx.id for item in settlements],
            [item.inclusion.succeeded for item in settlements],
            [item.inclusion.tx_hash for item in settlements],
            [item.inclusion.block_number for item in settlements],
            [item.inclusion.block_hash for item in settlements],
            [item.inclusion.gas_used for item in settlements],
            [item.inclusion.gas_price for item in settlements],
            [item.error if not item.inclusion.succeeded else None for item in settlements],
        )
        released = [r for item in settlements for r in item.released]
        back = [(tid, item.error) for item in settlements for tid in item.missing]
        if back:
            await conn.execute(
                """
                UPDATE transfers AS t SET last_error = b.error
                  FROM unnest($1::text[], $2::text[]) AS b(id, error) WHERE t.id = b.id
                """,
                [tid for tid, _ in back],
                [error for _, error in back],
            )
        if released:
            await _set_release(conn, released)
        moves = [
            Move(r.transfer_id, S.RELEASED, tx_hash=r.tx_hash, block_number=r.block_number) for r in released
        ]
        moves += [
            Move(tid, S.CONFIRMED, reason=error, only_from=frozenset({S.SUBMITTED})) for tid, error in back
        ]
        return await move_transfers(conn, moves)


async def record_finals(pool: asyncpg.Pool, txs: Sequence[TxRow]) -> list[Change]:
    """Transactions with the chain's confirmations: FINAL; their released transfers FINALIZED, one COMMIT."""
    if not txs:
        return []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE relay_txs SET status = 'FINAL', updated_at = now() WHERE id = ANY($1::bigint[])",
            [tx.id for tx in txs],
        )
        moves = [
            Move(tid, S.FINALIZED, block_number=tx.block_number, only_from=frozenset({S.RELEASED}))
            for tx in txs
            for tid in tx.transfer_ids
        ]
        return await move_transfers(conn, moves)


async def record_reverted(pool: asyncpg.Pool, tx: TxRow, inclusion: Inclusion, error: str) -> list[Change]:
    """The transaction reverted: its transfers go back to CONFIRMED (the try counted) to be checked again."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """
            UPDATE relay_txs SET status = 'REVERTED', mined_hash = $2, block_number = $3, block_hash = $4,
                   gas_used = $5, gas_price = $6, error = $7, updated_at = now()
             WHERE id = $1
            """,
            tx.id, inclusion.tx_hash, inclusion.block_number, inclusion.block_hash,
            inclusion.gas_used, inclusion.gas_price, error,
        )  # fmt: skip
        return await _back_to_confirmed(conn, tx.transfer_ids, S.SUBMITTED, error)


async def record_dropped(pool: asyncpg.Pool, tx: TxRow, error: str) -> list[Change]:
    """Another transaction took the nonce: DROPPED; its transfers go back to CONFIRMED."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE relay_txs SET status = 'DROPPED', error = $2, updated_at = now() WHERE id = $1",
            tx.id,
            error,
        )
        return await _back_to_confirmed(conn, tx.transfer_ids, S.SUBMITTED, error)


async def record_reorged(pool: asyncpg.Pool, tx: TxRow) -> list[Change]:
    """The block that held the transaction left the chain: SENT again, its transfers CONFIRMED."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """
            UPDATE relay_txs SET status = 'SENT', mined_hash = NULL, block_number = NULL, block_hash = NULL,
                   sent_at = now(), updated_at = now()
             WHERE id = $1
            """,
            tx.id,
        )
        await conn.execute(
            """
            UPDATE transfers
               SET release_tx_hash = NULL, release_block_number = NULL, release_block_time = NULL
             WHERE id = ANY($1::text[]) AND status = 'RELEASED'
            """,
            tx.transfer_ids,
        )
        return await _back_to_confirmed(conn, tx.transfer_ids, S.RELEASED, None)


async def _back_to_confirmed(
    conn: asyncpg.Connection, transfer_ids: Sequence[str], only_from: TransferStatus, error: str | None
) -> list[Change]:
    if error is not None:
        await conn.execute(
            "UPDATE transfers SET last_error = $2 WHERE id = ANY($1::text[])", list(transfer_ids), error
        )
    moves = [Move(tid, S.CONFIRMED, reason=error, only_from=frozenset({only_from})) for tid in transfer_ids]
    return await move_transfers(conn, moves)


async def record_not_released(pool: asyncpg.Pool, transfer_ids: Sequence[str], error: str) -> list[Change]:
    """Carried by a mined batch that did not release them: back to CONFIRMED to go again."""
    async with pool.acquire() as conn, conn.transaction():
        return await _back_to_confirmed(conn, transfer_ids, S.SUBMITTED, error)


async def record_final(pool: asyncpg.Pool, tx: TxRow) -> list[Change]:
    """The transaction has the chain's confirmations: FINAL; released transfers FINALIZED."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE relay_txs SET status = 'FINAL', updated_at = now() WHERE id = $1", tx.id)
        moves = [
            Move(tid, S.FINALIZED, block_number=tx.block_number, only_from=frozenset({S.RELEASED}))
            for tid in tx.transfer_ids
        ]
        return await move_transfers(conn, moves)


async def count_try(pool: asyncpg.Pool, transfer_id: str, error: str) -> None:
    """The bridge refused the release before anything was sent: it counts as a try."""
    await pool.execute(
        "UPDATE transfers SET last_error = $2, attempts = attempts + 1 WHERE id = $1", transfer_id, error
    )


async def defer_transfers(pool: asyncpg.Pool, transfer_ids: Sequence[str], error: str, delay: float) -> None:
    """Not now: remember why and try again after ``delay`` seconds (the status does not change)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE transfers SET last_error = $2 WHERE id = ANY($1::text[])", list(transfer_ids), error
        )
        await conn.execute(
            """
            INSERT INTO relay_notes (transfer_id, retry_at)
            SELECT unnest($1::text[]), now() + make_interval(secs => $2)
            ON CONFLICT (transfer_id) DO UPDATE SET retry_at = EXCLUDED.retry_at
            """,
            list(transfer_ids),
            delay,
        )


async def stop_transfers(
    pool: asyncpg.Pool, transfer_ids: Sequence[str], status: TransferStatus, reason: str
) -> list[Change]:
    """HELD or FAILED with ``reason`` (only from CONFIRMED: the submitter holds nothing in flight)."""
    async with pool.acquire() as conn, conn.transaction():
        moves = [Move(tid, status, reason=reason, only_from=frozenset({S.CONFIRMED})) for tid in transfer_ids]
        return await move_transfers(conn, moves)


async def mark_vetted(pool: asyncpg.Pool, transfer_id: str) -> None:
    """Hand the transfer to its chain's submitter (and clear an earlier back-off)."""
    await pool.execute(
        """
        INSERT INTO relay_notes (transfer_id, vetted_at) VALUES ($1, now())
        ON CONFLICT (transfer_id) DO UPDATE SET vetted_at = COALESCE(relay_notes.vetted_at, now())
        """,
        transfer_id,
    )


async def tries(pool: asyncpg.Pool, transfer_ids: Sequence[str]) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT id, attempts FROM transfers WHERE id = ANY($1::text[])", list(transfer_ids)
    )
    return {row["id"]: row["attempts"] for row in rows}
