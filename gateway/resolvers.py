"""What each transfer root field does: check the arguments, read, shape the answer.

Argument problems raise ``UserError`` with a sentence the caller can act on.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import Annotated

import strawberry

from ferry.domain import parse_transfer_id, transfer_id
from gateway import reads
from gateway.changes import follow_changes, follow_transfer
from gateway.context import Gateway
from gateway.errors import UserError
from gateway.inputs import TransferFilterInput, TransferOrderInput
from gateway.paging import (
    TransferFilter,
    TransferPosition,
    check_page_size,
    checksummed_address,
    decode_cursor,
    encode_cursor,
)
from gateway.records import StatusChange, TransferRecord
from gateway.scalars import BigInt
from gateway.types import Info, PageInfo, Transfer, TransferChange, TransferConnection, TransferEdge

_HISTORY_ID = re.compile(r"[0-9]{1,18}")
_TX_HASH = re.compile(r"0x[0-9a-fA-F]{64}")

#: Page size of ``transfers`` when the caller gives neither first nor last.
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


def shown(gateway: Gateway, record: TransferRecord) -> Transfer:
    return Transfer.of(record, gateway.decimals(record.source_chain_id, record.token))


async def transfer(info: Info, id: strawberry.ID) -> Transfer | None:
    record = await info.context.loaders.transfers.load(canonical_transfer_id(id))
    return None if record is None else shown(info.context.gateway, record)


async def transfer_now(gateway: Gateway, id: str) -> Transfer | None:
    """``transfer(id)`` read directly, without the DataLoader (``gateway.roots``: one root, one read)."""
    wanted = canonical_transfer_id(id)
    record = (await reads.transfers_by_id(gateway.pool, [wanted])).get(wanted)
    return None if record is None else shown(gateway, record)


async def transfer_by_source_tx(info: Info, chain_id: BigInt, tx_hash: str) -> list[Transfer]:
    if not _TX_HASH.fullmatch(tx_hash):
        raise UserError("txHash must be a 0x-prefixed 32-byte hex transaction hash")
    gateway = info.context.gateway
    records = await reads.transfers_by_source_tx(gateway.pool, int(chain_id), tx_hash)
    return [shown(gateway, record) for record in records]


async def transfers(
    info: Info,
    filter: TransferFilterInput | None = None,
    order_by: TransferOrderInput | None = None,
    first: int | None = None,
    after: str | None = None,
    last: int | None = None,
    before: str | None = None,
    address: Annotated[
        str | None,
        strawberry.argument(deprecation_reason="Use filter: {address: ...}, which this is the same as."),
    ] = None,
) -> TransferConnection:
    return await transfer_page(
        info.context.gateway,
        filter=filter,
        order_by=order_by,
        first=first,
        after=after,
        last=last,
        before=before,
        address=address,
    )


async def transfer_page(
    gateway: Gateway,
    *,
    filter: TransferFilterInput | None = None,
    order_by: TransferOrderInput | None = None,
    first: int | None = None,
    after: str | None = None,
    last: int | None = None,
    before: str | None = None,
    address: str | None = None,
) -> TransferConnection:
    """One page of ``transfers`` (the resolver's work, also run by ``gateway.roots``)."""
    limit = gateway.settings.max_page_size
    if last is not None and (first is not None or after is not None):
        raise UserError("pass first/after to page forward or last/before to page backward, not both")
    if first is not None and before is not None:
        raise UserError("before pages backward: pass it with last, not first")
    backwards = last is not None or before is not None
    if last is not None:
        size = check_page_size(last, limit, "last")
    else:
        size = check_page_size(DEFAULT_PAGE_SIZE if first is None else first, limit, "first")
    order = (order_by or TransferOrderInput()).checked()
    wanted = (filter or TransferFilterInput()).checked()
    if address is not None:
        wanted = replace(wanted, address=checksummed_address(address))
    cursor, argument = (before, "before") if backwards else (after, "after")
    start = None if cursor is None else decode_cursor(cursor, order, argument)
    records = await reads.transfer_page(gateway.pool, wanted, order, start, size + 1, backwards=backwards)
    more = len(records) > size
    page = records[:size][::-1] if backwards else records[:size]
    edges = [
        TransferEdge(node=shown(gateway, record), position=TransferPosition.of(record, order))
        for record in page
    ]
    page_info = PageInfo(
        has_next_page=cursor is not None if backwards else more,
        has_previous_page=more if backwards else cursor is not None,
        start_cursor=encode_cursor(edges[0].position) if edges else None,
        end_cursor=encode_cursor(edges[-1].position) if edges else None,
    )
    return TransferConnection(
        edges=edges, page_info=page_info, count=lambda: reads.count_transfers(gateway.pool, wanted)
    )


def transfer_updated(
    info: Info, id: strawberry.ID, after: str | None = None
) -> AsyncGenerator[TransferChange, None]:
    """Check the arguments now (so a bad one fails the subscription at once), then stream."""
    wanted = canonical_transfer_id(id)
    since = change_cursor(after)
    return _stream_one(info.context.gateway, wanted, since)


def transfers_for_address(
    info: Info, address: str, after: str | None = None
) -> AsyncGenerator[TransferChange, None]:
    wanted = TransferFilter(address=checksummed_address(address))
    return _stream(info.context.gateway, wanted, change_cursor(after) if after is not None else 0)


def transfer_changes(
    info: Info, filter: TransferFilterInput | None = None, after: str | None = None
) -> AsyncGenerator[TransferChange, None]:
    wanted = (filter or TransferFilterInput()).checked()
    since = None if after is None else change_cursor(after)
    return _stream(info.context.gateway, wanted, since)


async def _stream_one(gateway: Gateway, wanted: str, since: int) -> AsyncGenerator[TransferChange, None]:
    async for change in follow_transfer(gateway.feed, gateway.pool, wanted, since):
        yield TransferChange.of(change)


async def _stream(
    gateway: Gateway, wanted: TransferFilter, since: int | None
) -> AsyncGenerator[TransferChange, None]:
    change: StatusChange
    async for change in follow_changes(gateway.feed, gateway.pool, wanted, since):
        yield TransferChange.of(change)
