"""Tables owned by the indexer (its writer): defined here, migrated in migrations/versions/0003.

Imported by ferry/tables.py so Alembic and the schema check see them.

- ``reorgs``: every reorg the indexer rolled back, for operators. A deep one (a
  transfer past PENDING lost its lock, or a FINALIZED transfer lost its release)
  lists the affected transfers and the routes it paused, so an operator can see
  what to check before resuming them.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel


class ChainReorg(SQLModel, table=True):
    """One rollback of a chain's indexed blocks above a common ancestor."""

    __tablename__ = "reorgs"
    __table_args__ = (sa.Index("reorgs_chain_idx", "chain_id", "id"),)

    id: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, sa.Identity(), primary_key=True))
    chain_id: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    depth: int = Field(description="indexed block heights lost (old tip minus common ancestor)")
    ancestor_block: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    ancestor_hash: str
    old_tip_block: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    old_tip_hash: str
    deep: bool = Field(description="a transfer past PENDING lost its lock, or a finalized one its release")
    policy: str = Field(description="halt or rollback: the chain's reorg_policy when it happened")
    orphaned: int = Field(description="transfers moved to ORPHANED")
    affected_transfers: list[str] = Field(
        default_factory=list,
        sa_column=sa.Column(sa.ARRAY(sa.Text), nullable=False, server_default="{}"),
    )
    paused_routes: list[str] = Field(
        default_factory=list,
        sa_column=sa.Column(sa.ARRAY(sa.Text), nullable=False, server_default="{}"),
    )
    detected_at: datetime = Field(
        sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()"))
    )
