"""Reading one chain: its RPC endpoints, the head, bridge logs and block headers.

``Endpoints`` (``indexer.endpoints``) is the failover seam: health, backoff,
rotation and rate-limit throttling; this module only reads through it.

``ChainReader.read_range`` returns a ``ChainRange``: everything one indexing step
needs from the chain, already decoded and checked for consistency (every event's
block hash matches the header fetched for it). Anything a well-behaved node could
not have answered raises ``RpcGarbage`` or ``MalformedLog``; a chain that changed
between two calls raises ``ChainMoved`` so the step is simply retried.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ferry.contracts import TOKENS_LOCKED_TOPIC, TRANSFER_RELEASED_TOPIC
from ferry.rpc import RpcClient, RpcError, RpcGarbage, block_timestamp, quantity
from ferry.settings import ChainConfig
from indexer.bloom import may_contain
from indexer.decode import BridgeEvent, LockEvent, ReleaseEvent, decode_log
from indexer.endpoints import Endpoints

log = logging.getLogger(__name__)

#: Headers fetched per JSON-RPC batch request.
HEADER_BATCH = 100
#: Logs decoded between two yields to the event loop: a range's commit (on the same loop) is not
#: kept waiting for its next statement while a big answer is decoded.
DECODE_SLICE = 128
#: Blocks beyond twice the confirmations whose headers are kept dense near the head.
DENSE_MARGIN = 16
#: Most blocks read by their hinted hashes in one step (more: the regular path by number).
HINTED_BLOCKS = 16


class EmptyLogsSuspect(RpcGarbage):
    """An empty ``eth_getLogs`` answer that a block's logs bloom contradicts."""


class ChainMoved(Exception):
    """The chain changed while a range was being read (a log's block is no longer the header's)."""


@dataclass(frozen=True, slots=True)
class BlockHeader:
    number: int
    hash: str
    parent_hash: str
    timestamp: datetime
    logs_bloom: str | None = None


@dataclass(frozen=True)
class ChainRange:
    """Blocks ``first..last`` of a chain as read at ``head``; empty when ``last < first``."""

    head: int
    first: int
    last: int
    locks: tuple[LockEvent, ...] = ()
    releases: tuple[ReleaseEvent, ...] = ()
    headers: Mapping[int, BlockHeader] = field(default_factory=dict)
    finalized: int | None = None

    @property
    def empty(self) -> bool:
        return self.last < self.first


class ChainReader:
    """Reads bridge events of one chain through ``Endpoints``."""

    def __init__(self, chain: ChainConfig, endpoints: Endpoints) -> None:
        self.chain = chain
        self.endpoints = endpoints
        self._bridges = sorted(d.bridge.lower() for d in chain.bridges.values())
        self._suspect_empty: set[tuple[int, int]] = set()
        #: Ranges read by hinted hashes (one round trip), for tests and debugging.
        self.hinted_reads = 0

    async def read_range(
        self, cursor: int, hints: Mapping[int, BlockHeader] | None = None, *, blocks: int | None = None
    ) -> ChainRange:
        """The next range after ``cursor`` (at most ``log_range`` blocks), or an empty one at the head.

        ``blocks`` bounds the range further (the backfill's near-head ranges, sized by the
        logs they hold so that memory does not grow with the chain's density).

        An empty range carries the header of the cursor's block, so the caller can see a
        reorg that replaced the indexed tip even while no new block arrives.

        ``hints`` are headers a ``newHeads`` subscription announced: when they cover the
        next few blocks, those are read by hash (``read_hinted``), one round trip.
        """
        rpc = await self.endpoints.client()
        if hints:
            hinted = await self.read_hinted(rpc, cursor, hints)
            if hinted is not None:
                return hinted
        head = await rpc.block_number()
        finalized = await self._finalized(rpc)
        span = self.chain.log_range if blocks is None else max(1, min(blocks, self.chain.log_range))
        first, last = cursor + 1, min(head, cursor + span)
        if last < first:
            tip = await self._headers(rpc, [cursor]) if 0 <= cursor <= head else {}
            return ChainRange(head, first, cursor, headers=tip, finalized=finalized)
        before = (await self._headers(rpc, [last]))[last]
        raw_logs = await rpc.get_logs(
            self._bridges, [[TOKENS_LOCKED_TOPIC, TRANSFER_RELEASED_TOPIC]], first, last
        )
        events = await self._decode_all(raw_logs, first, last)
        del raw_logs  # NOTE: as in read_between
        dense_from = max(first, head - self.dense_window + 1)
        numbers = {e.block_number for e in events} | {first, last} | set(range(dense_from, last + 1))
        headers = await self._headers(rpc, sorted(numbers))
        _check_same_blocks(events, headers)
        if not events:
            self._check_empty(rpc, first, last, headers.values())
        if headers[last].hash != before.hash:
            # NOTE: the last block's hash commits to every block below it: if it changed, the
            # logs may come from another branch (even blocks without events), so read again.
            raise ChainMoved(f"block {last} changed while its range was read")
        return ChainRange(
            head,
            first,
            last,
            tuple(e for e in events if isinstance(e, LockEvent)),
            tuple(e for e in events if isinstance(e, ReleaseEvent)),
            headers,
            finalized,
        )

    async def read_hinted(
        self, rpc: RpcClient, cursor: int, hints: Mapping[int, BlockHeader]
    ) -> ChainRange | None:
        """The blocks after ``cursor`` that ``hints`` cover, their logs read by block hash; None otherwise.

        The hinted headers must cover ``cursor+1 ..`` the newest hint (at most
        ``HINTED_BLOCKS``) and link by parent hash; the caller checks the first one
        against the indexed tip. One batch asks for each block's logs by
        ``blockHash`` (exactly that block's logs: no re-read needed) and for the last
        block by number, which must be the hinted one: its hash commits to every block
        below, so a hint the node read from does not hold as canonical (a stale branch, a
        block it has not seen yet) is never indexed. Then, as for an error, or an empty
        answer the block's bloom contradicts: None, and the caller reads by number.
        """
        head = max(hints)
        first, last = cursor + 1, min(head, cursor + self.chain.log_range)
        if last < first or last != head or last - first >= HINTED_BLOCKS:
            return None
        headers = {n: hints[n] for n in range(first, last + 1) if n in hints}
        if len(headers) != last - first + 1 or any(
            headers[n].parent_hash != headers[n - 1].hash for n in range(first + 1, last + 1)
        ):
            return None
        finalized = await self._finalized(rpc)
        topics = [[TOKENS_LOCKED_TOPIC, TRANSFER_RELEASED_TOPIC]]
        calls: list[tuple[str, list[Any]]] = [
            ("eth_getLogs", [{"address": self._bridges, "topics": topics, "blockHash": headers[n].hash}])
            for n in range(first, last + 1)
        ]
        try:
            *answers, canonical = await rpc.batch([*calls, ("eth_getBlockByNumber", [hex(last), False])])
        except RpcError:
            return None
        if canonical is None or parse_header(canonical, last).hash != headers[last].hash:
            return None
        events: list[BridgeEvent] = []
        for answer in answers:
            if not isinstance(answer, list):
                raise RpcGarbage(f"{rpc.name}: eth_getLogs answered a {type(answer).__name__}, not a list")
            events.extend(self._decode(raw, first, last) for raw in answer if not _removed(raw))
        _check_same_blocks(events, headers)
        if not events and any(self._may_hold_ours(h) for h in headers.values()):
            return None  # NOTE: a node that does not have the block yet may answer []: read by number
        self.hinted_reads += 1
        return ChainRange(
            head,
            first,
            last,
            tuple(e for e in events if isinstance(e, LockEvent)),
            tuple(e for e in events if isinstance(e, ReleaseEvent)),
            headers,
            finalized,
        )

    async def read_between(self, rpc: RpcClient, first: int, last: int, head: int) -> ChainRange:
        """Blocks ``first..last``, deep below the head (a backfill): headers only where needed."""
        raw_logs = await rpc.get_logs(
            self._bridges, [[TOKENS_LOCKED_TOPIC, TRANSFER_RELEASED_TOPIC]], first, last
        )
        events = await self._decode_all(raw_logs, first, last)
        del raw_logs  # NOTE: the parsed answer weighs more than its events: not kept while headers come
        headers = await self._headers(rpc, sorted({e.block_number for e in events} | {first, last}))
        _check_same_blocks(events, headers)
        if not events:
            self._check_empty(rpc, first, last, headers.values())
        locks = tuple(e for e in events if isinstance(e, LockEvent))
        releases = tuple(e for e in events if isinstance(e, ReleaseEvent))
        return ChainRange(head, first, last, locks, releases, headers)

    def _may_hold_ours(self, header: BlockHeader) -> bool:
        return may_contain(header.logs_bloom, self._bridges, (TOKENS_LOCKED_TOPIC, TRANSFER_RELEASED_TOPIC))

    def _check_empty(self, rpc: RpcClient, first: int, last: int, headers: Iterable[BlockHeader]) -> None:
        """An empty answer must agree with the blooms of the headers at hand (once; see indexer.bloom)."""
        if not any(self._may_hold_ours(h) for h in headers):
            return
        if (first, last) in self._suspect_empty:
            self._suspect_empty.discard((first, last))
            return  # NOTE: asked twice, empty twice: a bloom false positive, most likely
        self._suspect_empty.add((first, last))
        raise EmptyLogsSuspect(
            f"{rpc.name}: eth_getLogs found nothing in blocks {first}..{last}, but a block's logs bloom "
            "says the bridge may have logged there"
        )

    @property
    def dense_window(self) -> int:
        """Blocks below the head whose headers are all kept, so a reorg finds its exact ancestor."""
        return 2 * self.chain.confirmations + DENSE_MARGIN

    async def _finalized(self, rpc: RpcClient) -> int | None:
        if self.chain.finality != "finalized":
            return None
        block = await rpc.get_block("finalized")
        if block is None:
            raise RpcGarbage(
                f"{rpc.name} has no 'finalized' block; set finality: confirmations for this chain"
            )
        return quantity(block.get("number"), "finalized block number")

    async def header(self, rpc: RpcClient, number: int) -> BlockHeader:
        """One block header from ``rpc`` (RpcGarbage when the node does not have it)."""
        return (await self._headers(rpc, [number]))[number]

    async def _decode_all(self, raw_logs: list[Any], first: int, last: int) -> list[BridgeEvent]:
        """``raw_logs`` decoded, ``DECODE_SLICE`` at a time with a yield to the event loop between."""
        events: list[BridgeEvent] = []
        for start in range(0, len(raw_logs), DECODE_SLICE):
            if start:
                await asyncio.sleep(0)
            events += [
                self._decode(raw, first, last)
                for raw in raw_logs[start : start + DECODE_SLICE]
                if not _removed(raw)
            ]
        return events

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
        block_timestamp(answer.get("timestamp")),
        answer.get("logsBloom") if isinstance(answer.get("logsBloom"), str) else None,
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
    """True when the range does not build on the block the cursor points at.

    For a range, its first block's parent must be the cursor's block; for an empty
    range (at the head), the cursor's block must still be the node's block there.
    """
    if indexed_hash is None:
        return False
    if chain_range.empty:
        tip = chain_range.headers.get(chain_range.last)
        return tip is not None and tip.hash != indexed_hash.lower()
    return chain_range.headers[chain_range.first].parent_hash != indexed_hash.lower()
