"""A small, strict JSON-RPC client for EVM nodes (the hot path of indexer and relayer).

web3.py's request formatting costs far more than the network on the log path, so
Ferry speaks JSON-RPC directly here and keeps web3.py for contracts and deploys.
Strictness is the point: an answer that is not well-formed JSON-RPC, or that
belongs to another chain, raises ``RpcGarbage`` instead of flowing into the
database. Errors never contain the endpoint URL (it may hold an API key); the
endpoint is named by ``redact_url``.

Transports: ``http://`` / ``https://`` URLs are POSTed to (httpx, one request per
call or batch); ``ws://`` / ``wss://`` URLs speak the same JSON-RPC over one
WebSocket connection (``_WebSocketLink``), opened on the first call and again on
the call after it drops. Requests on it are pipelined and matched to answers by
id (a batch by any of its ids: nodes may reorder a batch's answers). The errors
are the same as over HTTP: a connection that fails, drops or times out raises
``RpcUnavailable``; a message that is not JSON, or answers no request in flight
(we never subscribe on this connection), raises ``RpcGarbage`` for every call in
flight and closes the connection.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from ferry.tasks import stop_task


class RpcError(Exception):
    """The node answered with a JSON-RPC error object."""

    def __init__(self, endpoint: str, method: str, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{endpoint}: {method} failed with code {code}: {message}")
        self.code = code
        self.message = message
        self.data = data


class RpcUnavailable(Exception):
    """The node could not be reached, timed out, or answered HTTP errors (incl. 429)."""

    def __init__(self, endpoint: str, reason: str, *, rate_limited: bool = False) -> None:
        super().__init__(f"{endpoint}: {reason}")
        self.rate_limited = rate_limited


class RpcGarbage(Exception):
    """The node answered something that is not a valid response to what was asked."""


def redact_url(url: str) -> str:
    """``scheme://host:port`` only: paths and query strings often carry API keys."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def is_websocket(url: str) -> bool:
    """Whether ``url`` is a WebSocket endpoint (``ws://`` / ``wss://``)."""
    return url.startswith(("ws://", "wss://"))


#: Called after every round trip: (method, seconds, the exception raised or None).
RequestObserver = Callable[[str, float, BaseException | None], None]
#: Largest WebSocket message accepted (an eth_getLogs answer can be many MB; HTTP has no limit).
WEBSOCKET_MAX_MESSAGE = 2**28


class RpcClient:
    """JSON-RPC over HTTP or a WebSocket, with optional batching. One instance per endpoint.

    ``observer``, when given, hears of every round trip (for per-endpoint health
    metrics); it must be cheap and must not raise.
    """

    def __init__(self, url: str, *, timeout: float = 10.0, observer: RequestObserver | None = None) -> None:
        self.url = url
        self.name = redact_url(url)
        self.observer = observer
        self._ids = itertools.count(1)
        self._http = httpx.AsyncClient(timeout=timeout, headers={"content-type": "application/json"})
        self._websocket = _WebSocketLink(url, self.name, timeout) if is_websocket(url) else None

    async def close(self) -> None:
        await self._http.aclose()
        if self._websocket is not None:
            await self._websocket.close()

    async def call(self, method: str, *params: Any) -> Any:
        request = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
        body = await self._post(request, method)
        return self._result(body, request["id"], method)

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Several calls in one HTTP request; results in call order; the first error raises."""
        return [self._result(answer, r["id"], r["method"]) for r, answer in await self._batch_answers(calls)]

    async def batch_results(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any | RpcError]:
        """Several calls in one HTTP request; each item's result, or its ``RpcError``, in call order.

        Unlike ``batch`` an error answer to one call does not hide the others' answers (a batch of
        ``eth_sendRawTransaction`` where one is "already known" still reports the rest). A
        transport failure or a malformed answer raises as for ``call``.
        """
        answers: list[Any | RpcError] = []
        for request, answer in await self._batch_answers(calls):
            try:
                answers.append(self._result(answer, request["id"], request["method"]))
            except RpcError as exc:
                answers.append(exc)
        return answers

    async def _batch_answers(
        self, calls: Sequence[tuple[str, Sequence[Any]]]
    ) -> list[tuple[dict[str, Any], Any]]:
        """Send ``calls`` as one batch; each request with the answer carrying its id (None if none)."""
        if not calls:
            return []
        requests: list[dict[str, Any]] = [
            {"jsonrpc": "2.0", "id": next(self._ids), "method": m, "params": list(p)} for m, p in calls
        ]
        body = await self._post(requests, calls[0][0])
        if not isinstance(body, list) or len(body) != len(requests):
            raise RpcGarbage(f"{self.name}: batch answer is not a list of {len(requests)} responses")
        by_id = {item.get("id"): item for item in body if isinstance(item, dict)}
        return [(request, by_id.get(request["id"])) for request in requests]

    async def _post(self, payload: Any, method: str) -> Any:
        if self.observer is None:
            return await self._send(payload, method)
        started = time.perf_counter()
        try:
            body = await self._send(payload, method)
        except BaseException as exc:
            self.observer(method, time.perf_counter() - started, exc)
            raise
        self.observer(method, time.perf_counter() - started, None)
        return body

    async def _send(self, payload: Any, method: str) -> Any:
        if self._websocket is not None:
            return await self._websocket.send(payload, method)
        request = self._http.build_request("POST", self.url, json=payload)
        try:
            response = await self._http.send(request, stream=True)
            try:
                if response.status_code == 429:
                    raise RpcUnavailable(self.name, "rate limited (HTTP 429)", rate_limited=True)
                if response.status_code >= 400 and response.status_code != 400:
                    raise RpcUnavailable(self.name, f"{method} answered HTTP {response.status_code}")
                # NOTE: the body is read into our own bytes, not ``response.content``: httpx's
                # response objects sit in reference cycles, so the body they keep (MBs for an
                # eth_getLogs answer) waited for the cycle collector; a backfill piled them up.
                content = b"".join([chunk async for chunk in response.aiter_bytes()])
            finally:
                await response.aclose()
        except httpx.TimeoutException:
            raise RpcUnavailable(self.name, f"{method} timed out") from None
        except httpx.HTTPError as exc:
            raise RpcUnavailable(self.name, f"{method} failed: {type(exc).__name__}") from None
        try:
            # NOTE: orjson parses a large eth_getLogs answer several times faster than json.
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            raise RpcGarbage(f"{self.name}: {method} answered malformed JSON") from None

    def _result(self, body: Any, request_id: Any, method: str) -> Any:
        if not isinstance(body, dict) or body.get("id") != request_id:
            raise RpcGarbage(f"{self.name}: {method} answer is not a JSON-RPC response to this request")
        error = body.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise RpcGarbage(f"{self.name}: {method} answered a malformed error")
            raise RpcError(
                self.name, method, int(error.get("code", 0)), str(error.get("message", "")), error.get("data")
            )
        if "result" not in body:
            raise RpcGarbage(f"{self.name}: {method} answer has neither result nor error")
        return body["result"]

    # Typed helpers for the calls Ferry makes most.

    async def chain_id(self) -> int:
        return _quantity(await self.call("eth_chainId"), "eth_chainId")

    async def block_number(self) -> int:
        return _quantity(await self.call("eth_blockNumber"), "eth_blockNumber")

    async def get_block(self, number: int | str) -> dict[str, Any] | None:
        tag = hex(number) if isinstance(number, int) else number
        block = await self.call("eth_getBlockByNumber", tag, False)
        if block is not None and not isinstance(block, dict):
            raise RpcGarbage(f"{self.name}: eth_getBlockByNumber answered a {type(block).__name__}")
        return block

    async def get_logs(
        self, addresses: Sequence[str], topics: Sequence[Any], from_block: int, to_block: int
    ) -> list[dict[str, Any]]:
        result = await self.call(
            "eth_getLogs",
            {
                "address": list(addresses),
                "topics": list(topics),
                "fromBlock": hex(from_block),
                "toBlock": hex(to_block),
            },
        )
        if not isinstance(result, list):
            raise RpcGarbage(f"{self.name}: eth_getLogs answered a {type(result).__name__}, not a list")
        return result


class _WebSocketLink:
    """JSON-RPC over one WebSocket connection: opened on first use, again after it drops.

    Calls are pipelined: each registers its id(s) and waits for the answer carrying
    one of them, which a reader task hands over. Anything else on the connection (not
    JSON, or an answer to no call in flight) is garbage: every call in flight fails
    with ``RpcGarbage`` and the connection closes, so the next call opens a fresh one.
    """

    def __init__(self, url: str, name: str, timeout: float) -> None:
        self.url, self.name, self.timeout = url, name, timeout
        self._socket: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        #: The connection the reader task reads (and closes when it ends); kept past ``_socket``.
        self._reading: ClientConnection | None = None
        self._opening = asyncio.Lock()
        self._waiting: dict[Any, asyncio.Future[Any]] = {}

    async def send(self, payload: Any, method: str) -> Any:
        ids = [r["id"] for r in payload] if isinstance(payload, list) else [payload["id"]]
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self.timeout):
                socket = await self._open()
                self._waiting.update(dict.fromkeys(ids, answer))
                await socket.send(orjson.dumps(payload).decode())
                return await answer
        except TimeoutError:
            raise RpcUnavailable(self.name, f"{method} timed out") from None
        except (OSError, WebSocketException) as exc:
            raise RpcUnavailable(self.name, f"{method} failed: {type(exc).__name__}") from None
        finally:
            for request_id in ids:
                self._waiting.pop(request_id, None)

    async def _open(self) -> ClientConnection:
        async with self._opening:
            if self._socket is None:
                # NOTE: proxy=None: a proxy from the environment must not carry loopback or provider traffic.
                socket = await connect(
                    self.url, proxy=None, open_timeout=self.timeout, max_size=WEBSOCKET_MAX_MESSAGE
                )
                self._socket = self._reading = socket
                self._reader = asyncio.create_task(self._read(socket))
            return self._socket

    async def _read(self, socket: ClientConnection) -> None:
        failure: Exception = RpcUnavailable(self.name, "the WebSocket closed")
        try:
            async for message in socket:
                self._answer(message)
        except RpcGarbage as exc:
            failure = exc
        except (OSError, WebSocketException) as exc:
            failure = RpcUnavailable(self.name, f"the WebSocket failed: {type(exc).__name__}")
        if self._socket is socket:
            self._socket = None
        for answer in self._waiting.values():
            if not answer.done():
                answer.set_exception(failure)
        await socket.close()

    def _answer(self, message: str | bytes) -> None:
        try:
            body = orjson.loads(message)
        except orjson.JSONDecodeError:
            raise RpcGarbage(f"{self.name}: malformed JSON on the WebSocket") from None
        first = body[0] if isinstance(body, list) and body else body
        answer = self._waiting.get(first.get("id")) if isinstance(first, dict) else None
        if answer is None:
            raise RpcGarbage(f"{self.name}: a WebSocket message that answers no request in flight")
        if not answer.done():
            answer.set_result(body)

    async def close(self) -> None:
        # NOTE: the reader's connection, not ``_socket``: a reader whose connection dropped has already
        # cleared ``_socket`` and may be cancelled here in the middle of closing it; closing it again
        # finishes the job (else its transport is left open).
        socket, reader = self._reading, self._reader
        self._socket = self._reading = self._reader = None
        await stop_task(reader)
        if socket is not None:
            await socket.close()


def _quantity(value: Any, method: str) -> int:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise RpcGarbage(f"{method} answered {value!r}, not a hex quantity")
    try:
        return int(value, 16)
    except ValueError:
        raise RpcGarbage(f"{method} answered {value!r}, not a hex quantity") from None


def quantity(value: Any, what: str = "quantity") -> int:
    """Parse a hex quantity from a node answer, raising RpcGarbage when it is not one."""
    return _quantity(value, what)


def block_timestamp(value: Any, what: str = "block timestamp") -> datetime:
    """A block's timestamp (hex seconds) as a UTC datetime, raising RpcGarbage when it is not a date.

    NOTE: a quantity can be any size; ``datetime`` ends at year 9999 (ValueError, OverflowError
    beyond time_t), which a node's garbage must not turn into an unexpected error.
    """
    seconds = _quantity(value, what)
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, ValueError, OSError):
        raise RpcGarbage(f"{what} {seconds} is not a date") from None
