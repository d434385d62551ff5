"""Which transfers the indexer moves, and the moves it asks ``ferry.transitions`` to make.

The indexer owns three moves (ARCHITECTURE.md):

- PENDING -> CONFIRMED: the lock has ``confirmations_required`` blocks on its chain
  (``head - lock_block + 1 >= confirmations_required``).
- -> RELEASED: a ``TransferReleased`` for the transfer was seen on its target chain.
  The relayer usually got there first from its receipt; then the indexer only fills
  the release columns and the move is a no-op (no second history row).
- RELEASED -> FINALIZED: the release has the target chain's confirmations.

The queries here only *find* transfers and fill release columns; ``moves`` turns
what they found into ``Move``s in lifecycle order, so one transaction can carry a
transfer all the way from PENDING to FINALIZED while catching up.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from ferry.domain import TransferStatus
from ferry.transitions import Move
from indexer.store import Due

S = TransferStatus


async def due_confirmations(
    conn: asyncpg.Connection,
    chain_id: int,
    head: int,
    finalized: int | None = None,
    reappearing: Sequence[str] = (),
) -> list[Due]:
    """PENDING transfers locked on ``chain_id`` that are final at ``head``.

    Final means ``confirmations_required`` blocks on top of the lock, or, when the
    chain's finality is the node's ``finalized`` tag, the lock at or below that block.
    ``reappearing`` are ORPHANED transfers whose lock this transaction found again: they
    return to PENDING only at its end (``reappeared``), so they are named here, or one
    already final would stay PENDING until a later head (none may come).
    """
    rows = await conn.fetch(
        """
        SELECT id, route_id, lock_block_number FROM transfers
         WHERE (status = 'PENDING' OR (status = 'ORPHANED' AND id = ANY($4::text[])))
           AND source_chain_id = $1
           AND CASE WHEN $3::bigint IS NULL THEN $2 - lock_block_number + 1 >= confirmations_required
                    ELSE lock_block_number <= $3::bigint END
         ORDER BY lock_block_number, lock_log_index
        """,
        chain_id,
        head,
        finalized,
        list(reappearing),
    )
    return [Due(r["id"], r["route_id"], None, r["lock_block_number"]) for r in rows]


async def link_releases(conn: asyncpg.Connection, transfer_ids: Sequence[str]) -> list[Due]:
    """Fill the release columns of these transfers from the releases seen on their target chain."""
    if not transfer_ids:
        return []
    rows = await conn.fetch(
        """
        WITH seen AS (
            SELECT DISTINCT ON (r.transfer_id) r.transfer_id, r.chain_id, r.tx_hash, r.block_number,
                   b.timestamp
              FROM releases_seen r
              LEFT JOIN blocks b ON b.chain_id = r.chain_id AND b.number = r.block_number
             WHERE r.transfer_id = ANY($1::text[])
             ORDER BY r.transfer_id, r.block_number, r.log_index
        )
        UPDATE transfers AS t
           SET release_tx_hash = seen.tx_hash, release_block_number = seen.block_number,
               release_block_time = COALESCE(seen.timestamp, t.release_block_time), updated_at = now()
          FROM seen
         WHERE t.id = seen.transfer_id AND t.target_chain_id = seen.chain_id
        RETURNING t.id, t.route_id, t.release_tx_hash, t.release_block_number
        """,
        list(dict.fromkeys(transfer_ids)),
    )
    return [Due(r["id"], r["route_id"], r["release_tx_hash"], r["release_block_number"]) for r in rows]


async def due_finalizations(
    conn: asyncpg.Connection, chain_id: int, head: int, confirmations: int, released: Sequence[str]
) -> list[Due]:
    """Transfers released on ``chain_id`` (or being released now) whose release has ``confirmations``."""
    rows = await conn.fetch(
        """
        SELECT t.id, t.route_id, r.block_number FROM transfers t
          JOIN releases_seen r ON r.transfer_id = t.id AND r.chain_id = t.target_chain_id
         WHERE (t.status = 'RELEASED' OR t.id = ANY($4::text[])) AND t.target_chain_id = $1
           AND $2 - r.block_number + 1 >= $3
        """,
        chain_id,
        head,
        confirmations,
        list(released),
    )
    return [Due(r["id"], r["route_id"], None, r["block_number"]) for r in rows]


def reappeared(transfers: Sequence[Due]) -> list[Move]:
    """ORPHANED transfers whose lock is back on the canonical chain return to PENDING."""
    return [
        Move(
            d.transfer_id,
            S.PENDING,
            tx_hash=d.tx_hash,
            block_number=d.block_number,
            only_from=frozenset({S.ORPHANED}),
        )
        for d in transfers
    ]


def moves(confirmed: Sequence[Due], released: Sequence[Due], finalized: Sequence[Due]) -> list[Move]:
    """The moves in lifecycle order; ``move_transfers`` skips any that are not legal by then."""
    return [
        *(
            Move(d.transfer_id, S.CONFIRMED, block_number=d.block_number, only_from=frozenset({S.PENDING}))
            for d in confirmed
        ),
        *(Move(d.transfer_id, S.RELEASED, tx_hash=d.tx_hash, block_number=d.block_number) for d in released),
        *(Move(d.transfer_id, S.FINALIZED, block_number=d.block_number) for d in finalized),
    ]
