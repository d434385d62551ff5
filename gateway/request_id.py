"""Request ids and request time bounds for the GraphQL endpoint.

Request ids: one per HTTP request or WebSocket connection, on every log line it causes.

A client may send ``X-Request-Id`` (up to 64 letters, digits, ``-``, ``_``, ``.``) to
tie Ferry's logs to its own; otherwise the gateway makes one. The id is echoed in
the ``X-Request-Id`` response header and bound into the logging context
(``ferry.logs.bind``), so every JSON line about the request carries ``request_id``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferry import logs

HEADER = b"x-request-id"
_ACCEPTABLE = re.compile(rb"^[A-Za-z0-9._-]{1,64}$")


def request_id(scope: Scope) -> str:
    """The client's id when it is acceptable, else a fresh one (never echo arbitrary bytes)."""
    for name, value in scope.get("headers", ()):
        if name == HEADER and _ACCEPTABLE.match(value):
            return str(value.decode())
    return uuid.uuid4().hex


class RequestId:
    """Pure ASGI middleware (works for HTTP and WebSocket scopes alike)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (HEADER, rid.encode())]
            await send(message)

        with logs.bind(request_id=rid):
            await self.app(scope, receive, send_with_id)


class RequestTimeout:
    """Bound every HTTP request: a request still running after ``seconds`` is answered
    with a GraphQL error instead of holding its client (and a connection) forever.

    NOTE: WebSocket connections are long-lived by design and are not bounded here.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            async with asyncio.timeout(self.seconds):
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            if started:
                self.log_timeout()
            else:
                await self.answer_timeout(send)

    def log_timeout(self) -> None:
        logging.getLogger(__name__).warning("request exceeded %.0f s and was cut off", self.seconds)

    async def answer_timeout(self, send: Send) -> None:
        """Log the time-out and answer it with a GraphQL error (the response has not started)."""
        self.log_timeout()
        body = json.dumps(
            {
                "data": None,
                "errors": [
                    {"message": f"the request took longer than {self.seconds:g} s; try a narrower query"}
                ],
            }
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
