"""Arguments of list fields: page sizes, opaque cursors and filters, checked and normalised.

``transfers`` is ordered newest lock first by the key
(lock block time, source chain id, source bridge, nonce), all descending. The
last three are the lock's unique key, so the order is total and stable, and a
cursor is simply that key, serialised and base64url-encoded (``TransferPosition``).
Keyset paging from a position never skips or repeats a transfer, even while new
transfers arrive. Cursors are opaque to clients: only values the API returned
are accepted.

Every check raises ``UserError`` with a sentence telling the caller what to send.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation

from eth_utils.address import is_checksum_address, to_checksum_address

from gateway.errors import UserError
from gateway.records import TransferRecord

_CURSOR_VERSION = "t1"
_MAX_CURSOR_LENGTH = 512
_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_ADDRESS_FORMAT = "address must be a 0x-prefixed 20-byte hex address, checksummed (EIP-55) or lowercase"


@dataclass(frozen=True, slots=True)
class TransferPosition:
    """Where a transfer sits in the newest-first order; the content of a cursor."""

    locked_at: datetime
    source_chain_id: int
    source_bridge: str
    nonce: Decimal

    @classmethod
    def of(cls, record: TransferRecord) -> TransferPosition:
        return cls(record.lock_block_time, record.source_chain_id, record.source_bridge, record.nonce)


@dataclass(frozen=True, slots=True)
class TransferFilter:
    """Which transfers a list shows. ``addresses`` are the spellings of one address."""

    addresses: tuple[str, ...] | None = None


def encode_cursor(position: TransferPosition) -> str:
    fields = [
        _CURSOR_VERSION,
        position.locked_at.isoformat(),
        position.source_chain_id,
        position.source_bridge,
        str(position.nonce),
    ]
    text = json.dumps(fields, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, argument: str = "after") -> TransferPosition:
    """The position in ``cursor``; UserError when it is not a cursor this API returned."""
    if len(cursor) > _MAX_CURSOR_LENGTH:
        raise UserError(f"{argument} is not a transfers cursor: pass an edge's cursor unchanged")
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        fields = json.loads(base64.urlsafe_b64decode(padded.encode()))
        version, locked_at, chain_id, bridge, nonce = fields
        if version != _CURSOR_VERSION or not isinstance(chain_id, int) or not isinstance(bridge, str):
            raise ValueError(version)
        position = TransferPosition(datetime.fromisoformat(locked_at), chain_id, bridge, Decimal(nonce))
    except (ValueError, TypeError, binascii.Error, InvalidOperation, UnicodeDecodeError):
        raise UserError(
            f"{argument} is not a transfers cursor: pass an edge's cursor or pageInfo.endCursor unchanged"
        ) from None
    if position.locked_at.tzinfo is None:
        raise UserError(f"{argument} is not a transfers cursor: pass an edge's cursor unchanged")
    return position


def check_page_size(first: int, max_page_size: int) -> int:
    """``first`` itself when 1 <= first <= max_page_size; UserError otherwise."""
    if first < 1 or first > max_page_size:
        raise UserError(f"first must be between 1 and {max_page_size} (got {first}); page with after instead")
    return first


def address_spellings(address: str) -> tuple[str, ...]:
    """The checksummed and lowercase spellings of a valid ``address``; UserError otherwise.

    Accepts an EIP-55 checksummed or single-case 0x address. Both spellings are
    matched, so the lookup does not depend on how a writer stored addresses.
    """
    if not _HEX_ADDRESS.fullmatch(address):
        raise UserError(_ADDRESS_FORMAT)
    if address != address.lower() and not is_checksum_address(address):
        raise UserError(
            f"{_ADDRESS_FORMAT} (its checksum does not match: check the address, or send it lowercase)"
        )
    checksummed = to_checksum_address(address)
    return (checksummed, checksummed.lower())
