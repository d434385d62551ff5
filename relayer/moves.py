"""Moving many transfers at once: ``ferry.transitions.move_transfers`` in one UPDATE per target state.

The submitter moves transfers a batch at a time (fifty to SUBMITTED, then to
RELEASED, then to FINALIZED). ``move_together`` keeps every promise of
``ferry.transitions`` — only legal moves (``ALLOWED_FROM`` narrowed by
``only_from``), history rows in commit order and one NOTIFY per transaction,
both through ``ferry.transitions.record_history`` — but updates each group of
moves to the same state with one statement instead of one per transfer. Rows are
locked in id order, so two writers moving overlapping sets cannot deadlock.
Like ``move_transfers``, it must be the last thing its transaction does.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from ferry.domain import ALLOWED_FROM, TransferStatus
from ferry.transitions import Change, Move, record_history

_KEEPS_REASON = (TransferStatus.FAILED, TransferStatus.HELD)


async def move_together(conn: asyncpg.Connection, moves: Sequence[Move]) -> list[Change]:
    """Apply the legal moves among ``moves``; record history and NOTIFY once. Returns the changes."""
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
    changes = [
        Change(m.transfer_id, moved.pop(m.transfer_id), m.to_status, m.reason, m.tx_hash, m.block_number)
        for m in moves
        if m.transfer_id in moved
    ]
    await record_history(conn, changes)
    return changes
