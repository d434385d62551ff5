"""Pruning the ``blocks`` table: keep what a reorg walk needs, drop the rest.

The indexer keeps block headers (number, hash, parent hash, timestamp) only to
find the common ancestor of a reorg (``indexer.reconcile``) and to date releases.
A reorg can only replace blocks above finality, so the follower keeps:

- every block from ``dense_window + PRUNE_MARGIN`` below the indexed block up (the
  dense window is ``2 × confirmations + 16``; the margin lets a reorg somewhat deeper
  than finality still find its ancestor and be handled by the deep-reorg policy);
- with ``finality: finalized``, also everything from ``PRUNE_MARGIN`` below the
  node's finalized block up (the finalized block may lag far behind the head);
- blocks holding a release whose transfer is not indexed yet (its lock lives on a
  chain the indexer has not caught up with): linking that release later takes the
  release's time from its block.

A reorg deeper than what is kept stops the chain with ``ReorgBeyondHistory`` for
an operator, as before. Pruning is one ``DELETE`` by number per chain, run by the
follower every ``PRUNE_EVERY`` blocks of progress, outside the step's transaction
(a failed or skipped prune only leaves more rows for the next one).
"""

from __future__ import annotations

import asyncpg

#: Blocks kept below the dense window (and below the finalized block).
PRUNE_MARGIN = 64
#: Blocks of progress between two prunes.
PRUNE_EVERY = 64


def keep_from(indexed: int, dense_window: int, finalized: int | None = None) -> int:
    """The lowest block number to keep when ``indexed`` is the indexed block."""
    lowest = indexed - dense_window + 1
    if finalized is not None:
        lowest = min(lowest, finalized)
    return max(lowest - PRUNE_MARGIN, 0)


async def prune_blocks(conn: asyncpg.Connection, chain_id: int, below: int) -> int:
    """Delete the chain's blocks numbered below ``below`` (except unlinked releases'); returns the count."""
    status = await conn.execute(
        """
        DELETE FROM blocks AS b
         WHERE b.chain_id = $1 AND b.number < $2
           AND NOT EXISTS (
               SELECT 1 FROM releases_seen AS r
                WHERE r.chain_id = b.chain_id AND r.block_number = b.number AND r.transfer_id IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM transfers AS t WHERE t.id = r.transfer_id))
        """,
        chain_id,
        below,
    )
    return int(status.split()[-1])
