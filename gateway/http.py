"""GraphQL over HTTP POST: prepared documents, a lean path for queries, and batches.

Frontends send the same few documents thousands of times a second. Strawberry's
view does the whole GraphQL pipeline for each (its extension hooks, a parse and a
validation cache lookup each, the limits walk, graphql-core's per-field work, then
JSON), which cost more CPU than the SQL. ``GraphQLEndpoint`` answers JSON POSTs itself:

- ``PreparedDocuments`` keeps each query text parsed and validated (an LRU of
  ``DOCUMENT_CACHE_SIZE``), with the type of each operation in it; the
  depth/cost/alias/introspection shape comes from ``gateway.limits.shape_of``
  (kept per document too) and is checked against this server's settings;
- a valid query within the limits runs on graphql-core directly, with
  ``gateway.plans.PlannedExecution``, and is counted, masked and logged as the
  schema's extensions would (``OperationMetrics``, ``MaskUnexpectedErrors``);
- everything else (GET, GraphiQL, WebSocket, mutations, invalid documents,
  refused ones, bodies that are not a JSON object or array) goes to Strawberry's
  view unchanged, so its answers and status codes stay as documented.

Batches: a JSON array of operations (``FERRY_GATEWAY_MAX_BATCH`` at most) runs its
operations concurrently on one context (their DataLoaders batch together) and
answers an array of results in the same order. A larger or empty batch, or one
whose items are not operations, is refused with status 400 and a GraphQL error
that says why. Each operation of a batch takes a token of the client's rate limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import orjson
from graphql import (
    DocumentNode,
    ExecutionResult,
    GraphQLError,
    OperationDefinitionNode,
    OperationType,
    execute,
    parse,
    specified_rules,
)
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.execution.is_awaitable import optimized_is_awaitable
from strawberry.schema.schema import validate_document
from strawberry.types.graphql import OperationType as StrawberryOperation

from ferry import metrics
from gateway.context import Gateway, GatewayContext
from gateway.errors import MASKED_MESSAGE, is_user_facing
from gateway.limits import refusal, shape_of
from gateway.plans import PlannedExecution
from gateway.protection import RATE_CHARGE
from gateway.roots import COUNTS, NotCompiledYet, OperationPlan, compile_plan
from gateway.schema import schema

log = logging.getLogger(__name__)

#: Distinct query texts kept parsed and validated.
DOCUMENT_CACHE_SIZE = 1_024
#: Longest query text kept (longer ones are prepared for each request).
MAX_CACHED_QUERY = 20_000
_JSON_HEADERS = [(b"content-type", b"application/json")]
#: The series a successful planned query counts in (looked up once, not per request).
_QUERIES_OK = metrics.GRAPHQL_REQUESTS.labels("query", "ok")
_QUERY_SECONDS = metrics.GRAPHQL_LATENCY.labels("query")


@dataclass(frozen=True)
class PreparedDocument:
    """A query text parsed and validated once; ``document`` is None when it has errors."""

    document: DocumentNode | None
    operations: dict[str | None, OperationType]
    #: Each operation name's ``gateway.roots`` plan (None: it has none), compiled on first use.
    plans: dict[str | None, OperationPlan | None] = field(default_factory=dict, compare=False)

    def plan(self, operation_name: str | None, variables: dict[str, Any] | None) -> OperationPlan | None:
        """The operation's plan (compiled with the first request whose variables are valid)."""
        if operation_name in self.plans:
            return self.plans[operation_name]
        assert self.document is not None  # NOTE: only valid query operations get here
        try:
            plan = compile_plan(self.document, operation_name, variables)
        except NotCompiledYet:
            return None
        except Exception:  # a plan is an optimisation: never let compiling it fail a request
            log.exception("could not compile a plan for a query; graphql-core will run it")
            plan = None
        self.plans[operation_name] = plan
        return plan

    def query_operation(self, operation_name: str | None) -> bool:
        """True when ``operation_name`` chooses a query of this (valid) document."""
        if self.document is None:
            return False
        if operation_name is None and len(self.operations) > 1:
            return False
        chosen = self.operations.get(operation_name)
        if chosen is None and operation_name is None and self.operations:
            chosen = next(iter(self.operations.values()))
        return chosen is OperationType.QUERY


class PreparedDocuments:
    """An LRU of prepared documents keyed by query text."""

    def __init__(self, size: int = DOCUMENT_CACHE_SIZE) -> None:
        self._size = size
        self._documents: OrderedDict[str, PreparedDocument] = OrderedDict()

    def get(self, query: str) -> PreparedDocument:
        prepared = self._documents.get(query)
        if prepared is not None:
            self._documents.move_to_end(query)
            return prepared
        prepared = _prepare(query)
        if len(query) <= MAX_CACHED_QUERY:
            self._documents[query] = prepared
            if len(self._documents) > self._size:
                self._documents.popitem(last=False)
        return prepared


def _prepare(query: str) -> PreparedDocument:
    try:
        document = parse(query)
    except GraphQLError:
        return PreparedDocument(None, {})
    if validate_document(schema._schema, document, tuple(specified_rules)):
        return PreparedDocument(None, {})
    operations = {
        (d.name.value if d.name else None): d.operation
        for d in document.definitions
        if isinstance(d, OperationDefinitionNode)
    }
    return PreparedDocument(document, operations)


class Refused(Exception):
    """A request the endpoint answers with status ``status`` and a GraphQL error."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class GraphQLEndpoint:
    """ASGI app for ``/graphql``: JSON POSTs here, the rest to Strawberry's ``view``."""

    def __init__(self, gateway: Gateway, view: ASGIApp) -> None:
        self.gateway = gateway
        self.view = view
        self.documents = PreparedDocuments()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not _is_json(scope):
            await self.view(scope, receive, send)
            return
        body = await _read_body(receive)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None  # NOTE: Strawberry's view answers it as it always has
        if isinstance(payload, list):
            await self._batch(scope, send, payload)
            return
        if isinstance(payload, dict) and self._fast(payload):
            context = GatewayContext(gateway=self.gateway, request=_request(scope, receive))
            result = await self._run_query(payload, context)
            await _respond(send, 200, result)
            return
        await self.view(scope, _replay(body, receive), send)

    def _fast(self, operation: dict[str, Any]) -> bool:
        """True when ``operation`` is a valid query within this server's limits."""
        query, variables, name = (
            operation.get("query"),
            operation.get("variables"),
            operation.get("operationName"),
        )
        if (
            not isinstance(query, str)
            or not isinstance(variables, dict | None)
            or not isinstance(name, str | None)
        ):
            return False
        prepared = self.documents.get(query)
        if prepared.document is None or not prepared.query_operation(name):
            return False
        shape = shape_of(query, prepared.document, name, variables or {})
        return shape is not None and refusal(shape, self.gateway.settings) is None

    async def _run_query(self, operation: dict[str, Any], context: GatewayContext) -> dict[str, Any]:
        started = time.perf_counter()
        prepared = self.documents.get(operation["query"])
        assert prepared.document is not None  # NOTE: checked by _fast
        name, variables = operation.get("operationName"), operation.get("variables")
        plan = prepared.plan(name, variables)
        if plan is not None:
            data = await plan.run(self.gateway, variables)
            if data is not None:
                COUNTS.planned += 1
                _QUERIES_OK.inc()
                _QUERY_SECONDS.observe(time.perf_counter() - started)
                return {"data": data}
            COUNTS.handed_back += 1
        try:
            outcome = execute(
                schema._schema,
                prepared.document,
                context_value=context,
                variable_values=operation.get("variables"),
                operation_name=operation.get("operationName"),
                executor_class=PlannedExecution,
                is_awaitable=_is_awaitable,
            )
            result = await outcome if isinstance(outcome, Awaitable) else outcome
        except Exception as exc:  # as Strawberry does: an error result, never a 500
            result = ExecutionResult(None, [GraphQLError(str(exc), original_error=exc)])
        response: dict[str, Any] = {"data": result.data}
        if result.errors:
            schema.process_errors(result.errors)
            response["errors"] = [_shown(error).formatted for error in result.errors]
        metrics.GRAPHQL_REQUESTS.labels("query", "error" if result.errors else "ok").inc()
        metrics.GRAPHQL_LATENCY.labels("query").observe(time.perf_counter() - started)
        return response

    async def _batch(self, scope: Scope, send: Send, operations: list[Any]) -> None:
        try:
            self._check_batch(scope, operations)
        except Refused as refused:
            body = {"data": None, "errors": [{"message": refused.message}]}
            await _respond(send, refused.status, body, refused.headers)
            return
        context = GatewayContext(gateway=self.gateway, request=_request(scope, _no_body))
        results = await asyncio.gather(*(self._one_of_batch(operation, context) for operation in operations))
        await _respond(send, 200, list(results))

    def _check_batch(self, scope: Scope, operations: list[Any]) -> None:
        limit = self.gateway.settings.gateway_max_batch
        if not operations:
            raise Refused(400, "the batch is empty: send at least one operation")
        if len(operations) > limit:
            raise Refused(
                400,
                f"the batch holds {len(operations)} operations; the limit is {limit}: "
                "split it into smaller batches",
            )
        if not all(isinstance(op, dict) and isinstance(op.get("query"), str) for op in operations):
            raise Refused(400, 'every operation of a batch must be an object with a "query" string')
        charge = scope.get(RATE_CHARGE)
        if charge is not None:
            waiting = charge(len(operations) - 1)
            if waiting:
                message = (
                    f"rate limit: a batch takes one request per operation, more than this client has "
                    f"left; retry in {waiting:.1f} s"
                )
                raise Refused(429, message, {"retry-after": str(max(1, round(waiting)))})

    async def _one_of_batch(self, operation: dict[str, Any], context: GatewayContext) -> dict[str, Any]:
        if self._fast(operation):
            return await self._run_query(operation, context)
        variables, name = operation.get("variables"), operation.get("operationName")
        if not isinstance(variables, dict | None) or not isinstance(name, str | None):
            return {
                "data": None,
                "errors": [{"message": "variables must be an object and operationName a string"}],
            }
        try:
            result = await schema.execute(
                operation["query"],
                variable_values=variables,
                context_value=context,
                operation_name=name,
                allowed_operation_types={StrawberryOperation.QUERY, StrawberryOperation.MUTATION},
            )
        except Exception as exc:  # Strawberry's refusals of the operation type, before it runs
            reason = getattr(exc, "as_http_error_reason", None)
            message = (
                reason() if callable(reason) else "the operation could not be run: check its type and name"
            )
            return {"data": None, "errors": [{"message": message}]}
        response: dict[str, Any] = {"data": result.data}
        if result.errors:
            response["errors"] = [error.formatted for error in result.errors]
        return response


def _is_awaitable(value: Any) -> TypeGuard[Awaitable[Any]]:
    return optimized_is_awaitable(value)


def _shown(error: GraphQLError) -> GraphQLError:
    """``error`` when the client may see it, else the generic message at the same place
    (what ``gateway.errors.MaskUnexpectedErrors`` does on Strawberry's path)."""
    if is_user_facing(error):
        return error
    return GraphQLError(
        MASKED_MESSAGE, nodes=error.nodes, source=error.source, positions=error.positions, path=error.path
    )


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return b"application/json" in value.lower()
    return False


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands over ``body`` again, then the real channel (for disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _request(scope: Scope, receive: Receive) -> Request:
    return Request(scope, receive)


async def _respond(send: Send, status: int, payload: Any, extra: dict[str, str] | None = None) -> None:
    try:
        body = orjson.dumps(payload)
    except TypeError:  # NOTE: integers past 64 bits, which orjson refuses
        body = json.dumps(payload, separators=(",", ":")).encode()
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    headers += [(name.encode(), value.encode()) for name, value in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
