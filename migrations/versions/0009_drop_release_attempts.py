"""Drop ``release_attempts``: the relayer's ``relay_txs`` / ``relay_tx_orders`` replaced it.

Nothing has written the table since revision 0004 gave the relayer its own
transaction tables; the relayer's vetting now asks ``relay_tx_orders`` whether a
transfer was ever put in a release transaction. Downgrade recreates the empty
table as revision 0001 made it.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table("release_attempts")  # NOTE: its indexes and constraints go with it


def downgrade() -> None:
    now = sa.text("now()")
    op.create_table(
        "release_attempts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("transfer_id", sa.String(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("account_nonce", sa.BigInteger(), nullable=False),
        sa.Column("tx_hash", sa.String(), nullable=False),
        sa.Column("raw_tx", sa.LargeBinary(), nullable=False),
        sa.Column("max_fee_per_gas", sa.Numeric(precision=78, scale=0), nullable=False),
        sa.Column("max_priority_fee_per_gas", sa.Numeric(precision=78, scale=0), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
        sa.CheckConstraint(
            "status IN ('SENT','MINED','REVERTED','DROPPED')", name="release_attempts_status_known"
        ),
        sa.ForeignKeyConstraint(["transfer_id"], ["transfers.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tx_hash"),
    )
    op.create_index(op.f("ix_release_attempts_transfer_id"), "release_attempts", ["transfer_id"])
    op.create_index(
        "release_attempts_account_idx", "release_attempts", ["chain_id", "account", "account_nonce"]
    )
