"""Operator requests: admin actions on routes and transfers, and their audit trail.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "operator_requests",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("transfer_id", sa.String(), nullable=True),
        sa.Column("route_id", sa.String(), nullable=True),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("actor_role", sa.String(), nullable=False),
        sa.Column("origin", sa.String(), nullable=True),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(), nullable=True),
        sa.CheckConstraint(
            "action IN ('PAUSE_ROUTE','RESUME_ROUTE','RETRY','CANCEL','APPROVE','REJECT')",
            name="operator_requests_action_known",
        ),
        sa.ForeignKeyConstraint(["transfer_id"], ["transfers.id"]),
        sa.ForeignKeyConstraint(["route_id"], ["routes.route_id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_operator_requests_transfer_id"), "operator_requests", ["transfer_id"])
    op.create_index(
        "operator_requests_unprocessed_idx",
        "operator_requests",
        ["id"],
        postgresql_where=sa.text("processed_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("operator_requests_unprocessed_idx", table_name="operator_requests")
    op.drop_index(op.f("ix_operator_requests_transfer_id"), table_name="operator_requests")
    op.drop_table("operator_requests")
