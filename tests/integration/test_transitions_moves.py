"""``ferry.transitions.move_transfers`` is set-based yet keeps the sequence rules of one move at a time.

The indexer's range transaction moves a transfer more than once in one call (a lock
inserted PENDING, CONFIRMED and RELEASED in the same range) and mixes them with
transfers it only moves once; the result must be what one move at a time gives.
"""

from __future__ import annotations

import asyncpg

from ferry.domain import TransferStatus as S
from ferry.transitions import Move, move_transfers


async def _insert(conn: asyncpg.Connection, transfer_id: str, nonce: int, status: S) -> None:
    await conn.execute(
        """
        INSERT INTO transfers (id, route_id, token, source_chain_id, source_bridge, nonce, target_chain_id,
                               sender, recipient, amount, status, confirmations_required, lock_tx_hash,
                               lock_log_index, lock_block_number, lock_block_hash, lock_block_time)
        VALUES ($1, 'FTT:1-2', 'FTT', 1, '0xb', $2, 2, '0xs', '0xr', 1, $3, 1, $1, 0, 1, '0xh', now())
        """,
        transfer_id,
        nonce,
        status.value,
    )


async def test_chained_moves_of_one_transfer_apply_in_order_with_history_in_order(clean_db: str) -> None:
    conn = await asyncpg.connect(clean_db)
    try:
        async with conn.transaction():
            await _insert(conn, "new", 1, S.PENDING)
            await _insert(conn, "held", 2, S.HELD)
            await _insert(conn, "pending", 3, S.PENDING)
            changes = await move_transfers(
                conn,
                [
                    Move("new", S.CONFIRMED, only_from=frozenset({S.PENDING})),
                    Move("pending", S.CONFIRMED, only_from=frozenset({S.PENDING})),
                    Move("held", S.CONFIRMED, only_from=frozenset({S.PENDING})),  # not legal: skipped
                    Move("new", S.RELEASED, tx_hash="0xrel", block_number=7),
                    Move("new", S.FINALIZED, block_number=7),
                    Move("pending", S.FAILED, reason="no"),
                    Move("pending", S.FINALIZED),  # FAILED -> FINALIZED is not legal: skipped
                ],
                created=[("new", S.PENDING)],
            )
        assert [(c.transfer_id, c.from_status, c.to_status) for c in changes] == [
            ("new", None, S.PENDING),
            ("new", S.PENDING, S.CONFIRMED),
            ("pending", S.PENDING, S.CONFIRMED),
            ("new", S.CONFIRMED, S.RELEASED),
            ("pending", S.CONFIRMED, S.FAILED),
            ("new", S.RELEASED, S.FINALIZED),
        ]
        statuses = dict(await conn.fetch("SELECT id, status FROM transfers"))
        assert statuses == {"new": "FINALIZED", "held": "HELD", "pending": "FAILED"}
        assert await conn.fetchval("SELECT last_error FROM transfers WHERE id = 'pending'") == "no"
        history = await conn.fetch(
            "SELECT transfer_id, from_status, to_status, tx_hash FROM transfer_status_history ORDER BY id"
        )
        per_transfer: dict[str, list[tuple[str | None, str]]] = {}
        for row in history:
            per_transfer.setdefault(row["transfer_id"], []).append((row["from_status"], row["to_status"]))
        assert per_transfer == {
            "new": [
                (None, "PENDING"),
                ("PENDING", "CONFIRMED"),
                ("CONFIRMED", "RELEASED"),
                ("RELEASED", "FINALIZED"),
            ],
            "pending": [("PENDING", "CONFIRMED"), ("CONFIRMED", "FAILED")],
        }
        assert [r["tx_hash"] for r in history if r["to_status"] == "RELEASED"] == ["0xrel"]
    finally:
        await conn.close()
