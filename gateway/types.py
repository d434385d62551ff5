"""The GraphQL object types: transfers, their status changes, and the transfers connection.

Conventions every field keeps:

- Addresses are EIP-55 checksummed.
- uint256 values (``amount``, ``nonce``) are exact decimal strings.
- Chain ids and block numbers are ``BigInt`` (see ``gateway.scalars``).
- Times are ISO-8601 with a UTC offset (``DateTime``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Context, Decimal
from typing import TYPE_CHECKING, Annotated

import strawberry
from eth_hash.auto import keccak
from eth_utils.address import is_address, to_checksum_address

from ferry.domain import TransferStatus
from gateway.context import GatewayContext
from gateway.errors import UserError
from gateway.paging import TransferPosition, encode_cursor
from gateway.records import StatusChange, TransferRecord
from gateway.scalars import BigInt

if TYPE_CHECKING:
    from gateway.catalog import Route

Info = strawberry.Info[GatewayContext, None]

strawberry.enum(
    TransferStatus,
    description=(
        "Where a transfer is in its life: PENDING -> CONFIRMED -> SUBMITTED -> RELEASED -> FINALIZED, "
        "or ORPHANED (its lock left the chain before confirmation), HELD (an operator must look), "
        "FAILED (gave up, with a reason)."
    ),
)


async def _confirmations(root: Transfer, info: Info) -> int | None:
    chain = await info.context.loaders.chains.load(int(root.source_chain_id))
    if chain is None or chain.head_block is None:
        return None
    return max(0, chain.head_block - int(root.lock_block_number) + 1)


async def _route(root: Transfer, info: Info) -> Annotated[Route, strawberry.lazy("gateway.catalog")] | None:
    from gateway.catalog import route_of  # NOTE: lazy: gateway.catalog imports this module

    row = await info.context.loaders.routes.load(root.route_id)
    config = info.context.gateway.chains_config
    configured = next((r for r in (config.routes if config else []) if r.route_id == root.route_id), None)
    if row is None and configured is None:
        return None
    return route_of(row, configured)


async def _history(root: Transfer, info: Info) -> list[TransferChange]:
    changes = await info.context.loaders.histories.load(str(root.id))
    return [TransferChange.of(change) for change in changes]


async def _transfer(root: TransferChange, info: Info) -> Transfer:
    record = await info.context.loaders.transfers.load(str(root.transfer_id))
    if record is None:
        raise UserError(f"transfer {root.transfer_id} is not visible yet; ask again shortly")
    return Transfer.of(record, info.context.gateway.decimals(record.source_chain_id, record.token))


_LOWER_ADDRESS = re.compile(r"0x[0-9a-f]{40}")


@functools.lru_cache(maxsize=65_536)
def _address(value: str) -> str:
    # NOTE: cached: EIP-55 needs a keccak per address, the most expensive step of a page,
    # and the same bridges and users recur across transfers.
    if _LOWER_ADDRESS.fullmatch(value):
        # NOTE: the stored (lowercase) form, checksummed directly: eth_utils' validation
        # layers cost more than the keccak itself.
        digest = keccak(value[2:].encode()).hex()
        return "0x" + "".join(
            c.upper() if d in "89abcdef" else c for c, d in zip(value[2:], digest[:40], strict=True)
        )
    return to_checksum_address(value) if is_address(value) else value


@strawberry.type(description="One lock of tokens on a source chain, and its release on the target chain.")
class Transfer:
    id: strawberry.ID = strawberry.field(
        description="<sourceChainId>:<sourceBridge lowercase>:<nonce>; a wallet can compute it from its lock."
    )
    route_id: str
    token: str
    source_chain_id: BigInt
    source_bridge: str
    nonce: str = strawberry.field(description="The lock's nonce on the source bridge (uint256, decimal).")
    target_chain_id: BigInt
    sender: str
    recipient: str
    amount: str = strawberry.field(description="Amount in the token's smallest unit (uint256, decimal).")
    decimals: int | None = strawberry.field(
        description="The token's decimals on the source chain; null when the gateway's chains file lacks it."
    )
    amount_formatted: str | None = strawberry.field(
        description='Amount with decimals applied, exact ("1.5" for 1500000000000000000 at 18 decimals).'
    )
    status: TransferStatus
    confirmations_required: int = strawberry.field(description="Confirmations the lock needs before release.")
    confirmations: int | None = strawberry.field(
        resolver=_confirmations,
        description="Confirmations the lock has so far (head - lock block + 1); null if unknown.",
    )
    lock_tx_hash: str
    lock_block_number: BigInt
    locked_at: datetime = strawberry.field(description="Time of the block that holds the lock.")
    release_tx_hash: str | None
    release_block_number: BigInt | None
    released_at: datetime | None = strawberry.field(description="Time of the block that holds the release.")
    attempts: int = strawberry.field(description="Release transactions tried so far.")
    last_error: str | None = strawberry.field(
        description="Why the last release attempt failed or the transfer is held, in a sentence."
    )
    updated_at: datetime

    route: Annotated[Route, strawberry.lazy("gateway.catalog")] | None = strawberry.field(
        resolver=_route, description="The route with its limits and pause state; null if unknown."
    )
    history: list[TransferChange] = strawberry.field(
        resolver=_history, description="Every change of status, oldest first."
    )

    @classmethod
    def of(cls, record: TransferRecord, decimals: int | None = None) -> Transfer:
        return cls(
            id=strawberry.ID(record.id),
            route_id=record.route_id,
            token=record.token,
            source_chain_id=BigInt(record.source_chain_id),
            source_bridge=_address(record.source_bridge),
            nonce=uint_text(record.nonce),
            target_chain_id=BigInt(record.target_chain_id),
            sender=_address(record.sender),
            recipient=_address(record.recipient),
            amount=uint_text(record.amount),
            decimals=decimals,
            amount_formatted=None if decimals is None else format_units(record.amount, decimals),
            status=record.status,
            confirmations_required=record.confirmations_required,
            lock_tx_hash=record.lock_tx_hash,
            lock_block_number=BigInt(record.lock_block_number),
            locked_at=record.lock_block_time,
            release_tx_hash=record.release_tx_hash,
            release_block_number=_big_int_or_none(record.release_block_number),
            released_at=record.release_block_time,
            attempts=record.attempts,
            last_error=public_error(record.last_error),
            updated_at=record.updated_at,
        )


@strawberry.type(description="One change of a transfer's status: an entry of its timeline.")
class TransferChange:
    cursor: str = strawberry.field(
        description="This change's position (increasing in commit order); pass it as transferUpdated's after."
    )
    transfer_id: strawberry.ID
    status: TransferStatus = strawberry.field(description="The status the transfer moved to.")
    previous_status: TransferStatus | None = strawberry.field(description="Null for the first status.")
    reason: str | None
    tx_hash: str | None = strawberry.field(
        description="The transaction behind the change, when there is one."
    )
    block_number: BigInt | None
    at: datetime

    transfer: Transfer = strawberry.field(
        resolver=_transfer, description="The transfer as it is now (not as it was at this change)."
    )

    @classmethod
    def of(cls, change: StatusChange) -> TransferChange:
        return cls(
            cursor=str(change.id),
            transfer_id=strawberry.ID(change.transfer_id),
            status=change.to_status,
            previous_status=change.from_status,
            reason=change.reason,
            tx_hash=change.tx_hash,
            block_number=_big_int_or_none(change.block_number),
            at=change.at,
        )


@strawberry.type(description="Where a page sits in the whole list (Relay cursor connections).")
class PageInfo:
    has_next_page: bool = strawberry.field(
        description="With first: more transfers follow. With last: true when asked with before."
    )
    has_previous_page: bool = strawberry.field(
        description="With last: more transfers precede. With first: true when asked with after."
    )
    start_cursor: str | None = strawberry.field(description="Pass as before to get the previous page.")
    end_cursor: str | None = strawberry.field(description="Pass as after to get the next page.")


def _edge_cursor(root: TransferEdge) -> str:
    # NOTE: encoded only when asked for: most pages are read for their nodes alone.
    return encode_cursor(root.position)


@strawberry.type
class TransferEdge:
    cursor: str = strawberry.field(resolver=_edge_cursor)
    node: Transfer
    position: strawberry.Private[TransferPosition]


async def _total_count(root: TransferConnection) -> int:
    # NOTE: counted only when asked for: it is the one part of a page that scans every match.
    return await root.count()


@strawberry.type(description="A page of transfers in the asked order (newest lock first by default).")
class TransferConnection:
    edges: list[TransferEdge]
    page_info: PageInfo
    count: strawberry.Private[Callable[[], Awaitable[int]]]

    total_count: int = strawberry.field(
        resolver=_total_count, description="How many transfers match the filter, across all pages."
    )


def uint_text(value: Decimal) -> str:
    """A whole Decimal as plain digits (never exponent notation, which asyncpg may give)."""
    return f"{value:f}"


#: Enough precision for any uint256 (78 digits): the default context's 28 would round.
_EXACT = Context(prec=200)


def format_units(amount: Decimal, decimals: int) -> str:
    """``amount`` smallest units as an exact decimal with ``decimals`` applied, no trailing zeros."""
    text = f"{amount.scaleb(-decimals, _EXACT):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S+")


def public_error(message: str | None) -> str | None:
    """``message`` with any URL removed (an RPC URL may hold an API key)."""
    return None if message is None else _URL.sub("<url>", message)[:500]


def _big_int_or_none(value: int | None) -> BigInt | None:
    return None if value is None else BigInt(value)
