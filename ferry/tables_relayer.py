"""Tables owned by the relayer (its writer): defined here, migrated in migrations/versions/.

Imported by ferry/tables.py so Alembic and the schema check see them.

- ``relay_txs``: one row per (chain, submitting account, account nonce): the
  release transaction that holds that nonce, with its raw bytes so it can be
  re-sent unchanged, and the hashes of the replacements it went through (same
  nonce, higher fees). The unique key makes nonce reuse impossible even if two
  submitters ever ran for one account.
- ``relay_tx_orders``: which transfers a release transaction (a ``releaseBatch``)
  carries.
- ``relay_notes``: the relayer's per-transfer decisions that are not a state:
  ``vetted_at`` (checked and handed to its chain's submitter), ``retry_at`` (a
  transient refusal: not before then), ``limits_waived_at`` (an operator APPROVEd
  it), ``closed_at`` (REJECTed or CANCELled: never released, RETRY refused),
  ``short_of_liquidity_since`` (FAILED after ``liquidity_wait`` of that).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

UINT256 = sa.Numeric(78, 0)


def _ts(nullable: bool = True, default: bool = False) -> sa.Column[datetime]:
    return sa.Column(
        sa.DateTime(timezone=True), nullable=nullable, server_default=sa.text("now()") if default else None
    )


class RelayTx(SQLModel, table=True):
    """One account nonce on one chain and the release transaction that holds it."""

    __tablename__ = "relay_txs"
    __table_args__ = (
        sa.UniqueConstraint("chain_id", "account", "nonce", name="relay_txs_account_nonce"),
        sa.CheckConstraint(
            "status IN ('SENT','MINED','FINAL','REVERTED','DROPPED')", name="relay_txs_status_known"
        ),
        sa.Index(
            "relay_txs_open_idx",
            "chain_id",
            "account",
            "nonce",
            postgresql_where=sa.text("status IN ('SENT', 'MINED')"),
        ),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, sa.Identity(), primary_key=True))
    chain_id: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    account: str
    nonce: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    bridge: str
    tx_hash: str = Field(description="the latest signed version (replacements change it)")
    earlier_hashes: list[str] = Field(
        default_factory=list,
        sa_column=sa.Column(sa.ARRAY(sa.Text), nullable=False, server_default="{}"),
    )
    call_data: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    gas: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    raw_tx: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    max_fee_per_gas: Decimal = Field(sa_column=sa.Column(UINT256, nullable=False))
    max_priority_fee_per_gas: Decimal = Field(sa_column=sa.Column(UINT256, nullable=False))
    replacements: int = Field(default=0, sa_column=sa.Column(sa.Integer, nullable=False, server_default="0"))
    status: str
    mined_hash: str | None = None
    block_number: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger))
    block_hash: str | None = None
    gas_used: Decimal | None = Field(default=None, sa_column=sa.Column(UINT256))
    gas_price: Decimal | None = Field(default=None, sa_column=sa.Column(UINT256))
    error: str | None = None
    sent_at: datetime = Field(sa_column=_ts(nullable=False, default=True))
    created_at: datetime = Field(sa_column=_ts(nullable=False, default=True))
    updated_at: datetime = Field(sa_column=_ts(nullable=False, default=True))


class RelayTxOrder(SQLModel, table=True):
    """A transfer carried by a release transaction."""

    __tablename__ = "relay_tx_orders"

    tx_id: int = Field(sa_column=sa.Column(sa.BigInteger, sa.ForeignKey("relay_txs.id"), primary_key=True))
    transfer_id: str = Field(foreign_key="transfers.id", primary_key=True, index=True)


class RelayNote(SQLModel, table=True):
    """The relayer's operator-driven, hand-off and liquidity decisions about one transfer."""

    __tablename__ = "relay_notes"

    transfer_id: str = Field(foreign_key="transfers.id", primary_key=True)
    vetted_at: datetime | None = Field(default=None, sa_column=_ts())
    retry_at: datetime | None = Field(default=None, sa_column=_ts())
    limits_waived_at: datetime | None = Field(default=None, sa_column=_ts())
    closed_at: datetime | None = Field(default=None, sa_column=_ts())
    short_of_liquidity_since: datetime | None = Field(default=None, sa_column=_ts())
    request_id: int | None = Field(
        default=None,
        sa_column=sa.Column(sa.BigInteger, sa.ForeignKey("operator_requests.id"), nullable=True),
        description="the operator request behind the last decision",
    )


# NOTE: the index on the shared transfers table that the relayer's limit checks use
# for the per-route daily volume; declared here so the relayer's migration owns it.
# The per-sender hourly count uses the gateway's transfers_sender_time_idx (migration 0011).
from ferry.tables import Transfer  # noqa: E402

sa.Index(
    "transfers_limits_route_time_idx",
    Transfer.__table__.c.route_id,  # type: ignore[attr-defined]
    Transfer.__table__.c.lock_block_time,  # type: ignore[attr-defined]
)
