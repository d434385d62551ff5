"""What each root field does: check the arguments, read, shape the answer.

Argument problems raise ``UserError`` with a sentence the caller can act on.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator

import strawberry

from ferry.domain import parse_transfer_id, transfer_id
from gateway import reads
from gateway.changes import follow_transfer
from gateway.context import Gateway
from gateway.errors import UserError
from gateway.paging import (
    TransferFilter,
    TransferPosition,
    address_spellings,
    check_page_size,
    decode_cursor,
    encode_cursor,
)
from gateway.types import Info, PageInfo, Transfer, TransferChange, TransferConnection, TransferEdge

_HISTORY_ID = re.compile(r"[0-9]{1,18}")

#: Page size of ``transfers`` when the caller does not say (or passes null).
DEFAULT_PAGE_SIZE = 20


def canonical_transfer_id(value: str) -> str:
    """``value`` in the form the database stores; UserError when it is not a transfer id."""
    try:
        chain_id, bridge, nonce = parse_transfer_id(value)
    except ValueError as exc:
        shown = value if len(value) <= 100 else value[:100] + "…"
        raise UserError(f"{shown!r} is not a transfer id: {exc}") from None
    return transfer_id(chain_id, bridge, nonce)


def change_cursor(value: str | None) -> int:
    """The history id in a TransferChange cursor (0 for none); UserError when malformed."""
    if value is None:
        return 0
    if not _HISTORY_ID.fullmatch(value):
        raise UserError("after must be a TransferChange cursor (a decimal number) that the API returned")
    return int(value)


async def transfer(info: Info, id: strawberry.ID) -> Transfer | None:
    record = await info.context.loaders.transfers.load(canonical_transfer_id(id))
    return None if record is None else Transfer.of(record)


async def transfers(
    info: Info, first: int | None = DEFAULT_PAGE_SIZE, after: str | None = None, address: str | None = None
) -> TransferConnection:
    gateway = info.context.gateway
    size = check_page_size(DEFAULT_PAGE_SIZE if first is None else first, gateway.settings.max_page_size)
    position = None if after is None else decode_cursor(after)
    transfer_filter = TransferFilter(addresses=None if address is None else address_spellings(address))
    records = await reads.transfer_page(gateway.pool, transfer_filter, position, size + 1)
    edges = [
        TransferEdge(cursor=encode_cursor(TransferPosition.of(record)), node=Transfer.of(record))
        for record in records[:size]
    ]
    page_info = PageInfo(
        has_next_page=len(records) > size,
        has_previous_page=after is not None,
        start_cursor=edges[0].cursor if edges else None,
        end_cursor=edges[-1].cursor if edges else None,
    )
    return TransferConnection(edges=edges, page_info=page_info)


def transfer_updated(
    info: Info, id: strawberry.ID, after: str | None = None
) -> AsyncGenerator[TransferChange, None]:
    """Check the arguments now (so a bad one fails the subscription at once), then stream."""
    wanted = canonical_transfer_id(id)
    since = change_cursor(after)
    return _stream(info.context.gateway, wanted, since)


async def _stream(gateway: Gateway, wanted: str, since: int) -> AsyncGenerator[TransferChange, None]:
    async for change in follow_transfer(gateway.feed, gateway.pool, wanted, since):
        yield TransferChange.of(change)
