"""WebSocket subscription delivery: each live change encoded once per group, keep-alive, slow consumers.

Strawberry runs a subscription's start as usual (parse, validation, limits, the
resolver's argument checks, the replay of stored changes from the database).
Once the subscription is live, its changes no longer go through Strawberry and
graphql-core per subscriber: the handler puts a ``DirectDelivery`` in
``gateway.changes.DIRECT_DELIVERY`` for the task that runs the subscription, and
``gateway.changes`` hands the live subscriber to it. Then, per change:

- subscriptions with the same document, operation and values of the variables
  their selection uses (the root field's own arguments, such as ``id`` or
  ``after``, do not matter) form a group; the change is executed and encoded to
  JSON **once per group** (``SharedPayloads``, kept ``SHARE_SECONDS``: nested
  fields such as ``transfer`` show the transfer as it is now);
- each subscriber's frame is that payload between a prefix made once per
  subscription (protocol framing and the client's operation id), written to its
  socket. While a subscriber's queue is empty and its socket takes writes without
  waiting, the feed writes the frame itself in its own step, as a broadcast does
  (``_write_now``: uvicorn's websockets-sansio protocol, found through
  ``RawWebSocketSend``); otherwise the change is queued and the subscription's task
  writes it through ASGI. The work per subscriber is a string concatenation, a
  frame header and a socket write.

The per-subscriber bounded queue (``gateway.changes.Subscriber``) is kept: a
client that stops reading blocks its socket's writes, its mailbox fills and the
feed drops it; the subscription then ends with the error that names the cursor
to resume from, and the connection is closed with code 1013 and a reason, once
the client reads what was already sent (the others are never held up).

Keep-alive: ``ping`` on graphql-transport-ws and ``ka`` on graphql-ws, every
``FERRY_GATEWAY_KEEPALIVE_INTERVAL`` seconds, from one timer per connection
rather than a task. A ping that cannot be written (the client stopped reading)
is not stacked behind another.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any, cast

from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    GraphQLError,
    GraphQLFormattedError,
    Node,
    OperationDefinitionNode,
    OperationType,
    VariableNode,
    parse,
)
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from strawberry.http.async_base_view import AsyncBaseHTTPView, AsyncWebSocketAdapter
from strawberry.schema import BaseSchema
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import ConnectionInitMessage
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import (
    ConnectionInitMessage as LegacyConnectionInitMessage,
)
from strawberry.types.execution import ExecutionResult as StrawberryResult
from strawberry.utils.aio import aclosing
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from gateway.changes import DIRECT_DELIVERY, Subscriber, too_slow_message
from gateway.context import Gateway, GatewayContext
from gateway.errors import MASKED_MESSAGE, is_user_facing
from gateway.records import StatusChange
from gateway.schema import schema
from gateway.types import TransferChange

log = logging.getLogger(__name__)

#: How long an encoded change is reused for later subscribers of the same group.
SHARE_SECONDS = 1.0
#: Close code and reason for a connection whose subscription fell behind (RFC 6455: try again later).
TOO_SLOW_CODE = 1013
DOCUMENT_PLANS = 1_024
#: Where ``RawWebSocketSend`` keeps the server's send in a WebSocket scope.
RAW_SEND = "ferry.raw_send"


# --- groups: which subscriptions share one encoding of a change -------------------------------------


@dataclass(frozen=True, slots=True)
class SubscriptionPlan:
    """A subscription document as the fan-out needs it: parsed once, with the variables that matter."""

    document: DocumentNode
    operation_name: str | None
    #: Variables read by the selection set (not by the root field's arguments): part of the group key.
    selection_variables: tuple[str, ...]
    #: The root field's name in results (its alias, if any).
    response_key: str


@lru_cache(maxsize=DOCUMENT_PLANS)
def plan_of(query: str, operation_name: str | None) -> SubscriptionPlan | None:
    """The plan of a subscription document; None when it is not one single-field subscription."""
    try:
        document = parse(query)
    except GraphQLError:
        return None
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    chosen = [o for o in operations if operation_name is None or (o.name and o.name.value == operation_name)]
    if len(chosen) != 1 or chosen[0].operation is not OperationType.SUBSCRIPTION:
        return None
    operation = chosen[0]
    roots = operation.selection_set.selections
    if len(roots) != 1 or not isinstance(roots[0], FieldNode):
        return None
    root = roots[0]
    # NOTE: everything but the root field's arguments can change the result: directives,
    # the root field's selection set and the fragments it may spread.
    fragments = [d for d in document.definitions if not isinstance(d, OperationDefinitionNode)]
    parts: list[Node] = [*(operation.directives or ()), *(root.directives or ()), *fragments]
    if root.selection_set is not None:
        parts.append(root.selection_set)
    names = sorted({variable.name.value for part in parts for variable in _variables_in(part)})
    response_key = (root.alias or root.name).value
    return SubscriptionPlan(document, operation_name, tuple(names), response_key)


def _variables_in(node: Node) -> Iterator[VariableNode]:
    if isinstance(node, VariableNode):
        yield node
        return
    for key in node.keys:
        value = getattr(node, key, None)
        children = value if isinstance(value, tuple | list) else (value,)
        for child in children:
            if isinstance(child, Node) and not isinstance(child, OperationDefinitionNode):
                yield from _variables_in(child)


def group_key(query: str, plan: SubscriptionPlan, variables: Mapping[str, Any] | None) -> tuple[str, ...]:
    values = variables or {}
    used = [
        json.dumps(values[name], sort_keys=True, default=str) if name in values else "(absent)"
        for name in plan.selection_variables
    ]
    return (query, plan.operation_name or "", *used)


class SharedPayloads:
    """Each live change executed and encoded once per group, shared by the group for ``SHARE_SECONDS``.

    A selection of plain fields executes synchronously: the first subscriber of a group
    encodes the change and the others reuse the text, none of them suspends. A selection
    with nested reads (``transfer { ... }``) runs as one task per group, which the change
    feed waits for before offering more changes (``ChangeFeed.track``): subscribers that
    keep up are never pushed out of their queues by a burst.
    """

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._entries: dict[tuple[tuple[str, ...], int], tuple[float, str | asyncio.Future[str]]] = {}

    def payload(
        self,
        key: tuple[str, ...],
        plan: SubscriptionPlan,
        variables: dict[str, Any] | None,
        context: GatewayContext,
        change: StatusChange,
    ) -> str | asyncio.Future[str]:
        """The JSON payload (``{"data": ...}``) of ``change`` for the group ``key``."""
        now = time.monotonic()
        entry = self._entries.get((key, change.id))
        if entry is not None and entry[0] > now:
            return entry[1]
        self._forget_expired(now)
        result = self._execute(plan, variables, context, change)
        encoded: str | asyncio.Future[str]
        if isinstance(result, ExecutionResult):
            encoded = _encode_result(result)
        else:
            encoded = asyncio.ensure_future(_encode_later(result))
            self._gateway.feed.track(encoded)
        self._entries[(key, change.id)] = (now + SHARE_SECONDS, encoded)
        return encoded

    def _forget_expired(self, now: float) -> None:
        # NOTE: entries are inserted in expiry order: stop at the first one still alive.
        for entry_key, (expires, _) in list(self._entries.items()):
            if expires > now:
                break
            del self._entries[entry_key]

    def _execute(
        self,
        plan: SubscriptionPlan,
        variables: dict[str, Any] | None,
        context: GatewayContext,
        change: StatusChange,
    ) -> ExecutionResult | Awaitable[ExecutionResult]:
        # NOTE: a fresh context per execution: its DataLoaders read the rows as they are now.
        fresh = GatewayContext(gateway=self._gateway, request=context.request)
        fresh.connection_params = context.connection_params
        executor = StrawberryGraphQLCoreExecutionContext.build(
            schema._schema,
            plan.document,
            context_value=fresh,
            raw_variable_values=variables,
            operation_name=plan.operation_name,
        )
        if isinstance(executor, list):
            return ExecutionResult(data=None, errors=executor)
        # NOTE: a subscription operation has no incremental delivery: the result is plain.
        return cast(
            "ExecutionResult | Awaitable[ExecutionResult]",
            executor.build_per_event_executor(TransferChange.of(change)).execute_operation(False),
        )


async def _encode_later(result: Awaitable[ExecutionResult]) -> str:
    return _encode_result(await result)


def _encode_result(result: ExecutionResult) -> str:
    payload: dict[str, Any] = {"data": result.data}
    if result.errors:
        unexpected = [error for error in result.errors if not is_user_facing(error)]
        for error in unexpected:
            log.error("a subscription field failed", exc_info=error.original_error or error)
        payload["errors"] = [
            error.formatted if is_user_facing(error) else _masked(error) for error in result.errors
        ]
    return json.dumps(payload, separators=(",", ":"))


def _masked(error: GraphQLError) -> GraphQLFormattedError:
    return GraphQLError(MASKED_MESSAGE, nodes=error.nodes, path=error.path).formatted


_PAYLOADS: weakref.WeakKeyDictionary[Gateway, SharedPayloads] = weakref.WeakKeyDictionary()


def shared_payloads(gateway: Gateway) -> SharedPayloads:
    payloads = _PAYLOADS.get(gateway)
    if payloads is None:
        payloads = _PAYLOADS[gateway] = SharedPayloads(gateway)
    return payloads


# --- one subscription's live path -------------------------------------------------------------------


class DirectDelivery:
    """Writes one subscription's live changes to its socket: ``prefix + shared payload + "}"``.

    It adopts the subscriber when ``gateway.changes`` goes live (the resolver's generator,
    Strawberry's and graphql-core's then end and free their frames) and runs from the
    handler's own generator (``_then_live``), in the subscription's task.
    """

    __slots__ = (
        "_context",
        "_key",
        "_last_sent",
        "_payloads",
        "_plan",
        "_prefix",
        "_protocol",
        "_release",
        "_send",
        "_subscriber",
        "_variables",
        "too_slow_after",
    )

    def __init__(
        self,
        send: _TextSender,
        prefix: str,
        query: str,
        plan: SubscriptionPlan,
        variables: dict[str, Any] | None,
        context: GatewayContext,
    ) -> None:
        self._send = send
        self._prefix = prefix
        self._plan = plan
        self._variables = variables
        self._context = context
        self._key = group_key(query, plan, variables)
        self._payloads = shared_payloads(context.gateway)
        self._protocol = _uvicorn_protocol(context)
        self._subscriber: Subscriber | None = None
        self._last_sent = 0
        self._release: Callable[[], None] | None = None
        #: The last cursor sent when the subscriber was dropped for falling behind, else None.
        self.too_slow_after: int | None = None

    @property
    def adopted(self) -> bool:
        return self._subscriber is not None

    def adopt(self, subscriber: Subscriber, last_sent: int, release: Callable[[], None]) -> None:
        self._subscriber, self._last_sent, self._release = subscriber, last_sent, release

    def release(self) -> None:
        """End the subscription in the feed (once; nothing when it was never adopted)."""
        release, self._release = self._release, None
        if release is not None:
            release()

    async def run(self) -> int:
        """Deliver until the subscriber is dropped for falling behind; the last cursor sent."""
        subscriber = self._subscriber
        assert subscriber is not None
        if self._protocol is not None:
            subscriber.direct = self._write_now
        try:
            while True:
                change = await subscriber.next()
                if change is None:
                    self.too_slow_after = self._last_sent
                    return self._last_sent
                if change.id <= self._last_sent:
                    continue
                encoded = self._payload(change)
                if not isinstance(encoded, str):
                    encoded = await encoded
                await self._send(self._prefix + encoded + "}")
                self._last_sent = change.id
        finally:
            subscriber.direct = None
            self.release()

    def _payload(self, change: StatusChange) -> str | asyncio.Future[str]:
        return self._payloads.payload(self._key, self._plan, self._variables, self._context, change)

    def _write_now(self, change: StatusChange) -> bool:
        """Write ``change`` to the socket from the feed's own step, as a broadcast does.

        Only while the socket takes writes without waiting and the payload is ready;
        otherwise False, and the change goes through the queue and the subscription's task.
        """
        protocol = self._protocol
        if change.id <= self._last_sent:
            return True
        if protocol is None or not protocol.writable.is_set() or protocol.close_sent or protocol.disconnected:
            return False
        try:
            encoded = self._payload(change)
            if not isinstance(encoded, str):
                return False
            # NOTE: what uvicorn's ASGI send does for "websocket.send", without the await.
            protocol.conn.send_text((self._prefix + encoded + "}").encode())
            protocol.transport.write(b"".join(protocol.conn.data_to_send()))
        except Exception:  # NOTE: never fail the feed's step; the queue path reports the problem
            log.debug("direct write declined", exc_info=True)
            return False
        self._last_sent = change.id
        return True

    def too_slow(self, cursor: int) -> StrawberryResult:
        """The subscription's last result: it fell behind, and where to resume."""
        queue_size = 0 if self._subscriber is None else self._subscriber.queue_size
        error = GraphQLError(too_slow_message(queue_size, cursor), path=[self._plan.response_key])
        return StrawberryResult(data=None, errors=[error])


async def _then_live(
    source: AsyncGenerator[Any, None], delivery: DirectDelivery
) -> AsyncGenerator[Any, None]:
    """``source``'s results; then, if the subscription was handed over, its live delivery."""
    try:
        async with aclosing(source):
            async for result in source:
                yield result
        if delivery.adopted:
            cursor = await delivery.run()
            yield delivery.too_slow(cursor)
    finally:
        delivery.release()


class _LiveSchema:
    """The schema as the protocol handlers see it: subscriptions end in their live delivery."""

    def __init__(self, wrapped: BaseSchema) -> None:
        self._wrapped = wrapped

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)

    async def subscribe(self, *args: Any, **kwargs: Any) -> Any:
        return _handed_over(await self._wrapped.subscribe(*args, **kwargs))

    async def stream(self, *args: Any, **kwargs: Any) -> Any:
        return _handed_over(await self._wrapped.stream(*args, **kwargs))


def _handed_over(source: Any) -> Any:
    delivery = DIRECT_DELIVERY.get()
    if not isinstance(delivery, DirectDelivery) or not isinstance(source, AsyncGenerator):
        DIRECT_DELIVERY.set(None)  # NOTE: nothing would run a handed-over subscription
        return source
    return _then_live(source, delivery)


class RawWebSocketSend:
    """ASGI middleware, outermost: keeps the server's own ``send`` of a WebSocket in its scope.

    With uvicorn's websockets-sansio protocol behind it, live changes can be written to
    the socket from the fan-out's step (``DirectDelivery._write_now``); with any other
    server the subscription's task writes them through ASGI as usual.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[RAW_SEND] = send
        await self.app(scope, receive, send)


def _uvicorn_protocol(context: GatewayContext) -> WebSocketsSansIOProtocol | None:
    raw_send = context.request.scope.get(RAW_SEND)
    protocol = getattr(raw_send, "__self__", None)
    return protocol if isinstance(protocol, WebSocketsSansIOProtocol) else None


class _TextSender:
    """Sends ready JSON text on the connection's socket (Starlette's WebSocket, no re-encoding)."""

    __slots__ = ("_websocket",)

    def __init__(self, websocket: AsyncWebSocketAdapter) -> None:
        self._websocket = websocket

    async def __call__(self, text: str) -> None:
        websocket: WebSocket = self._websocket.ws  # type: ignore[attr-defined]
        try:
            await websocket.send_text(text)
        except (WebSocketDisconnect, RuntimeError):
            if websocket.application_state is not WebSocketState.DISCONNECTED:
                raise
            # NOTE: the connection is gone or closing; its reader sees that too and ends every
            # operation of the connection: wait for that rather than fail (and log) through GraphQL.
            await asyncio.get_running_loop().create_future()


def _delivery(
    websocket: AsyncWebSocketAdapter,
    prefix: str,
    query: str,
    operation_name: str | None,
    variables: dict[str, Any] | None,
    context: GatewayContext,
) -> DirectDelivery | None:
    plan = plan_of(query, operation_name)
    if plan is None or not hasattr(websocket, "ws"):
        return None
    return DirectDelivery(_TextSender(websocket), prefix, query, plan, variables, context)


# --- keep-alive --------------------------------------------------------------------------------------


class KeepAlive:
    """Sends ``message`` every ``interval`` seconds from a timer; skips a beat while one is unsent."""

    __slots__ = ("_handle", "_interval", "_message", "_pending", "_send")

    def __init__(self, send: Any, message: dict[str, str], interval: float) -> None:
        self._send = send
        self._message = message
        self._interval = interval
        self._pending: asyncio.Task[None] | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self, *, now: bool) -> None:
        if now:
            self._beat()
        else:
            self._arm()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def _arm(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(self._interval, self._beat)

    def _beat(self) -> None:
        if self._pending is None or self._pending.done():
            self._pending = asyncio.ensure_future(self._ping())
        self._arm()

    async def _ping(self) -> None:
        try:
            await self._send(self._message)
        except Exception:
            return


# --- the two protocol handlers ------------------------------------------------------------------------


class TransportWSHandler(BaseGraphQLTransportWSHandler[GatewayContext, None]):
    """graphql-transport-ws with shared live encodings, server pings and slow-consumer closes."""

    def __init__(
        self,
        view: AsyncBaseHTTPView[Any, Any, Any, Any, Any, GatewayContext, None],
        websocket: AsyncWebSocketAdapter,
        context: GatewayContext,
        root_value: None,
        schema: BaseSchema,
        connection_init_wait_timeout: timedelta,
        max_subscriptions_per_connection: int | None = None,
    ) -> None:
        super().__init__(
            view,
            websocket,
            context,
            root_value,
            cast("BaseSchema", _LiveSchema(schema)),
            connection_init_wait_timeout,
            max_subscriptions_per_connection,
        )
        interval = context.gateway.settings.gateway_keepalive_interval
        self._keep_alive = KeepAlive(self.send_message, {"type": "ping"}, interval)

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        await super().handle_connection_init(message)
        if self.connection_acknowledged:
            # NOTE: the init timer is done with; drop the finished task rather than keep it per socket.
            self.connection_init_timeout_task = None
            self._keep_alive.start(now=False)

    async def shutdown(self) -> None:
        self._keep_alive.stop()
        await super().shutdown()

    async def run_operation(self, operation: Operation[GatewayContext, None]) -> None:
        prefix = '{"id":' + json.dumps(operation.id) + ',"type":"next","payload":'
        delivery = _delivery(
            self.websocket,
            prefix,
            operation.query,
            operation.operation_name,
            operation.variables,
            self.context,
        )
        DIRECT_DELIVERY.set(delivery)
        await super().run_operation(operation)
        if delivery is not None and delivery.too_slow_after is not None:
            await _close_too_slow(self.websocket, delivery.too_slow_after)


class LegacyWSHandler(BaseGraphQLWSHandler[GatewayContext, None]):
    """Legacy graphql-ws with shared live encodings, timer-driven ``ka`` and slow-consumer closes."""

    def __init__(
        self,
        view: AsyncBaseHTTPView[Any, Any, Any, Any, Any, GatewayContext, None],
        websocket: AsyncWebSocketAdapter,
        context: GatewayContext,
        root_value: None,
        schema: BaseSchema,
        keep_alive: bool,
        keep_alive_interval: float | None,
        max_subscriptions_per_connection: int | None = None,
    ) -> None:
        # NOTE: Strawberry's keep-alive is a task per connection; ours is a timer.
        live_schema = cast("BaseSchema", _LiveSchema(schema))
        super().__init__(
            view, websocket, context, root_value, live_schema, False, None, max_subscriptions_per_connection
        )
        interval = context.gateway.settings.gateway_keepalive_interval
        self._keep_alive: KeepAlive | None = (
            KeepAlive(self.send_message, {"type": "ka"}, interval) if keep_alive else None
        )

    async def handle_connection_init(self, message: LegacyConnectionInitMessage) -> None:
        await super().handle_connection_init(message)
        if self.connection_acknowledged and self._keep_alive is not None:
            self._keep_alive.start(now=True)

    async def handle(self) -> None:
        try:
            await super().handle()
        finally:
            if self._keep_alive is not None:
                self._keep_alive.stop()

    async def handle_async_results(
        self,
        operation_id: str,
        query: str,
        operation_name: str | None,
        variables: dict[str, object] | None,
    ) -> None:
        prefix = '{"type":"data","id":' + json.dumps(operation_id) + ',"payload":'
        delivery = _delivery(self.websocket, prefix, query, operation_name, variables, self.context)
        DIRECT_DELIVERY.set(delivery)
        await super().handle_async_results(operation_id, query, operation_name, variables)
        if delivery is not None and delivery.too_slow_after is not None:
            await _close_too_slow(self.websocket, delivery.too_slow_after)


def too_slow_reason(cursor: int) -> str:
    """The close reason of a connection whose subscription fell behind (at most 123 bytes)."""
    return f'subscription fell behind; subscribe again with after: "{cursor}"'


async def _close_too_slow(websocket: AsyncWebSocketAdapter, cursor: int) -> None:
    # NOTE: another subscription of the same connection may have closed it already.
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await websocket.close(TOO_SLOW_CODE, too_slow_reason(cursor))
