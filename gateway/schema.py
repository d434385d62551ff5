"""The GraphQL schema: root types, extensions and error handling.

``schema.graphql`` at the repository root is this schema printed (the API
contract); regenerate it with ``.venv/bin/python -m gateway.schema > schema.graphql``
(``strawberry export-schema`` prints the same but needs the ``cli`` extra). A unit
test fails while the file is stale.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Iterator

import strawberry
from graphql import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from ferry import metrics
from gateway import resolvers
from gateway.errors import MaskUnexpectedErrors, is_user_facing
from gateway.scalars import SCALARS
from gateway.types import Transfer, TransferChange, TransferConnection

log = logging.getLogger(__name__)


@strawberry.type
class Query:
    transfer: Transfer | None = strawberry.field(
        resolver=resolvers.transfer,
        description="One transfer by id; null when no such transfer is known (yet).",
    )
    transfers: TransferConnection = strawberry.field(
        resolver=resolvers.transfers,
        description=(
            "Transfers, newest lock first, a page at a time. first: 1 to the server's maximum page size "
            "(100 unless configured; null means 20). after: the endCursor of the previous page. "
            "address: checksummed or lowercase; keeps the transfers it sent or receives."
        ),
    )


@strawberry.type
class Subscription:
    transfer_updated: AsyncGenerator[TransferChange, None] = strawberry.subscription(
        resolver=resolvers.transfer_updated,
        description=(
            "A transfer's status changes: first its stored history (after the given change cursor, "
            "else from the start), then each change as it commits, in order, none missed or repeated. "
            "The id may be of a transfer not indexed yet. A subscriber too slow to keep up is closed "
            "with an error naming the cursor to resume from."
        ),
    )


class OperationMetrics(SchemaExtension):
    """Counts operations by type and outcome; times queries and mutations."""

    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        kind = _operation_type(self.execution_context)
        result = self.execution_context.result
        outcome = "error" if result is not None and result.errors else "ok"
        metrics.GRAPHQL_REQUESTS.labels(kind, outcome).inc()
        if kind in ("query", "mutation"):
            metrics.GRAPHQL_LATENCY.labels(kind).observe(time.perf_counter() - started)


def _operation_type(context: ExecutionContext) -> str:
    try:
        return context.operation_type.value
    except Exception:  # no parsable document or operation: nothing to name
        return "invalid"


class FerrySchema(strawberry.Schema):
    """Logs unexpected errors with their traceback; user errors are the client's business."""

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        unexpected = [error for error in errors if not is_user_facing(error)]
        if unexpected:
            super().process_errors(unexpected, execution_context)


schema = FerrySchema(
    query=Query,
    subscription=Subscription,
    config=StrawberryConfig(scalar_map=SCALARS),
    extensions=[MaskUnexpectedErrors, OperationMetrics],
)


def sdl() -> str:
    """The schema in GraphQL SDL, as committed in ``schema.graphql``."""
    return f"{schema.as_str()}\n"


if __name__ == "__main__":
    print(sdl(), end="")
