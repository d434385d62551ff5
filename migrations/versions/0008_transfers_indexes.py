"""Drop four ``transfers`` indexes that other indexes already serve (faster indexing).

Every lock the indexer writes updates each index of ``transfers``; these four
were never the best plan for any query:

- ``transfers_route_time_idx (route_id, lock_block_time)``: the same columns, in the
  same order, as ``transfers_limits_route_time_idx`` (revision 0004);
- ``transfers_lock_tx_idx (lock_tx_hash)``: the only lookup by lock transaction
  (``gateway/reads.py``, ``transfers_by_source_tx``) also names the source chain, and
  the unique ``transfers_lock_log (source_chain_id, lock_tx_hash, lock_log_index)``
  serves it, ordered by log index too;
- ``transfers_sender_idx (sender, id)`` and ``transfers_recipient_idx (recipient, id)``:
  address filters are served by the prefix of ``transfers_sender_time_idx`` /
  ``transfers_recipient_time_idx``, and no query orders an address's transfers by
  id alone (lists order by lock time, update time or amount, then id).

Downgrade recreates them as revisions 0001 and 0005 made them.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_DROPPED = {
    "transfers_route_time_idx": ["route_id", "lock_block_time"],
    "transfers_lock_tx_idx": ["lock_tx_hash"],
    "transfers_sender_idx": ["sender", "id"],
    "transfers_recipient_idx": ["recipient", "id"],
}


def upgrade() -> None:
    for name in _DROPPED:
        op.drop_index(name, table_name="transfers")


def downgrade() -> None:
    for name, columns in _DROPPED.items():
        op.create_index(name, "transfers", columns)
