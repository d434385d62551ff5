"""Relayer: release transactions by account nonce, the orders they carry, per-transfer notes.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UINT256 = sa.Numeric(78, 0)


def _ts(name: str, nullable: bool = True, default: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=sa.text("now()") if default else None,
    )


def upgrade() -> None:
    op.create_table(
        "relay_txs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.Column("bridge", sa.String(), nullable=False),
        sa.Column("tx_hash", sa.String(), nullable=False),
        sa.Column("earlier_hashes", sa.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column("call_data", sa.LargeBinary(), nullable=False),
        sa.Column("gas", sa.BigInteger(), nullable=False),
        sa.Column("raw_tx", sa.LargeBinary(), nullable=False),
        sa.Column("max_fee_per_gas", UINT256, nullable=False),
        sa.Column("max_priority_fee_per_gas", UINT256, nullable=False),
        sa.Column("replacements", sa.Integer(), server_default="0", nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("mined_hash", sa.String(), nullable=True),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("block_hash", sa.String(), nullable=True),
        sa.Column("gas_used", UINT256, nullable=True),
        sa.Column("gas_price", UINT256, nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        _ts("sent_at", nullable=False, default=True),
        _ts("created_at", nullable=False, default=True),
        _ts("updated_at", nullable=False, default=True),
        sa.CheckConstraint(
            "status IN ('SENT','MINED','FINAL','REVERTED','DROPPED')", name="relay_txs_status_known"
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("chain_id", "account", "nonce", name="relay_txs_account_nonce"),
    )
    op.create_index(
        "relay_txs_open_idx",
        "relay_txs",
        ["chain_id", "account", "nonce"],
        postgresql_where=sa.text("status IN ('SENT', 'MINED')"),
    )
    op.create_table(
        "relay_tx_orders",
        sa.Column("tx_id", sa.BigInteger(), nullable=False),
        sa.Column("transfer_id", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(["tx_id"], ["relay_txs.id"]),
        sa.ForeignKeyConstraint(["transfer_id"], ["transfers.id"]),
        sa.PrimaryKeyConstraint("tx_id", "transfer_id"),
    )
    op.create_index(op.f("ix_relay_tx_orders_transfer_id"), "relay_tx_orders", ["transfer_id"])
    op.create_index("transfers_limits_sender_idx", "transfers", ["route_id", "sender", "lock_block_time"])
    op.create_index("transfers_limits_route_time_idx", "transfers", ["route_id", "lock_block_time"])
    op.create_table(
        "relay_notes",
        sa.Column("transfer_id", sa.String(), nullable=False),
        _ts("vetted_at"),
        _ts("retry_at"),
        _ts("limits_waived_at"),
        _ts("closed_at"),
        _ts("short_of_liquidity_since"),
        sa.Column("request_id", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["transfer_id"], ["transfers.id"]),
        sa.ForeignKeyConstraint(["request_id"], ["operator_requests.id"]),
        sa.PrimaryKeyConstraint("transfer_id"),
    )


def downgrade() -> None:
    op.drop_table("relay_notes")
    op.drop_index("transfers_limits_route_time_idx", table_name="transfers")
    op.drop_index("transfers_limits_sender_idx", table_name="transfers")
    op.drop_index(op.f("ix_relay_tx_orders_transfer_id"), table_name="relay_tx_orders")
    op.drop_table("relay_tx_orders")
    op.drop_index("relay_txs_open_idx", table_name="relay_txs")
    op.drop_table("relay_txs")
