"""GraphQL input types of list fields and subscriptions, and their checked, normalised form.

``TransferFilterInput.checked()`` turns what a client sent into a ``TransferFilter``
(addresses validated and checksummed, the one spelling stored; amounts exact),
raising ``UserError`` naming the field at fault.
"""

from __future__ import annotations

import enum
from datetime import datetime

import strawberry

from ferry.domain import TransferStatus
from gateway.errors import UserError, checked_text
from gateway.paging import SortField, TransferFilter, TransferOrder, checksummed_address, uint_amount
from gateway.scalars import BigInt
from gateway.types import Info as _Info  # noqa: F401  # NOTE: registers the TransferStatus enum first

_MAX_STATUSES = len(TransferStatus)
_MAX_NAME = 200

strawberry.enum(
    SortField,
    name="TransferSortField",
    description="What transfers are sorted by (then in the order they were recorded).",
)


@strawberry.enum(description="Ascending or descending.")
class OrderDirection(enum.Enum):
    ASC = "ASC"
    DESC = "DESC"


@strawberry.input(description="An order for transfers; the default is newest lock first.")
class TransferOrderInput:
    field: SortField = SortField.LOCKED_AT
    direction: OrderDirection = OrderDirection.DESC

    def checked(self) -> TransferOrder:
        return TransferOrder(self.field, self.direction is OrderDirection.DESC)


@strawberry.input(
    description=(
        "Which transfers to keep; every field given must match (AND). Addresses are checksummed "
        "(EIP-55) or lowercase hex. Amounts are whole numbers of the token's smallest unit."
    )
)
class TransferFilterInput:
    sender: str | None = None
    recipient: str | None = None
    address: str | None = strawberry.field(default=None, description="Sender or recipient.")
    status: list[TransferStatus] | None = strawberry.field(default=None, description="Any of these.")
    source_chain_id: BigInt | None = None
    target_chain_id: BigInt | None = None
    route_id: str | None = None
    token: str | None = None
    amount_min: str | None = strawberry.field(default=None, description="At least (inclusive).")
    amount_max: str | None = strawberry.field(default=None, description="At most (inclusive).")
    locked_after: datetime | None = strawberry.field(default=None, description="Locked at or after.")
    locked_before: datetime | None = strawberry.field(default=None, description="Locked strictly before.")

    def checked(self) -> TransferFilter:
        for name, value in (("routeId", self.route_id), ("token", self.token)):
            if value is not None:
                checked_text(value, f"filter.{name}", _MAX_NAME)
        for name, moment in (("lockedAfter", self.locked_after), ("lockedBefore", self.locked_before)):
            if moment is not None and moment.tzinfo is None:
                raise UserError(f"filter.{name} needs a UTC offset, e.g. 2026-01-01T00:00:00Z")
        amount_min = None if self.amount_min is None else uint_amount(self.amount_min, "filter.amountMin")
        amount_max = None if self.amount_max is None else uint_amount(self.amount_max, "filter.amountMax")
        if amount_min is not None and amount_max is not None and amount_min > amount_max:
            raise UserError("filter.amountMin is larger than filter.amountMax: nothing could match")
        return TransferFilter(
            sender=_checksummed(self.sender, "filter.sender"),
            recipient=_checksummed(self.recipient, "filter.recipient"),
            address=_checksummed(self.address, "filter.address"),
            statuses=None if self.status is None else tuple(dict.fromkeys(self.status))[:_MAX_STATUSES],
            source_chain_id=self.source_chain_id,
            target_chain_id=self.target_chain_id,
            route_id=self.route_id,
            token=self.token,
            amount_min=amount_min,
            amount_max=amount_max,
            locked_after=self.locked_after,
            locked_before=self.locked_before,
        )


def _checksummed(address: str | None, argument: str) -> str | None:
    return None if address is None else checksummed_address(address, argument)
