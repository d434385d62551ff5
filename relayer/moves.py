"""Moving many transfers at once: ``ferry.transitions.move_transfers`` in one UPDATE per target state.

The submitter moves transfers a batch at a time (fifty to SUBMITTED, then to
RELEASED, then to FINALIZED). ``move_together`` keeps every promise of
``ferry.transitions`` — only legal moves (``ALLOWED_FROM`` narrowed by
``only_from``), history rows in commit order and one NOTIFY per transaction,
both through ``ferry.transitions.record_history`` — but updates each group of
moves to the same state with one statement instead of one per transfer. Rows are
locked in id order, so two writers moving overlapping sets cannot deadlock.
Like ``move_transfers``, it must be the last thing its transaction does.

The indexer's range transactions move their transfers through it too (hundreds per
range): one statement per state instead of one round trip per transfer keeps the
rows locked for milliseconds, not the 1-3 s during which the relayer's settlement
of the same transfers used to wait on them (``docs/relayer.md``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import asyncpg

from ferry.domain import ALLOWED_FROM, TransferStatus
from ferry.transitions import Change, Move, record_history

_KEEPS_REASON = (TransferStatus.FAILED, TransferStatus.HELD)


async def move_together(
    conn: asyncpg.Connection,
    moves: Sequence[Move],
    created: Iterable[tuple[str, TransferStatus]] = (),
) -> list[Change]:
    """Apply the legal moves among ``moves``; record history and NOTIFY once. Returns the changes.

    Same contract as ``ferry.transitions.move_transfers``: ``created`` names transfers the
    caller inserted in this transaction (their first state, recorded first), and moves are
    taken in sequence order, so a transfer may move more than once (PENDING -> CONFIRMED ->
    RELEASED in one indexer range): its n-th move goes in the n-th wave, and each wave is
    applied (one UPDATE per target state) before the next one.
    """
    changes = [Change(transfer_id, None, status) for transfer_id, status in created]
    for wave in _waves(moves):
        changes += await _move_wave(conn, wave)
    await record_history(conn, changes)
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
