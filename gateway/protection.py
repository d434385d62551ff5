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
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferry import metrics

MAX_TRACKED_CLIENTS = 50_000
WS_RATE_LIMITED = 4429
#: Scope key of ``charge(tokens) -> seconds to wait`` (0: taken) for the request's client.
RATE_CHARGE = "ferry.rate_charge"


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
