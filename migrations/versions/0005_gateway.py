"""Gateway: operator API keys, the indexes the GraphQL list queries need, and its database roles.

Roles (cluster-wide, so created idempotently; granted per database):
``ferry_gateway_reader`` reads what the API shows; ``ferry_gateway_admin`` may
also insert operator requests and flip a route's pause flag, nothing else. With
``FERRY_GATEWAY_DATABASE_ROLES=true`` the gateway's pools take these roles at
connection (its login user must be a member: ``GRANT ferry_gateway_reader,
ferry_gateway_admin TO <user>``). Downgrade revokes the grants in this database
but keeps the roles, which other databases may use.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_INDEXES = {
    "transfers_lock_time_idx": ["lock_block_time", "id"],
    "transfers_updated_idx": ["updated_at", "id"],
    "transfers_amount_idx": ["amount", "id"],
    "transfers_sender_time_idx": ["sender", "lock_block_time", "id"],
    "transfers_recipient_time_idx": ["recipient", "lock_block_time", "id"],
    "transfers_route_time_idx": ["route_id", "lock_block_time"],
    "transfers_lock_tx_idx": ["lock_tx_hash"],
}


_READER = "ferry_gateway_reader"
_ADMIN = "ferry_gateway_admin"
_READ_TABLES = "transfers, transfer_status_history, chains, routes, operator_requests, gateway_api_keys"
_GRANTS = (
    f"GRANT USAGE ON SCHEMA public TO {_READER}, {_ADMIN}",
    f"GRANT SELECT ON {_READ_TABLES} TO {_READER}",
    f"GRANT SELECT ON transfers, routes, operator_requests TO {_ADMIN}",
    f"GRANT INSERT ON operator_requests TO {_ADMIN}",
    f"GRANT UPDATE (paused, paused_reason, updated_at) ON routes TO {_ADMIN}",
)


def _create_role(name: str) -> None:
    # NOTE: many databases (tests) migrate concurrently on one server: a role another
    # migration just created is fine.
    op.execute(
        f"DO $$ BEGIN CREATE ROLE {name} NOLOGIN; "
        "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
    )


def upgrade() -> None:
    op.create_table(
        "gateway_api_keys",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("key_hash", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("role IN ('operator','admin')", name="gateway_api_keys_role_known"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("key_hash"),
    )
    for name, columns in _INDEXES.items():
        op.create_index(name, "transfers", columns)
    _create_role(_READER)
    _create_role(_ADMIN)
    for grant in _GRANTS:
        op.execute(grant)


def downgrade() -> None:
    op.execute(f"REVOKE ALL ON {_READ_TABLES} FROM {_READER}, {_ADMIN}")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {_READER}, {_ADMIN}")
    for name in _INDEXES:
        op.drop_index(name, table_name="transfers")
    op.drop_table("gateway_api_keys")
