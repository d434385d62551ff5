"""The GraphQL object types: transfers, their status changes, and the transfers connection.

Conventions every field keeps:

- Addresses are EIP-55 checksummed.
- uint256 values (``amount``, ``nonce``) are exact decimal strings.
- Chain ids and block numbers are ``BigInt`` (see ``gateway.scalars``).
- Times are ISO-8601 with a UTC offset (``DateTime``).
"""

from __future__ import annotations

from datetime import datetime

import strawberry
from eth_utils.address import is_address, to_checksum_address

from ferry.domain import TransferStatus
from gateway.context import GatewayContext
from gateway.errors import UserError
from gateway.records import StatusChange, TransferRecord
from gateway.scalars import BigInt

Info = strawberry.Info[GatewayContext, None]

strawberry.enum(
    TransferStatus,
    description=(
        "Where a transfer is in its life: PENDING -> CONFIRMED -> SUBMITTED -> RELEASED -> FINALIZED, "
        "or ORPHANED (its lock left the chain before confirmation), HELD (an operator must look), "
        "FAILED (gave up, with a reason)."
    ),
)


async def _history(root: Transfer, info: Info) -> list[TransferChange]:
    changes = await info.context.loaders.histories.load(str(root.id))
    return [TransferChange.of(change) for change in changes]


async def _transfer(root: TransferChange, info: Info) -> Transfer:
    record = await info.context.loaders.transfers.load(str(root.transfer_id))
    if record is None:
        raise UserError(f"transfer {root.transfer_id} is not visible yet; ask again shortly")
    return Transfer.of(record)


def _address(value: str) -> str:
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
    status: TransferStatus
    confirmations_required: int
    lock_tx_hash: str
    lock_block_number: BigInt
    locked_at: datetime = strawberry.field(description="Time of the block that holds the lock.")
    release_tx_hash: str | None
    release_block_number: BigInt | None
    released_at: datetime | None = strawberry.field(description="Time of the block that holds the release.")
    attempts: int = strawberry.field(description="Release transactions tried so far.")
    updated_at: datetime

    history: list[TransferChange] = strawberry.field(
        resolver=_history, description="Every change of status, oldest first."
    )

    @classmethod
    def of(cls, record: TransferRecord) -> Transfer:
        return cls(
            id=strawberry.ID(record.id),
            route_id=record.route_id,
            token=record.token,
            source_chain_id=BigInt(record.source_chain_id),
            source_bridge=_address(record.source_bridge),
            nonce=str(record.nonce),
            target_chain_id=BigInt(record.target_chain_id),
            sender=_address(record.sender),
            recipient=_address(record.recipient),
            amount=str(record.amount),
            status=record.status,
            confirmations_required=record.confirmations_required,
            lock_tx_hash=record.lock_tx_hash,
            lock_block_number=BigInt(record.lock_block_number),
            locked_at=record.lock_block_time,
            release_tx_hash=record.release_tx_hash,
            release_block_number=_big_int_or_none(record.release_block_number),
            released_at=record.release_block_time,
            attempts=record.attempts,
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
    has_next_page: bool
    has_previous_page: bool = strawberry.field(
        description="True when the page was asked for with after (transfers before it exist)."
    )
    start_cursor: str | None
    end_cursor: str | None = strawberry.field(description="Pass as after to get the next page.")


@strawberry.type
class TransferEdge:
    cursor: str
    node: Transfer


@strawberry.type(description="A page of transfers, newest lock first.")
class TransferConnection:
    edges: list[TransferEdge]
    page_info: PageInfo


def _big_int_or_none(value: int | None) -> BigInt | None:
    return None if value is None else BigInt(value)
