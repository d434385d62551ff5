"""Tables owned by the indexer (its writer): defined here, migrated in migrations/versions/0003 and 0007.

Imported by ferry/tables.py so Alembic and the schema check see them.

- ``reorgs``: every reorg the indexer rolled back, for operators. A deep one (a
  transfer past PENDING lost its lock, or a FINALIZED transfer lost its release)
  lists the affected transfers and the routes it paused, so an operator can see
  what to check before resuming them.
- ``tokens``: each configured bridge deployment (chain, token symbol, token and
  bridge addresses, decimals), written from the chains file when the indexer
  registers its chains. The analytics views and the volume metric divide amounts
  by ``10^decimals`` of the transfer's source token.
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


class ChainToken(SQLModel, table=True):
    """A token bridged on a chain, as the chains file configures it: its addresses and decimals."""

    __tablename__ = "tokens"

    chain_id: int = Field(
        sa_column=sa.Column(sa.BigInteger, sa.ForeignKey("chains.chain_id"), primary_key=True)
    )
    symbol: str = Field(primary_key=True)
    token_address: str = Field(description="lowercase")
    bridge: str = Field(description="lowercase")
    decimals: int = Field(sa_column=sa.Column(sa.SmallInteger, nullable=False))
    updated_at: datetime = Field(
        sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()"))
    )
