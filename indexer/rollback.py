"""Rolling a chain back to a common ancestor, in ONE database transaction.

Everything the indexer wrote above the ancestor goes, and the transfers it
touched move so that the relayer never releases a lock that is no longer on the
chain:

- a PENDING transfer whose lock is gone becomes ORPHANED; if the same lock (same
  transfer id) reappears on the new branch, ``store.insert_locks`` brings it back
  to PENDING with the new block;
- a release seen in a dropped block is deleted; its transfer, if RELEASED, goes
  back to CONFIRMED (release columns cleared) so the relayer looks again;
- a transfer past PENDING whose lock is gone (or a FINALIZED one whose release is
  gone) means the reorg was deeper than the chain's finality: a *deep* reorg.
  It is never silent: the transfers are listed in ``reorgs``, the caller logs an
  ERROR and counts it, and the routes are paused for the relayer. Under policy
  ``rollback``, the transfers not yet handed to the chain (CONFIRMED, HELD) are
  also ORPHANED; routes are then paused only when value may already have moved
  (SUBMITTED, RELEASED, FINALIZED, FAILED). Under ``halt`` (the default) every
  affected route is paused and statuses stay for an operator to judge.
- the cursor moves to the ancestor (guarded: it must still be the old tip), the
  dropped blocks are deleted, and the status moves go last through
  ``ferry.transitions`` (history + one NOTIFY, so subscribers see every change).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from ferry.domain import TransferStatus
from ferry.settings import ChainConfig
from ferry.transitions import Change, Move, move_transfers
from indexer.reconcile import Reorg

S = TransferStatus
#: Statuses in which no release transaction exists yet: safe to orphan under ``rollback``.
NOT_HANDED_OVER = frozenset({S.CONFIRMED, S.HELD})


class CursorMoved(Exception):
    """Another writer advanced this chain's cursor while this step was reading."""


@dataclass(frozen=True)
class Rollback:
    """What one rollback did."""

    reorg: Reorg
    orphaned: tuple[str, ...]
    reopened: tuple[str, ...]
    affected: tuple[str, ...]
    paused_routes: tuple[str, ...]
    changes: tuple[Change, ...]

    @property
    def deep(self) -> bool:
        return bool(self.affected)


@dataclass(frozen=True, slots=True)
class _Lost:
    transfer_id: str
    route_id: str
    status: TransferStatus


async def roll_back(conn: asyncpg.Connection, chain: ChainConfig, reorg: Reorg) -> Rollback:
    """Undo everything above ``reorg.ancestor`` on ``chain``; runs in the caller's transaction."""
    above = reorg.ancestor.number
    locks = await _lost(conn, "source_chain_id = $1 AND lock_block_number > $2", chain.id, above)
    releases = await _lost(
        conn, "target_chain_id = $1 AND release_block_number > $2 AND status <> 'ORPHANED'", chain.id, above
    )
    orphan = [t for t in locks if t.status is S.PENDING]
    deep_locks = [t for t in locks if t.status not in (S.PENDING, S.ORPHANED)]
    reopen = [t for t in releases if t.status is S.RELEASED]
    deep_releases = [t for t in releases if t.status is S.FINALIZED]
    if chain.reorg_policy == "rollback":
        orphan += [t for t in deep_locks if t.status in NOT_HANDED_OVER]
        pause = [t for t in deep_locks if t.status not in NOT_HANDED_OVER] + deep_releases
    else:
        pause = deep_locks + deep_releases
    affected = tuple(dict.fromkeys(t.transfer_id for t in deep_locks + deep_releases))
    routes = tuple(sorted({t.route_id for t in pause}))
    await _forget_above(conn, chain.id, reorg)
    await _clear_releases(conn, [t.transfer_id for t in reopen])
    await _pause_routes(conn, routes, chain, reorg)
    await _record(conn, chain, reorg, len(orphan), affected, routes)
    moves = [
        *(Move(t.transfer_id, S.ORPHANED, block_number=above) for t in orphan),
        *(
            Move(t.transfer_id, S.CONFIRMED, block_number=above, only_from=frozenset({S.RELEASED}))
            for t in reopen
        ),
    ]
    changes = await move_transfers(conn, moves)
    return Rollback(
        reorg,
        tuple(t.transfer_id for t in orphan),
        tuple(t.transfer_id for t in reopen),
        affected,
        routes,
        tuple(changes),
    )


async def _lost(conn: asyncpg.Connection, where: str, chain_id: int, above: int) -> list[_Lost]:
    rows = await conn.fetch(
        f"SELECT id, route_id, status FROM transfers WHERE {where} ORDER BY id FOR UPDATE",  # noqa: S608 - fixed text
        chain_id,
        above,
    )
    return [_Lost(r["id"], r["route_id"], S(r["status"])) for r in rows]


async def _forget_above(conn: asyncpg.Connection, chain_id: int, reorg: Reorg) -> None:
    """Move the cursor back to the ancestor and delete the dropped blocks and releases seen."""
    tip, ancestor = reorg.dropped[-1], reorg.ancestor
    moved = await conn.fetchval(
        """
        UPDATE chains SET indexed_block = $3, indexed_block_hash = $4, updated_at = now()
         WHERE chain_id = $1 AND indexed_block = $2
        RETURNING true
        """,
        chain_id,
        tip.number,
        ancestor.number,
        ancestor.hash,
    )
    if moved is not True:
        raise CursorMoved(f"the cursor of chain {chain_id} moved away from block {tip.number}")
    await conn.execute(
        "DELETE FROM releases_seen WHERE chain_id = $1 AND block_number > $2", chain_id, ancestor.number
    )
    await conn.execute("DELETE FROM blocks WHERE chain_id = $1 AND number > $2", chain_id, ancestor.number)


async def _clear_releases(conn: asyncpg.Connection, transfer_ids: Sequence[str]) -> None:
    if transfer_ids:
        await conn.execute(
            """
            UPDATE transfers SET release_tx_hash = NULL, release_block_number = NULL,
                   release_block_time = NULL, updated_at = now()
             WHERE id = ANY($1::text[])
            """,
            list(transfer_ids),
        )


async def _pause_routes(
    conn: asyncpg.Connection, routes: Sequence[str], chain: ChainConfig, reorg: Reorg
) -> None:
    if routes:
        reason = (
            f"indexer: reorg of {reorg.depth} blocks on chain {chain.name} (above block "
            f"{reorg.ancestor.number}) took back confirmed transfers; see table reorgs before resuming"
        )
        await conn.execute(
            """
            UPDATE routes SET paused = true, paused_reason = $2, updated_at = now()
             WHERE route_id = ANY($1::text[])
            """,
            list(routes),
            reason,
        )


async def _record(
    conn: asyncpg.Connection,
    chain: ChainConfig,
    reorg: Reorg,
    orphaned: int,
    affected: Sequence[str],
    routes: Sequence[str],
) -> None:
    tip = reorg.dropped[-1]
    await conn.execute(
        """
        INSERT INTO reorgs (chain_id, depth, ancestor_block, ancestor_hash, old_tip_block, old_tip_hash,
                            deep, policy, orphaned, affected_transfers, paused_routes)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
        """,
        chain.id,
        reorg.depth,
        reorg.ancestor.number,
        reorg.ancestor.hash,
        tip.number,
        tip.hash,
        bool(affected),
        chain.reorg_policy,
        orphaned,
        list(affected),
        list(routes),
    )
