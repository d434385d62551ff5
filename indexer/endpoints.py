"""A chain's RPC endpoints: health, backoff, rotation and rate-limit throttling.

The follower asks ``client()`` for an endpoint before each step and reports how
the step went (``succeeded`` / ``failed``). Rules:

- An endpoint is checked once for the configured chain id; a wrong one is garbage.
- Garbage (malformed JSON, wrong chain id, a malformed log, blocks that do not
  link, a node that disagrees with another or lags behind the indexed block) and
  failures (timeouts, connection errors, HTTP errors, JSON-RPC errors) take the
  endpoint out of rotation for a backoff that doubles with each consecutive
  failure (garbage starts longer), and the next endpoint in rotation is used.
  When every endpoint is out, the one that comes back first is tried.
- A rate limit (HTTP 429, or a provider's "rate limit" error) is not a failure:
  the endpoint stays, and every call on it first waits a throttle delay that
  doubles on each limit and halves on each success.

Every entry of ``rpc_urls`` is an endpoint here, ``http(s)://`` and ``ws(s)://``
alike (``ferry.rpc`` speaks JSON-RPC over either): a chain may list only WebSocket
endpoints. A WebSocket endpoint also carries the ``newHeads`` subscription
(``indexer.heads``, its own connection).

Metrics are labelled by chain and endpoint *index* (the position in ``rpc_urls``),
never by URL: URLs often carry API keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ferry import metrics
from ferry.rpc import RpcClient, RpcError, RpcGarbage, RpcUnavailable
from ferry.settings import ChainConfig, ConfigError
from indexer.decode import MalformedLog

log = logging.getLogger(__name__)

FAILURE_BACKOFF = (1.0, 60.0)
GARBAGE_BACKOFF = (10.0, 600.0)
THROTTLE = (0.25, 10.0)
_RATE_LIMIT_WORDS = ("rate limit", "too many requests", "request limit", "exceeded the rate", "throttl")


def is_rate_limit(exc: BaseException) -> bool:
    """HTTP 429, or a JSON-RPC error whose message says the provider is rate limiting."""
    if isinstance(exc, RpcUnavailable):
        return exc.rate_limited
    if isinstance(exc, RpcError):
        text = exc.message.lower()
        return exc.code == 429 or any(word in text for word in _RATE_LIMIT_WORDS)
    return False


@dataclass
class Endpoint:
    """One endpoint's client and health; ``label`` is its index in ``rpc_urls`` (for metrics)."""

    index: int
    client: RpcClient
    label: str = ""
    verified: bool = False
    failures: int = 0
    down_until: float = 0.0
    throttle: float = 0.0


class Endpoints:
    """The RPC endpoints of one chain, used one at a time, rotated away from on failure."""

    def __init__(
        self,
        chain: ChainConfig,
        clients: Sequence[RpcClient] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.chain = chain
        built = list(enumerate(clients)) if clients is not None else _clients(chain)
        self._endpoints = [Endpoint(i, rpc, str(position)) for i, (position, rpc) in enumerate(built)]
        self._clock = clock
        self._index = 0
        for endpoint in self._endpoints:
            endpoint.client.observer = self._observer(endpoint.label)
            metrics.ENDPOINT_UP.labels(chain=chain.name, endpoint=endpoint.label).set(1)

    @property
    def current(self) -> Endpoint:
        return self._endpoints[self._index]

    @property
    def current_name(self) -> str:
        """The current endpoint as ``scheme://host:port`` (never the full URL)."""
        return self.current.client.name

    async def client(self) -> RpcClient:
        """The endpoint to use now (checked for the chain id once; throttled when rate limited)."""
        self._index = self._choose()
        endpoint = self.current
        if not endpoint.verified:
            served = await endpoint.client.chain_id()
            if served != self.chain.id:
                raise RpcGarbage(
                    f"{endpoint.client.name} serves chain id {served}, but chain {self.chain.name} is "
                    f"configured as {self.chain.id}; fix its rpc_urls"
                )
            endpoint.verified = True
        if endpoint.throttle:
            await asyncio.sleep(endpoint.throttle)
        return endpoint.client

    def succeeded(self) -> None:
        endpoint = self.current
        endpoint.failures = 0
        endpoint.throttle = endpoint.throttle / 2 if endpoint.throttle > THROTTLE[0] else 0.0
        self._set_up(endpoint, True)

    def failed(self, exc: BaseException) -> str:
        """Record a failed step on the current endpoint; returns the kind (for logs and metrics)."""
        endpoint = self.current
        if is_rate_limit(exc):
            endpoint.throttle = min(max(endpoint.throttle * 2, THROTTLE[0]), THROTTLE[1])
            kind = "rate_limited"
        else:
            garbage = isinstance(exc, RpcGarbage | MalformedLog)
            first, limit = GARBAGE_BACKOFF if garbage else FAILURE_BACKOFF
            endpoint.failures += 1
            endpoint.down_until = self._clock() + min(first * 2 ** (endpoint.failures - 1), limit)
            if garbage:
                endpoint.verified = False  # NOTE: check the chain id again when it comes back
            self._set_up(endpoint, False)
            self.rotate()
            kind = "garbage" if garbage else "unavailable"
        metrics.RPC_ERRORS.labels(chain=self.chain.name, endpoint=endpoint.label, kind=kind).inc()
        return kind

    def rotate(self) -> None:
        self._index = (self._index + 1) % len(self._endpoints)

    async def witnesses(self) -> list[RpcClient]:
        """The other endpoints in rotation that serve this chain, for a second opinion."""
        others = []
        now = self._clock()
        for offset in range(1, len(self._endpoints)):
            endpoint = self._endpoints[(self._index + offset) % len(self._endpoints)]
            if endpoint.down_until > now:
                continue
            try:
                if not endpoint.verified and await endpoint.client.chain_id() != self.chain.id:
                    continue
            except (RpcError, RpcUnavailable, RpcGarbage):
                continue
            endpoint.verified = True
            others.append(endpoint.client)
        return others

    async def close(self) -> None:
        for endpoint in self._endpoints:
            await endpoint.client.close()

    def _choose(self) -> int:
        """The current endpoint if in rotation, else the next one that is, else the first back."""
        now = self._clock()
        count = len(self._endpoints)
        for offset in range(count):
            endpoint = self._endpoints[(self._index + offset) % count]
            if endpoint.down_until <= now:
                return endpoint.index
        return min(self._endpoints, key=lambda e: e.down_until).index

    def _set_up(self, endpoint: Endpoint, up: bool) -> None:
        metrics.ENDPOINT_UP.labels(chain=self.chain.name, endpoint=endpoint.label).set(1 if up else 0)

    def _observer(self, label: str) -> Callable[[str, float, BaseException | None], None]:
        requests = metrics.RPC_REQUESTS.labels(chain=self.chain.name, endpoint=label)
        latency = metrics.RPC_LATENCY.labels(chain=self.chain.name, endpoint=label)

        def observe(_method: str, seconds: float, _error: BaseException | None) -> None:
            requests.inc()
            latency.observe(seconds)

        return observe


def _clients(chain: ChainConfig) -> list[tuple[int, RpcClient]]:
    """One client per ``rpc_urls`` entry, with its position (HTTP or WebSocket: ``ferry.rpc``)."""
    if not chain.rpc_urls:  # NOTE: the chains file's validation refuses this already
        raise ConfigError(f"chain {chain.name} lists no rpc_urls: give at least one endpoint")
    return [(i, RpcClient(url)) for i, url in enumerate(chain.rpc_urls)]
