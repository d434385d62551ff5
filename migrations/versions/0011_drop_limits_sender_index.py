"""Drop ``transfers_limits_sender_idx``: the gateway's sender index serves the limit check (faster indexing).

``transfers_limits_sender_idx (route_id, sender, lock_block_time)`` (revision 0004)
served one query: the relayer's per-sender hourly count (``relayer/limits.py``),
which names the senders and an hour of lock times. ``transfers_sender_time_idx
(sender, lock_block_time, id)`` (revision 0005) serves the same query with the
same bounds (sender, then the time range), checking the route on the rows it
finds: a sender's transfers of one hour, a handful at the default limit of 10.

It was the costliest index to keep up: a backfill spreads each range's inserts
over every sender in it, in both indexes. Measured on 100,000 locks (PostgreSQL
CPU of the insert, three rounds): 0.86-1.31 s with this index alone against
0.51-0.57 s with none; the indexer's benchmark spent about 6.6 s of PostgreSQL CPU
in all.

Downgrade recreates it as revision 0004 made it.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("transfers_limits_sender_idx", table_name="transfers")


def downgrade() -> None:
    op.create_index("transfers_limits_sender_idx", "transfers", ["route_id", "sender", "lock_block_time"])
