"""Table definitions: the schema every process shares, and who writes what.

The Alembic migrations in ``migrations/`` are hand-written from these classes; a
test runs ``alembic check`` against a migrated database, so the two cannot drift.

Writers (one per table or column group, ARCHITECTURE.md):

- ``chains``, ``tokens``, ``blocks``, ``releases_seen`` and the source-side columns of
  ``transfers``: the indexer.
- the relay-side columns of ``transfers``: the relayer (its own tables: ``ferry.tables_relayer``).
- ``transfer_status_history``: whoever moves a transfer, always through
  ``ferry.transitions`` (which also sends the one NOTIFY per transaction).
- ``routes.paused``: operators (gateway admin mutations) and the indexer's
  deep-reorg halt.

Amounts and on-chain nonces are uint256, stored as NUMERIC(78, 0).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

UINT256 = sa.Numeric(78, 0)
NOW = sa.text("now()")


def _ts(nullable: bool = False, default: bool = False) -> sa.Column[datetime]:
    return sa.Column(sa.DateTime(timezone=True), nullable=nullable, server_default=NOW if default else None)


class Chain(SQLModel, table=True):
    """A followed chain and the indexer's cursor on it."""

    __tablename__ = "chains"

    chain_id: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True, autoincrement=False))
    name: str
    indexed_block: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    indexed_block_hash: str | None = None
    head_block: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger))
    head_seen_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    updated_at: datetime = Field(sa_column=_ts(default=True))


class Block(SQLModel, table=True):
    """Recent blocks the indexer has processed (number, hash, parent) for reorg checks."""

    __tablename__ = "blocks"

    chain_id: int = Field(
        sa_column=sa.Column(sa.BigInteger, sa.ForeignKey("chains.chain_id"), primary_key=True)
    )
    number: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True, autoincrement=False))
    hash: str
    parent_hash: str
    timestamp: datetime = Field(sa_column=_ts())


class Route(SQLModel, table=True):
    """A (token, source chain, target chain) route and its operator switches."""

    __tablename__ = "routes"

    route_id: str = Field(primary_key=True)
    token: str
    source_chain_id: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    target_chain_id: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    paused: bool = Field(
        default=False, sa_column=sa.Column(sa.Boolean, nullable=False, server_default=sa.false())
    )
    paused_reason: str | None = None
    updated_at: datetime = Field(sa_column=_ts(default=True))


class Transfer(SQLModel, table=True):
    """One lock event on a source chain and everything that happened to it since."""

    __tablename__ = "transfers"
    __table_args__ = (
        sa.UniqueConstraint("source_chain_id", "source_bridge", "nonce", name="transfers_lock_key"),
        sa.UniqueConstraint("source_chain_id", "lock_tx_hash", "lock_log_index", name="transfers_lock_log"),
        sa.CheckConstraint(
            "status IN ('PENDING','CONFIRMED','ORPHANED','HELD','SUBMITTED','RELEASED','FINALIZED','FAILED')",
            name="transfers_status_known",
        ),
        sa.Index("transfers_status_idx", "status"),
    )

    id: str = Field(primary_key=True, description="<source chain>:<source bridge>:<nonce>")
    route_id: str
    token: str
    source_chain_id: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    source_bridge: str
    nonce: Decimal = Field(sa_column=sa.Column(UINT256, nullable=False))
    target_chain_id: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    target_bridge: str | None = None
    sender: str
    recipient: str
    amount: Decimal = Field(sa_column=sa.Column(UINT256, nullable=False))
    status: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    confirmations_required: int
    lock_tx_hash: str
    lock_log_index: int
    lock_block_number: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    lock_block_hash: str
    lock_block_time: datetime = Field(sa_column=_ts())
    release_tx_hash: str | None = None
    release_block_number: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger))
    release_block_time: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    attempts: int = Field(default=0, sa_column=sa.Column(sa.Integer, nullable=False, server_default="0"))
    last_error: str | None = None
    created_at: datetime = Field(sa_column=_ts(default=True))
    updated_at: datetime = Field(sa_column=_ts(default=True))
    #: Insertion order: the tiebreaker of the gateway's list orderings (migration 0012).
    seq: int | None = Field(
        default=None, sa_column=sa.Column(sa.BigInteger, sa.Identity(always=True), nullable=False)
    )


class TransferStatusHistory(SQLModel, table=True):
    """Every change of a transfer's state: audit trail, wallet timeline, analyst source.

    ``id`` is the change cursor. Writers insert history last in their transaction
    while holding a transaction-level advisory lock, so ids are in commit order and a
    reader that has seen id N has seen every change committed before it.
    """

    __tablename__ = "transfer_status_history"
    __table_args__ = (sa.Index("transfer_status_history_transfer_idx", "transfer_id", "id"),)

    id: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, sa.Identity(), primary_key=True))
    # NOTE: no foreign key (migration 0010): ferry.transitions checks each insert in bulk and a
    # trigger keeps a transfer with history from being deleted; the key cost a lock per row
    transfer_id: str
    from_status: str | None = None
    to_status: str
    reason: str | None = None
    tx_hash: str | None = None
    block_number: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger))
    created_at: datetime = Field(sa_column=_ts(default=True))


class ReleaseSeen(SQLModel, table=True):
    """A ``TransferReleased`` event the indexer saw on a target chain."""

    __tablename__ = "releases_seen"

    chain_id: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True, autoincrement=False))
    tx_hash: str = Field(primary_key=True)
    log_index: int = Field(primary_key=True)
    bridge: str
    block_number: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    block_hash: str
    source_chain_id: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    source_bridge: str
    nonce: Decimal = Field(sa_column=sa.Column(UINT256, nullable=False))
    recipient: str
    amount: Decimal = Field(sa_column=sa.Column(UINT256, nullable=False))
    transfer_id: str | None = Field(default=None, index=True)


metadata = SQLModel.metadata


class OperatorRequest(SQLModel, table=True):
    """An operator's action on a route or a transfer: the request and its audit record.

    Written by whoever the operator used (the gateway's admin mutations, the CLI):
    who, what, when, from where. Acted on by the process that owns the data (the
    relayer for transfer actions), which fills ``processed_at`` and ``outcome``.
    Rows are never deleted: this table is the audit log.
    """

    __tablename__ = "operator_requests"
    __table_args__ = (
        sa.CheckConstraint(
            "action IN ('PAUSE_ROUTE','RESUME_ROUTE','RETRY','CANCEL','APPROVE','REJECT')",
            name="operator_requests_action_known",
        ),
        sa.Index(
            "operator_requests_unprocessed_idx",
            "id",
            postgresql_where=sa.text("processed_at IS NULL"),
        ),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, sa.Identity(), primary_key=True))
    action: str
    transfer_id: str | None = Field(default=None, foreign_key="transfers.id", index=True)
    route_id: str | None = Field(default=None, foreign_key="routes.route_id")
    actor: str = Field(description="who: the JWT subject, the API key's name, or cli:<user>")
    actor_role: str
    origin: str | None = Field(default=None, description="from where: client address or host")
    reason: str | None = None
    created_at: datetime = Field(sa_column=_ts(default=True))
    processed_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    outcome: str | None = Field(default=None, description="what happened, in a sentence")


# NOTE: area modules register their tables on the same metadata; imported last
# because they may refer to the classes above.
from ferry import tables_gateway, tables_indexer, tables_relayer  # noqa: E402

__all__ = ["metadata", "tables_gateway", "tables_indexer", "tables_relayer"]
