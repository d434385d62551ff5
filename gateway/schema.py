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
from strawberry.extensions import ParserCache, SchemaExtension, ValidationCache
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from ferry import metrics
from gateway import admin, catalog, resolvers
from gateway.admin import Mutation, OperatorRequest
from gateway.catalog import Chain, Route, Stats, Token
from gateway.errors import MaskUnexpectedErrors, is_user_facing
from gateway.limits import QueryLimits
from gateway.plans import PlannedExecution
from gateway.scalars import SCALARS
from gateway.types import Transfer, TransferChange, TransferConnection

log = logging.getLogger(__name__)

#: Distinct documents whose parse and validation results are kept.
DOCUMENT_CACHE_SIZE = 1_024


@strawberry.type
class Query:
    transfer: Transfer | None = strawberry.field(
        resolver=resolvers.transfer,
        description="One transfer by id; null when no such transfer is known (yet).",
    )
    transfer_by_source_tx: list[Transfer] = strawberry.field(
        resolver=resolvers.transfer_by_source_tx,
        description="The transfers locked by one source-chain transaction (one tx may hold several locks).",
    )
    transfers: TransferConnection = strawberry.field(
        resolver=resolvers.transfers,
        description=(
            "Transfers matching filter, in orderBy (newest lock first unless given), a page at a time "
            "(Relay connection). first/after page forward, last/before backward; a page holds 1 to the "
            "server's maximum page size (100 unless configured; 20 when neither first nor last is given)."
        ),
    )
    chains: list[Chain] = strawberry.field(
        resolver=catalog.chains, description="Every chain the bridge follows, with the indexer's progress."
    )
    routes: list[Route] = strawberry.field(
        resolver=catalog.all_routes, description="Every route, with its limits and whether it is paused."
    )
    tokens: list[Token] = strawberry.field(
        resolver=catalog.tokens, description="Every token, where its bridges are, and its routes."
    )
    audit_log: list[OperatorRequest] = strawberry.field(
        resolver=admin.audit_log,
        description="Admin actions, newest first (needs an operator or admin credential).",
    )
    stats: Stats = strawberry.field(
        resolver=catalog.stats,
        description="Transfers locked in the window (one route if given): count, volume, success, latency.",
    )


_FOLLOW = (
    "Every change in commit order, each with a cursor; pass the last cursor you received as after to "
    "resume: the stored changes you missed come first, then live ones, none missed or repeated. A reorg "
    "arrives as its own change (to ORPHANED, or back to PENDING). A subscriber too slow to keep up is "
    "closed with an error naming the cursor to resume from."
)


@strawberry.type
class Subscription:
    transfer_updated: AsyncGenerator[TransferChange, None] = strawberry.subscription(
        resolver=resolvers.transfer_updated,
        description=(
            "One transfer's status changes: its stored history after the cursor (from the start when "
            "after is null), then live. The id may be of a transfer not indexed yet. " + _FOLLOW
        ),
    )
    transfers_for_address: AsyncGenerator[TransferChange, None] = strawberry.subscription(
        resolver=resolvers.transfers_for_address,
        description=(
            "Changes to every transfer the address sends or receives (from the start when after is null). "
            + _FOLLOW
        ),
    )
    transfer_changes: AsyncGenerator[TransferChange, None] = strawberry.subscription(
        resolver=resolvers.transfer_changes,
        description=(
            "Changes to every transfer matching filter (status: the status moved to). With after null, "
            "only changes from now on. " + _FOLLOW
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


def _parser_cache() -> SchemaExtension:
    return ParserCache(maxsize=DOCUMENT_CACHE_SIZE)  # NOTE: the LRU itself is module-level, shared


def _validation_cache() -> SchemaExtension:
    return ValidationCache(maxsize=DOCUMENT_CACHE_SIZE)


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
    mutation=Mutation,
    subscription=Subscription,
    config=StrawberryConfig(scalar_map=SCALARS),
    execution_context_class=PlannedExecution,
    # NOTE: the caches make a repeated document cost one dict lookup instead of a parse
    # and a validation; QueryLimits then checks it against this server's limits.
    extensions=[
        MaskUnexpectedErrors,
        OperationMetrics,
        _parser_cache,
        _validation_cache,
        QueryLimits,
    ],
)


def sdl() -> str:
    """The schema in GraphQL SDL, as committed in ``schema.graphql``."""
    return f"{schema.as_str()}\n"


if __name__ == "__main__":
    print(sdl(), end="")
