"""Arguments of list fields: page sizes, opaque cursors, orders and filters, checked and normalised.

``transfers`` is ordered by one sort column (lock time, amount or last update,
either direction) and then by the transfer id, which is unique: the order is
total and stable, and a cursor is that pair (plus the order it belongs to),
serialised and base64url-encoded (``TransferPosition``). Keyset paging from a
position never skips or repeats a transfer that keeps its sort value, even while
new transfers arrive. Cursors are opaque to clients: only values the API
returned are accepted, and only with the order they were made for.

Every check raises ``UserError`` with a sentence telling the caller what to send.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import json
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation

from eth_utils.address import is_checksum_address, to_checksum_address

from ferry.domain import TransferStatus
from gateway.errors import UserError
from gateway.records import TransferRecord

_CURSOR_VERSION = "t3"
_MAX_CURSOR_LENGTH = 512
_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_UINT = re.compile(r"[0-9]{1,78}")
_ADDRESS_FORMAT = "must be a 0x-prefixed 20-byte hex address, checksummed (EIP-55) or lowercase"


class SortField(enum.Enum):
    """The column a transfers list is sorted by (then by insertion order: ``transfers.seq``)."""

    LOCKED_AT = "lock_block_time"
    AMOUNT = "amount"
    UPDATED_AT = "updated_at"


@dataclass(frozen=True, slots=True)
class TransferOrder:
    field: SortField = SortField.LOCKED_AT
    descending: bool = True


@dataclass(frozen=True, slots=True)
class TransferPosition:
    """Where a transfer sits in one order: its sort value and ``seq``; the content of a cursor."""

    order: TransferOrder
    value: datetime | Decimal
    seq: int

    @classmethod
    def of(cls, record: TransferRecord, order: TransferOrder) -> TransferPosition:
        value: datetime | Decimal = getattr(record, _RECORD_ATTRIBUTE[order.field])
        return cls(order, value, record.seq)


_RECORD_ATTRIBUTE = {
    SortField.LOCKED_AT: "lock_block_time",
    SortField.AMOUNT: "amount",
    SortField.UPDATED_AT: "updated_at",
}


@dataclass(frozen=True, slots=True)
class TransferFilter:
    """Which transfers a list shows. Addresses are checksummed, as stored (``checksummed_address``)."""

    sender: str | None = None
    recipient: str | None = None
    address: str | None = None
    statuses: tuple[TransferStatus, ...] | None = None
    source_chain_id: int | None = None
    target_chain_id: int | None = None
    route_id: str | None = None
    token: str | None = None
    amount_min: Decimal | None = None
    amount_max: Decimal | None = None
    locked_after: datetime | None = None
    locked_before: datetime | None = None


def encode_cursor(position: TransferPosition) -> str:
    value = position.value.isoformat() if isinstance(position.value, datetime) else str(position.value)
    order = position.order
    fields = [_CURSOR_VERSION, order.field.name, order.descending, value, position.seq]
    text = json.dumps(fields, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, order: TransferOrder, argument: str = "after") -> TransferPosition:
    """The position in ``cursor``; UserError when it is not a cursor this API returned for ``order``."""
    unusable = f"{argument} is not a transfers cursor: pass an edge's cursor or a pageInfo cursor unchanged"
    if len(cursor) > _MAX_CURSOR_LENGTH:
        raise UserError(unusable)
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        version, field, descending, value, seq = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if version != _CURSOR_VERSION or type(seq) is not int or not isinstance(value, str):
            raise ValueError(version)
        made_for = TransferOrder(SortField[field], bool(descending))
        parsed: datetime | Decimal = (
            Decimal(value) if made_for.field is SortField.AMOUNT else datetime.fromisoformat(value)
        )
    except (ValueError, TypeError, KeyError, binascii.Error, InvalidOperation, UnicodeDecodeError):
        raise UserError(unusable) from None
    if isinstance(parsed, datetime) and parsed.tzinfo is None:
        raise UserError(unusable)
    if made_for != order:
        raise UserError(
            f"{argument} is a cursor of a list in another order: pass the same orderBy as that list"
        )
    return TransferPosition(order, parsed, seq)


def check_page_size(size: int, max_page_size: int, argument: str = "first") -> int:
    """``size`` itself when 1 <= size <= max_page_size; UserError otherwise."""
    if size < 1 or size > max_page_size:
        raise UserError(
            f"{argument} must be between 1 and {max_page_size} (got {size}); page with cursors instead"
        )
    return size


@functools.lru_cache(maxsize=65_536)
def checksummed_address(address: str, argument: str = "address") -> str:
    """``address`` EIP-55 checksummed, the one spelling ``transfers`` stores; UserError when invalid.

    Accepts an EIP-55 checksummed or single-case 0x address. Invariant: the indexer,
    the only writer of ``transfers``, stores ``sender`` and ``recipient`` checksummed
    (``indexer/decode.py``), so a filter matches that single spelling, which lets
    PostgreSQL walk ``(sender, lock_block_time, seq)`` and
    ``(recipient, lock_block_time, seq)`` for one value each. Cached: the checksum
    costs a keccak, and the same addresses come back request after request (a
    refusal raises, so it is never cached).
    """
    if not _HEX_ADDRESS.fullmatch(address):
        raise UserError(f"{argument} {_ADDRESS_FORMAT}")
    body = address[2:]
    if body != body.lower() and body != body.upper() and not is_checksum_address(address):
        raise UserError(
            f"{argument} {_ADDRESS_FORMAT} "
            "(its checksum does not match: check the address, or send it lowercase)"
        )
    checksummed: str = to_checksum_address(address)
    return checksummed


def uint_amount(value: str, argument: str) -> Decimal:
    """A uint256 decimal string as an exact Decimal; UserError otherwise."""
    if not _UINT.fullmatch(value) or int(value) >= 2**256:
        raise UserError(
            f"{argument} must be a whole number of the token's smallest unit, as a decimal string"
        )
    return Decimal(value)
