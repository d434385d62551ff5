"""New heads from a WebSocket ``eth_subscribe("newHeads")``: the follower's wake-up call.

Polling stays the floor: the follower steps at least every ``poll_interval``
seconds whatever happens here. A ``ws://`` / ``wss://`` entry in a chain's
``rpc_urls`` adds a subscription on top of it:

- each notification's header (number, hash, parent hash, timestamp, logs bloom)
  is kept in ``recent`` and sets ``wake``, so the follower steps at once and
  reads the new block's logs by its hash in one batch request, without asking for
  the head or the headers (``ChainReader.read_hinted``, which also checks the
  block is canonical on the endpoint it reads from);
- the subscription only wakes the follower: the follower still reads from its
  cursor by number, so a notification lost while the socket was down (or
  dropped by the node) costs latency, never a block;
- the WebSocket endpoint's health counts like an HTTP endpoint's, under its index
  in ``rpc_urls``: a connection that fails or drops is ``unavailable``, an answer
  that is not JSON-RPC, a header that does not parse, or another chain id is
  ``garbage``; either takes the endpoint out for a doubling backoff (the next
  WebSocket endpoint, if any, is tried), during which the follower polls;
- a notification for block ``n`` forgets every kept header above ``n``: the
  chain's tip went back (a reorg), those blocks are not canonical.

The subscription is read here, never used for other JSON-RPC calls: logs and
headers come through ``Endpoints``, with their failover — over HTTP, or over a
WebSocket endpoint's own JSON-RPC connection (``ferry.rpc``) when the chain lists
only WebSocket endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from ferry import metrics
from ferry.rpc import RpcGarbage, RpcUnavailable, is_websocket, quantity, redact_url
from ferry.settings import ChainConfig
from indexer.chain import BlockHeader, parse_header

log = logging.getLogger(__name__)

#: Unavailable (connect failed, dropped): first pause and ceiling, seconds, doubling.
FAILURE_BACKOFF = (0.5, 30.0)
#: Garbage (not JSON-RPC, bad header, wrong chain): longer, like HTTP garbage.
GARBAGE_BACKOFF = (10.0, 600.0)
#: Headers kept below the newest one (the follower reads at most a few blocks at a time by hint).
KEEP_HEADERS = 256
#: Seconds to open the socket, check the chain id and subscribe.
OPEN_TIMEOUT = 5.0


@dataclass
class HeadEndpoint:
    """One WebSocket endpoint: its index in ``rpc_urls`` (the metric label) and health."""

    label: str
    url: str
    failures: int = 0
    down_until: float = 0.0

    @property
    def name(self) -> str:
        return redact_url(self.url)


class Heads:
    """The newHeads subscription of one chain, over the first healthy WebSocket endpoint."""

    def __init__(
        self,
        chain: ChainConfig,
        endpoints: Sequence[HeadEndpoint],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not endpoints:
            raise ValueError("Heads needs at least one WebSocket endpoint")
        self.chain = chain
        self.endpoints = list(endpoints)
        self.recent: dict[int, BlockHeader] = {}
        self.wake = asyncio.Event()
        self.subscribed = False
        self.notifications = 0
        self._clock = clock
        self._index = 0
        for endpoint in self.endpoints:
            metrics.HEAD_SUBSCRIPTION_UP.labels(chain=chain.name, endpoint=endpoint.label).set(0)

    @classmethod
    def for_chain(cls, chain: ChainConfig) -> Heads | None:
        """The subscription for the chain's ``ws://`` / ``wss://`` rpc_urls, or None when it lists none."""
        found = [HeadEndpoint(str(i), url) for i, url in enumerate(chain.rpc_urls) if is_websocket(url)]
        return cls(chain, found) if found else None

    async def wait(self, seconds: float) -> bool:
        """Wait for a new head for at most ``seconds``; True when one came.

        A cancel always ends the wait: ``asyncio.timeout``, not ``asyncio.wait_for``, which
        on Python 3.11 returns normally when the cancel and a new head come in the same
        loop iteration, so a stopped follower went on following (a test waited forever).
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.wake.wait()
        return self.wake.is_set()

    def hints(self) -> dict[int, BlockHeader]:
        """The headers notified so far (empty while the subscription is down: poll instead)."""
        return self.recent if self.subscribed else {}

    async def run(self) -> None:
        """Subscribe, read notifications, and on any failure back off and subscribe again (forever)."""
        while True:
            endpoint = self._choose()
            pause = endpoint.down_until - self._clock()
            if pause > 0:
                await asyncio.sleep(pause)
            try:
                await self._follow(endpoint)
                raise RpcUnavailable(endpoint.name, "the WebSocket closed")
            except (RpcGarbage, RpcUnavailable, OSError, WebSocketException, TimeoutError) as exc:
                self._failed(endpoint, exc)
            except Exception as exc:
                # NOTE: a bug (an answer no check foresaw) must not end the subscription for good
                # while polling hides it: it is logged with its traceback (the URL replaced by its
                # name, as in every log: it may hold a key), counted as the indexer's unexpected
                # error rather than the endpoint's, and the socket is retried.
                trace = "".join(traceback.format_exception(exc)).replace(endpoint.url, endpoint.name)
                log.error(
                    "chain %s: new heads from %s stopped on an unexpected error:\n%s",
                    self.chain.name,
                    endpoint.name,
                    trace,
                    extra={"chain_id": self.chain.id},
                )
                metrics.INDEXER_ERRORS.labels(chain=self.chain.name, kind="unexpected").inc()
                self._failed(endpoint, exc, count=False)

    async def _follow(self, endpoint: HeadEndpoint) -> None:
        async with asyncio.timeout(OPEN_TIMEOUT):
            # NOTE: proxy=None: a proxy from the environment must not carry loopback or provider traffic.
            socket = await connect(endpoint.url, proxy=None, open_timeout=OPEN_TIMEOUT, max_size=2**22)
        async with socket:
            async with asyncio.timeout(OPEN_TIMEOUT):
                served = quantity(await _call(socket, endpoint, 1, "eth_chainId", []), "eth_chainId")
                if served != self.chain.id:
                    raise RpcGarbage(
                        f"{endpoint.name} serves chain id {served}, but chain {self.chain.name} is "
                        f"configured as {self.chain.id}; fix its rpc_urls"
                    )
                subscription = await _call(socket, endpoint, 2, "eth_subscribe", ["newHeads"])
            if not isinstance(subscription, str):
                raise RpcGarbage(f"{endpoint.name}: eth_subscribe answered {subscription!r}, not an id")
            self._up(endpoint)
            log.info(
                "chain %s: new heads from %s",
                self.chain.name,
                endpoint.name,
                extra={"chain_id": self.chain.id},
            )
            self.wake.set()  # NOTE: catch up on whatever came while the socket was down
            try:
                async for message in socket:
                    self._notified(endpoint, subscription, message)
                    endpoint.failures = 0
            finally:
                self.subscribed = False
                metrics.HEAD_SUBSCRIPTION_UP.labels(chain=self.chain.name, endpoint=endpoint.label).set(0)

    def _notified(self, endpoint: HeadEndpoint, subscription: str, message: str | bytes) -> None:
        body = _json(endpoint, message)
        params = body.get("params") if body.get("method") == "eth_subscription" else None
        if not isinstance(params, dict) or params.get("subscription") != subscription:
            raise RpcGarbage(f"{endpoint.name}: a WebSocket message that is not our newHeads notification")
        raw = params.get("result")
        number = quantity(raw.get("number") if isinstance(raw, dict) else None, "newHeads block number")
        header = parse_header(raw, number)
        for stale in [n for n in self.recent if n > number or n <= number - KEEP_HEADERS]:
            del self.recent[stale]  # NOTE: a lower head than before means a reorg: forget above it
        self.recent[number] = header
        self.notifications += 1
        self.wake.set()

    def _choose(self) -> HeadEndpoint:
        now = self._clock()
        count = len(self.endpoints)
        for offset in range(count):
            endpoint = self.endpoints[(self._index + offset) % count]
            if endpoint.down_until <= now:
                self._index = self.endpoints.index(endpoint)
                return endpoint
        return min(self.endpoints, key=lambda e: e.down_until)

    def _up(self, endpoint: HeadEndpoint) -> None:
        self.subscribed = True
        self.recent.clear()
        metrics.HEAD_SUBSCRIPTION_UP.labels(chain=self.chain.name, endpoint=endpoint.label).set(1)

    def _failed(self, endpoint: HeadEndpoint, exc: BaseException, *, count: bool = True) -> None:
        """Back off from ``endpoint`` (counted against it unless ``count`` is False) and rotate."""
        self.subscribed = False
        garbage = isinstance(exc, RpcGarbage)
        first, limit = GARBAGE_BACKOFF if garbage else FAILURE_BACKOFF
        endpoint.failures += 1
        pause = min(first * 2 ** (endpoint.failures - 1), limit)
        endpoint.down_until = self._clock() + pause
        self._index = (self._index + 1) % len(self.endpoints)
        kind = "garbage" if garbage else "unavailable"
        if count:
            metrics.RPC_ERRORS.labels(chain=self.chain.name, endpoint=endpoint.label, kind=kind).inc()
        log.warning(
            "chain %s: new heads from %s failed (%s: %s); polling every %.3g s, subscribing again in %.3g s",
            self.chain.name,
            endpoint.name,
            type(exc).__name__,
            _reason(exc, endpoint),
            self.chain.poll_interval,
            pause,
            extra={"chain_id": self.chain.id},
        )


async def _call(
    socket: ClientConnection, endpoint: HeadEndpoint, request_id: int, method: str, params: list[Any]
) -> Any:
    """One JSON-RPC call over the socket before any notification can arrive (answers in order)."""
    await socket.send(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}))
    body = _json(endpoint, await socket.recv())
    if body.get("id") != request_id:
        raise RpcGarbage(f"{endpoint.name}: {method} answer is not a JSON-RPC response to this request")
    if "error" in body:
        error = body["error"] if isinstance(body["error"], dict) else {}
        raise RpcUnavailable(endpoint.name, f"{method} failed: {str(error.get('message', ''))[:200]}")
    if "result" not in body:
        raise RpcGarbage(f"{endpoint.name}: {method} answer has neither result nor error")
    return body["result"]


def _json(endpoint: HeadEndpoint, message: str | bytes) -> dict[str, Any]:
    try:
        body = json.loads(message)
    except ValueError:
        raise RpcGarbage(f"{endpoint.name}: malformed JSON on the WebSocket") from None
    if not isinstance(body, dict):
        raise RpcGarbage(f"{endpoint.name}: a WebSocket message that is not a JSON object")
    return body


def _reason(exc: BaseException, endpoint: HeadEndpoint) -> str:
    """The error without the URL (it may carry an API key): websockets puts it in some messages."""
    return str(exc).replace(endpoint.url, endpoint.name)
