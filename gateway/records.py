"""Plain records of what the gateway reads: one transfer row, one status change.

They are immutable so a change read once by the change feed can be shared by
every subscriber of that transfer without copies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

from ferry.domain import TransferStatus


class TransferRecord(NamedTuple):
    """The columns of ``transfers`` that the API shows.

    A named tuple rather than a frozen dataclass: a list page builds 21 of them per
    request, and a frozen dataclass's ``__init__`` sets each of its 21 fields through
    ``object.__setattr__`` (about a tenth of the list's CPU with the conversion of
    each row). Immutable all the same.
    """

    id: str
    route_id: str
    token: str
    source_chain_id: int
    source_bridge: str
    nonce: Decimal
    target_chain_id: int
    sender: str
    recipient: str
    amount: Decimal
    status: TransferStatus
    confirmations_required: int
    lock_tx_hash: str
    lock_block_number: int
    lock_block_time: datetime
    release_tx_hash: str | None
    release_block_number: int | None
    release_block_time: datetime | None
    attempts: int
    last_error: str | None
    updated_at: datetime
    #: Insertion order (migration 0012): the lists' tiebreaker, in their cursors; not shown.
    seq: int

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TransferRecord:
        values = [row[name] for name in TRANSFER_COLUMNS]
        status = values[_STATUS]
        values[_STATUS] = _STATUSES.get(status) or TransferStatus(status)  # NOTE: unknown: ValueError
        return cls._make(values)


TRANSFER_COLUMNS: tuple[str, ...] = TransferRecord._fields
_STATUS = TRANSFER_COLUMNS.index("status")
_STATUSES = {status.value: status for status in TransferStatus}


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One row of ``transfer_status_history``; ``id`` is the change cursor (commit order)."""

    id: int
    transfer_id: str
    from_status: TransferStatus | None
    to_status: TransferStatus
    reason: str | None
    tx_hash: str | None
    block_number: int | None
    at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> StatusChange:
        previous = row["from_status"]
        return cls(
            id=row["id"],
            transfer_id=row["transfer_id"],
            from_status=TransferStatus(previous) if previous is not None else None,
            to_status=TransferStatus(row["to_status"]),
            reason=row["reason"],
            tx_hash=row["tx_hash"],
            block_number=row["block_number"],
            at=row["created_at"],
        )


HISTORY_COLUMNS = "id, transfer_id, from_status, to_status, reason, tx_hash, block_number, created_at"
