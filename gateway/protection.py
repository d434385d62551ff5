"""ASGI guards in front of the GraphQL app: per-client rate limit and request size limit.

- Rate limit: a token bucket per client address (``FERRY_GATEWAY_RATE_LIMIT``
  requests per second, bursts of two seconds' worth). Every HTTP request takes a
  token; so does opening a WebSocket and every message a WebSocket client sends.
  Over the limit, HTTP answers 429 with ``Retry-After`` and a GraphQL-shaped
  error; a WebSocket is closed with code 4429 and a reason saying why.
- Size limit: an HTTP body larger than ``FERRY_GATEWAY_MAX_REQUEST_BYTES`` is
  refused with 413 before it is parsed (by Content-Length, or while reading).

A batch (a JSON array of operations) takes one token per operation: the GraphQL
endpoint takes the rest through the ``RATE_CHARGE`` callable this guard puts in
the request's scope.

Buckets live in memory per process (several gateway processes each allow the
rate); idle buckets are forgotten so memory stays bounded.

``RequestGuard`` is what ``gateway.app`` installs: these limits together with the
request id and time bound of ``gateway.request_id`` and CORS, in one ASGI pass.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferry import logs, metrics
from gateway.request_id import HEADER as REQUEST_ID_HEADER
from gateway.request_id import RequestTimeout, request_id

MAX_TRACKED_CLIENTS = 50_000
WS_RATE_LIMITED = 4429
#: Scope key of ``charge(tokens) -> seconds to wait`` (0: taken) for the request's client.
RATE_CHARGE = "ferry.rate_charge"
#: What cross-origin callers may use (credentials travel in the Authorization header).
CORS_METHODS = ["GET", "POST", "OPTIONS"]
CORS_HEADERS = ["authorization", "content-type"]
_VARY_ORIGIN = (b"vary", b"Origin")


class TokenBuckets:
    """One token bucket per client key, least recently used forgotten first."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str, count: float = 1) -> float:
        """0 when ``count`` tokens were taken, else the seconds until they will be available."""
        now = time.monotonic()
        tokens, last = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        waiting = 0.0
        if tokens >= count:
            tokens -= count
        else:
            waiting = (count - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > MAX_TRACKED_CLIENTS:
            self._buckets.popitem(last=False)
        return waiting


class RequestTooLarge(Exception):
    pass


class Protection:
    """Rate and size limits around ``app`` (HTTP and WebSocket)."""

    def __init__(self, app: ASGIApp, *, rate: float, max_body: int) -> None:
        self.app = app
        self.buckets = TokenBuckets(rate, burst=max(1.0, rate * 2))
        self.max_body = max_body
        self.rate = rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _client(self, scope: Scope) -> str:
        client = scope.get("client")
        return str(client[0]) if client else "unknown"

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not scope["path"].startswith("/graphql"):
            await self.app(scope, receive, send)
            return
        client = self._client(scope)
        waiting = self.buckets.take(client)
        if waiting:
            metrics.RATE_LIMITED.labels("http").inc()
            message = (
                f"rate limit: at most {self.rate:g} requests per second per client; retry in {waiting:.1f} s"
            )
            await _error(send, 429, message, {"retry-after": str(max(1, round(waiting)))})
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _error(send, 413, self._too_large())
            return
        scope[RATE_CHARGE] = lambda count: self.buckets.take(client, count) if count > 0 else 0.0
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise RequestTooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except RequestTooLarge:
            if not started:
                await _error(send, 413, self._too_large())

    def _too_large(self) -> str:
        return f"request too large: at most {self.max_body} bytes; send a smaller query"

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = self._client(scope)
        closed = False

        async def limited_receive() -> Message:
            nonlocal closed
            message = await receive()
            if message["type"] in ("websocket.connect", "websocket.receive") and self.buckets.take(client):
                metrics.RATE_LIMITED.labels("websocket").inc()
                if message["type"] == "websocket.connect":
                    await send({"type": "websocket.close", "code": 1008, "reason": "rate limit: retry later"})
                else:
                    reason = f"rate limit: at most {self.rate:g} messages per second per client"
                    await send({"type": "websocket.close", "code": WS_RATE_LIMITED, "reason": reason})
                closed = True
                return {"type": "websocket.disconnect", "code": WS_RATE_LIMITED}
            return message

        async def guarded_send(message: Message) -> None:
            if not closed:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)


async def _error(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"data": None, "errors": [{"message": message}]}).encode()
    raw: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    raw += [(name.encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class RequestGuard(Protection):
    """Request id, time bound, CORS, rate and size limits in one ASGI pass.

    The same behaviour as ``RequestId(RequestTimeout(CORSMiddleware(Protection(app))))``
    (the order ``gateway.app`` used to stack them in), without four layers of
    wrappers per request: one ``send`` adds the CORS headers (Starlette's own
    ``CORSMiddleware.send``) then the request id, and the time bound, the token and
    the body count happen here. So a refusal (429, 413) carries the CORS headers and
    the request id, and the time-out answer carries the request id, as before.
    """

    def __init__(
        self, app: ASGIApp, *, rate: float, max_body: int, timeout: float, cors_origins: Sequence[str]
    ) -> None:
        super().__init__(app, rate=rate, max_body=max_body)
        self.timeout = RequestTimeout(app, seconds=timeout)
        # NOTE: Starlette's CORS middleware for its header logic only (RequestGuard calls
        # preflight_response and send; the app is never called through it).
        self.cors = CORSMiddleware(
            app, allow_origins=list(cors_origins), allow_methods=CORS_METHODS, allow_headers=CORS_HEADERS
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            rid = request_id(scope)
            with logs.bind(request_id=rid):
                await self._guarded(scope, receive, send, rid.encode())
        elif scope["type"] == "websocket":
            with logs.bind(request_id=request_id(scope)):
                await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, rid: bytes) -> None:
        request_headers = Headers(scope=scope)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, rid)]
            await send(message)

        without_origin = "origin" not in request_headers

        async def answer(message: Message) -> None:
            if message["type"] != "http.response.start":
                await send_with_id(message)
            elif without_origin and all(name != b"vary" for name, _ in message.get("headers", ())):
                # NOTE: all that CORSMiddleware.send does for a request without Origin,
                # without building its header objects for every request.
                message["headers"] = [*message.get("headers", ()), _VARY_ORIGIN]
                await send_with_id(message)
            else:
                await self.cors.send(message, send_with_id, request_headers)

        preflight = (
            scope["method"] == "OPTIONS"
            and "origin" in request_headers
            and "access-control-request-method" in request_headers
        )
        try:
            async with asyncio.timeout(self.timeout.seconds):
                if preflight:  # CORS answers it before the limits, with its own headers only
                    response = self.cors.preflight_response(request_headers=request_headers)
                    await response(scope, receive, send_with_id)
                else:
                    await self._http(scope, receive, answer)
        except TimeoutError:
            if not started:
                await self.timeout.answer_timeout(send_with_id)
            else:
                self.timeout.log_timeout()
