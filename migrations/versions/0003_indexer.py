"""Indexer: the reorgs log (what each rollback dropped, orphaned and paused).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reorgs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("ancestor_block", sa.BigInteger(), nullable=False),
        sa.Column("ancestor_hash", sa.String(), nullable=False),
        sa.Column("old_tip_block", sa.BigInteger(), nullable=False),
        sa.Column("old_tip_hash", sa.String(), nullable=False),
        sa.Column("deep", sa.Boolean(), nullable=False),
        sa.Column("policy", sa.String(), nullable=False),
        sa.Column("orphaned", sa.Integer(), nullable=False),
        sa.Column("affected_transfers", sa.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column("paused_routes", sa.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column("detected_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("reorgs_chain_idx", "reorgs", ["chain_id", "id"])


def downgrade() -> None:
    op.drop_index("reorgs_chain_idx", table_name="reorgs")
    op.drop_table("reorgs")
