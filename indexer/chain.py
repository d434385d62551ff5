"""Reading one chain: its RPC endpoints, the head, bridge logs and block headers.

``Endpoints`` is the failover seam: it hands out the current endpoint (checking
once that it serves the configured chain id) and rotates to the next one when
the follower reports a failure. Health scoring or quorum reads can replace the
rotation later without touching the follower.

``ChainReader.read_range`` returns a ``ChainRange``: everything one indexing step
needs from the chain, already decoded and checked for consistency (every event's
block hash matches the header fetched for it). Anything a well-behaved node could
not have answered raises ``RpcGarbage`` or ``MalformedLog``; a chain that changed
between two calls raises ``ChainMoved`` so the step is simply retried.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ferry.contracts import TOKENS_LOCKED_TOPIC, TRANSFER_RELEASED_TOPIC
from ferry.rpc import RpcClient, RpcGarbage, quantity
from ferry.settings import ChainConfig, ConfigError
from indexer.decode import BridgeEvent, LockEvent, ReleaseEvent, decode_log

log = logging.getLogger(__name__)

#: Headers fetched per JSON-RPC batch request.
HEADER_BATCH = 100


class ChainMoved(Exception):
    """The chain changed while a range was being read (a log's block is no longer the header's)."""


@dataclass(frozen=True, slots=True)
class BlockHeader:
    number: int
    hash: str
    parent_hash: str
    timestamp: datetime


@dataclass(frozen=True)
class ChainRange:
    """Blocks ``first..last`` of a chain as read at ``head``; empty when ``last < first``."""

    head: int
    first: int
    last: int
    locks: tuple[LockEvent, ...] = ()
    releases: tuple[ReleaseEvent, ...] = ()
    headers: Mapping[int, BlockHeader] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.last < self.first


class Endpoints:
    """The RPC endpoints of one chain, used one at a time, rotated on failure."""

    def __init__(self, chain: ChainConfig, clients: Sequence[RpcClient] | None = None) -> None:
        self.chain = chain
        self._clients = list(clients) if clients is not None else _http_clients(chain)
        self._index = 0
        self._verified: set[int] = set()

    @property
    def current_name(self) -> str:
        """The current endpoint as ``scheme://host:port`` (never the full URL)."""
        return self._clients[self._index].name

    async def client(self) -> RpcClient:
        """The current endpoint, after checking once that it serves this chain."""
        rpc = self._clients[self._index]
        if self._index not in self._verified:
            served = await rpc.chain_id()
            if served != self.chain.id:
                raise RpcGarbage(
                    f"{rpc.name} serves chain id {served}, but chain {self.chain.name} is configured "
                    f"as {self.chain.id}; fix its rpc_urls"
                )
            self._verified.add(self._index)
        return rpc

    def rotate(self) -> None:
        self._index = (self._index + 1) % len(self._clients)

    async def close(self) -> None:
        for rpc in self._clients:
            await rpc.close()


def _http_clients(chain: ChainConfig) -> list[RpcClient]:
    urls = [url for url in chain.rpc_urls if url.startswith(("http://", "https://"))]
    if not urls:
        raise ConfigError(
            f"chain {chain.name} lists only WebSocket rpc_urls; the indexer needs at least one "
            "http:// or https:// endpoint"
        )
    if len(urls) < len(chain.rpc_urls):
        log.warning("chain %s: WebSocket rpc_urls are not used by the indexer yet", chain.name)
    return [RpcClient(url) for url in urls]


class ChainReader:
    """Reads bridge events of one chain through ``Endpoints``."""

    def __init__(self, chain: ChainConfig, endpoints: Endpoints) -> None:
        self.chain = chain
        self.endpoints = endpoints
        self._bridges = sorted(d.bridge.lower() for d in chain.bridges.values())

    async def read_range(self, cursor: int) -> ChainRange:
        """The next range after ``cursor`` (at most ``log_range`` blocks), or an empty one at the head."""
        rpc = await self.endpoints.client()
        head = await rpc.block_number()
        first, last = cursor + 1, min(head, cursor + self.chain.log_range)
        if last < first:
            return ChainRange(head, first, cursor)
        raw_logs = await rpc.get_logs(
            self._bridges, [[TOKENS_LOCKED_TOPIC, TRANSFER_RELEASED_TOPIC]], first, last
        )
        events = [self._decode(raw, first, last) for raw in raw_logs if not _removed(raw)]
        numbers = {e.block_number for e in events} | {first, last}
        headers = await self._headers(rpc, sorted(numbers))
        _check_same_blocks(events, headers)
        return ChainRange(
            head,
            first,
            last,
            tuple(e for e in events if isinstance(e, LockEvent)),
            tuple(e for e in events if isinstance(e, ReleaseEvent)),
            headers,
        )

    def _decode(self, raw: Any, first: int, last: int) -> BridgeEvent:
        if not isinstance(raw, dict):
            raise RpcGarbage(f"eth_getLogs answered a {type(raw).__name__} among the logs")
        event = decode_log(self.chain.id, raw)
        if event is None or event.bridge not in self._bridges:
            raise RpcGarbage("eth_getLogs answered a log that does not match the filter")
        if not first <= event.block_number <= last:
            raise RpcGarbage(f"eth_getLogs answered a log from block {event.block_number}, outside the range")
        return event

    async def _headers(self, rpc: RpcClient, numbers: Sequence[int]) -> dict[int, BlockHeader]:
        headers: dict[int, BlockHeader] = {}
        for start in range(0, len(numbers), HEADER_BATCH):
            chunk = numbers[start : start + HEADER_BATCH]
            answers = await rpc.batch([("eth_getBlockByNumber", [hex(n), False]) for n in chunk])
            for number, answer in zip(chunk, answers, strict=True):
                headers[number] = parse_header(answer, number)
        return headers


def _removed(raw: Any) -> bool:
    return isinstance(raw, dict) and raw.get("removed") is True


def parse_header(answer: Any, number: int) -> BlockHeader:
    """A header from an ``eth_getBlockByNumber`` answer for block ``number``; RpcGarbage otherwise."""
    if answer is None:
        raise RpcGarbage(f"the node has no block {number} although it reported a head past it")
    if not isinstance(answer, dict):
        raise RpcGarbage(f"eth_getBlockByNumber({number}) answered a {type(answer).__name__}")
    if quantity(answer.get("number"), "block number") != number:
        raise RpcGarbage(f"eth_getBlockByNumber({number}) answered another block")
    return BlockHeader(
        number,
        _hash(answer.get("hash"), "hash"),
        _hash(answer.get("parentHash"), "parentHash"),
        datetime.fromtimestamp(quantity(answer.get("timestamp"), "block timestamp"), UTC),
    )


def _hash(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) != 66 or not value.startswith("0x"):
        raise RpcGarbage(f"block {what} is not a 32-byte 0x hex string")
    return value.lower()


def _check_same_blocks(events: Iterable[BridgeEvent], headers: Mapping[int, BlockHeader]) -> None:
    for event in events:
        if headers[event.block_number].hash != event.block_hash:
            raise ChainMoved(f"block {event.block_number} changed while its logs were read")


def breaks_continuity(indexed_hash: str | None, chain_range: ChainRange) -> bool:
    """True when the range's first block does not build on the block the cursor points at."""
    if indexed_hash is None or chain_range.empty:
        return False
    return chain_range.headers[chain_range.first].parent_hash != indexed_hash.lower()
