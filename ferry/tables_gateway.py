"""Tables owned by the gateway (its writer): defined here, migrated in migrations/versions/0005.

- ``gateway_api_keys``: operator API keys, stored only as a SHA-256 hash of the
  key (keys are 32 random bytes, so a fast hash is enough; the plain key is shown
  once, when it is created, and never stored, logged or returned again).
- Indexes on ``transfers`` that the GraphQL list queries need (keyset paging by
  lock time, update time and amount, per address). They are declared here, on the
  shared table, so ``alembic check`` sees them; migration 0005 creates them (0008
  dropped two of them that other indexes serve).

Imported by ferry/tables.py so Alembic and the schema check see them.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from ferry.tables import Transfer, _ts

_transfers = Transfer.__table__  # type: ignore[attr-defined]  # NOTE: SQLModel sets it at class creation

#: Roles a credential may carry: operators read the audit log, admins also act.
API_KEY_ROLES = ("operator", "admin")


class GatewayApiKey(SQLModel, table=True):
    """An API key an operator or admin authenticates with (``Authorization: Bearer <key>``)."""

    __tablename__ = "gateway_api_keys"
    __table_args__ = (sa.CheckConstraint("role IN ('operator','admin')", name="gateway_api_keys_role_known"),)

    id: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, sa.Identity(), primary_key=True))
    name: str = Field(unique=True, description="who: shown as the actor in the audit log")
    key_hash: str = Field(unique=True, description="hex SHA-256 of the key")
    role: str
    created_at: datetime = Field(sa_column=_ts(default=True))
    revoked_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


# NOTE: the lists' tiebreaker is seq (insertion order, 8 bytes), not the text id (migration 0012)
sa.Index("transfers_lock_time_idx", _transfers.c.lock_block_time, _transfers.c.seq)
sa.Index("transfers_updated_idx", _transfers.c.updated_at, _transfers.c.seq)
sa.Index("transfers_amount_idx", _transfers.c.amount, _transfers.c.seq)
sa.Index("transfers_sender_time_idx", _transfers.c.sender, _transfers.c.lock_block_time, _transfers.c.seq)
sa.Index(
    "transfers_recipient_time_idx", _transfers.c.recipient, _transfers.c.lock_block_time, _transfers.c.seq
)
# NOTE: (route_id, lock_block_time) is the relayer's transfers_limits_route_time_idx and a
# lookup by lock transaction uses the unique transfers_lock_log (migrations/versions/0008).
