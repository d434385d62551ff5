"""Backfill: from the cursor to just below the head, at the speed of the node.

Blocks deeper than the follower's dense window (``2 * confirmations + 16`` below
the head; with ``finality: finalized``, also at or below the finalized block) are
read by ``backfill`` instead of one step at a time:

- ranges are fetched concurrently (at most ``BACKFILL_CONCURRENCY`` in flight) and
  committed strictly in order, one transaction per range, through the follower's
  own commit (so the cursor guard, unique keys and history work as in a step);
  a crash or kill at any moment resumes from the committed cursor;
- every lock there is already final, so it is inserted CONFIRMED with its one
  history row, in multi-row statements;
- range sizes adapt: a range that fails with a "too many results" / range-limit
  error is split in halves (recursively); the next ranges shrink when answers are
  large (above ``TARGET_LOGS``) and grow again, up to ``log_range``, when small;
- empty answers are checked against the logs bloom (``ChainReader``);
- progress: the ``ferry_indexer_backfill_progress`` gauge, and an INFO line with
  the rate and ETA every ``PROGRESS_EVERY`` seconds (on stderr too with ``progress``).

Anything that goes wrong raises: the follower's loop classifies it, backs off,
rotates the endpoint where the RPC failed, and calls ``backfill`` again.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from typing import TYPE_CHECKING

from ferry import metrics
from ferry.rpc import RpcClient, RpcError
from indexer.chain import ChainRange, breaks_continuity
from indexer.endpoints import is_rate_limit

if TYPE_CHECKING:
    from indexer.follower import Follower
    from indexer.store import Cursor

log = logging.getLogger(__name__)

BACKFILL_CONCURRENCY = 4
#: Logs per eth_getLogs answer the range sizing aims at.
TARGET_LOGS = 5_000
#: Logs fetched or awaiting their commit at once, at most (about; it bounds the memory).
LOGS_IN_FLIGHT = 20_000
PROGRESS_EVERY = 5.0
#: Blocks in the first backfill range (then doubled while answers stay small).
FIRST_RANGE = 16
_RANGE_LIMIT_WORDS = ("too many", "more than", "range", "limit", "exceed", "too large", "response size")


def is_range_limit(exc: BaseException) -> bool:
    """An ``eth_getLogs`` error that asks for a smaller block range (not a rate limit)."""
    if not isinstance(exc, RpcError) or is_rate_limit(exc):
        return False
    text = exc.message.lower()
    return any(word in text for word in _RANGE_LIMIT_WORDS)


class RangeSizer:
    """Blocks per ``eth_getLogs``: halves after a big answer or a range error, doubles after small ones.

    It also bounds what is in flight (memory): one range until the first answer shows
    how dense the chain is, then up to ``BACKFILL_CONCURRENCY`` ranges, fewer when
    their expected logs would pass ``LOGS_IN_FLIGHT``.
    """

    def __init__(self, limit: int) -> None:
        # NOTE: start small and double: a few small answers cost less than one huge one.
        self.limit, self.size = limit, min(limit, FIRST_RANGE)
        self.logs_per_block: float | None = None

    def observe(self, blocks: int, logs: int) -> None:
        self.logs_per_block = logs / max(blocks, 1)
        if logs > 2 * TARGET_LOGS:
            self.size = max(1, min(self.size, blocks // 2))
        elif logs < TARGET_LOGS // 4 and blocks >= self.size:
            self.size = min(self.limit, self.size * 2)

    def may_start(self, in_flight: int) -> bool:
        """Whether another range may be fetched while ``in_flight`` ranges are fetched or awaited."""
        if self.logs_per_block is None:
            return in_flight == 0
        expected = max(self.logs_per_block * self.size, 1.0)
        return in_flight < max(1, min(BACKFILL_CONCURRENCY, int(LOGS_IN_FLIGHT // expected)))

    def shrink(self, blocks: int) -> None:
        self.size = max(1, min(self.size, blocks // 2))


async def backfill(follower: Follower, *, progress: bool = False) -> int:
    """Commit every range up to the backfill target, then the final blocks above it; returns the locks."""
    rpc = await follower.endpoints.client()
    head = await rpc.block_number()
    target = await _target(follower, rpc, head)
    cursor = await follower.load_cursor()
    final = head - follower.chain.confirmations + 1
    if cursor.block >= head or (follower.chain.finality == "confirmations" and cursor.block >= final):
        metrics.BACKFILL_PROGRESS.labels(chain=follower.chain.name).set(1)  # NOTE: nothing to do: done
        return 0  # NOTE: no final block above the cursor: nothing for the backfill
    meter = Progress(follower.chain.name, cursor.block, head, progress)
    locks = await _deep(follower, rpc, cursor, target, head, meter) if cursor.block < target else 0
    locks += await _final_near_head(follower, meter, locks)
    meter.done(locks)
    return locks


async def _deep(
    follower: Follower, rpc: RpcClient, cursor: Cursor, target: int, head: int, meter: Progress
) -> int:
    """Blocks up to ``target``: concurrent fetches (bounded by ranges and logs in flight), ordered commits."""
    sizer = RangeSizer(follower.chain.log_range)
    in_flight: deque[tuple[int, asyncio.Task[ChainRange]]] = deque()
    next_first, locks = cursor.block + 1, 0
    try:
        while next_first <= target or in_flight:
            while sizer.may_start(len(in_flight)) and next_first <= target:
                last = min(target, next_first + sizer.size - 1)
                task = asyncio.create_task(_fetch(follower, rpc, sizer, next_first, last, head))
                in_flight.append((last - next_first + 1, task))
                next_first = last + 1
            chain_range = await in_flight.popleft()[1]
            if breaks_continuity(cursor.hash, chain_range):
                return locks  # NOTE: the chain moved under us: the regular steps handle it
            result = await follower.commit(cursor.block, chain_range, backfill=True)
            follower.observe(result, chain_range)
            del chain_range  # NOTE: free the range's events before the next fetch starts (memory)
            follower.progressed(result)
            cursor = await follower.load_cursor()
            locks += result.new_transfers
            meter.update(cursor.block, locks)
    finally:
        for _, task in in_flight:
            task.cancel()
        await asyncio.gather(*(task for _, task in in_flight), return_exceptions=True)
    return locks


async def _final_near_head(follower: Follower, meter: Progress, locks: int) -> int:
    """The dense window's ranges that hold final locks, read like a step, their final locks CONFIRMED.

    A regular step would insert them PENDING and move each one to CONFIRMED in the same
    transaction (one UPDATE per transfer); a range read here is read exactly as a step
    reads it (dense headers, the re-read of its last header) and committed the same way,
    but its locks at or below the finality line go in CONFIRMED at once, with their one
    history row, like the deep ranges'. Stops at the head, at a reorg (left to the steps),
    or when the next range holds no final block.
    """
    new = 0
    while True:
        cursor = await follower.load_cursor()
        chain_range = await follower.reader.read_range(cursor.block)
        final = chain_range.head - follower.chain.confirmations + 1
        if chain_range.finalized is not None:
            final = chain_range.finalized
        if chain_range.empty or chain_range.first > final or breaks_continuity(cursor.hash, chain_range):
            return new
        result = await follower.commit(cursor.block, chain_range, backfill=True)
        follower.observe(result, chain_range)
        follower.progressed(result)
        new += result.new_transfers
        meter.update(chain_range.last, locks + new)


async def _target(follower: Follower, rpc: RpcClient, head: int) -> int:
    target = head - follower.reader.dense_window
    if follower.chain.finality == "finalized":
        block = await rpc.get_block("finalized")
        finalized = int(str(block["number"]), 16) if block else -1
        target = min(target, finalized)
    return target


async def _fetch(
    follower: Follower, rpc: RpcClient, sizer: RangeSizer, first: int, last: int, head: int
) -> ChainRange:
    """One range; split in halves (recursively) when the node refuses it as too large."""
    try:
        chain_range = await follower.reader.read_between(rpc, first, last, head)
    except RpcError as exc:
        if not is_range_limit(exc) or first == last:
            raise
        sizer.shrink(last - first + 1)
        middle = (first + last) // 2
        low = await _fetch(follower, rpc, sizer, first, middle, head)
        high = await _fetch(follower, rpc, sizer, middle + 1, last, head)
        return ChainRange(
            head,
            first,
            last,
            low.locks + high.locks,
            low.releases + high.releases,
            {**low.headers, **high.headers},
        )
    sizer.observe(last - first + 1, len(chain_range.locks) + len(chain_range.releases))
    return chain_range


class Progress:
    """The backfill's progress metric and its INFO/stderr line with rate and ETA."""

    def __init__(self, chain: str, start: int, target: int, echo: bool) -> None:
        self.chain, self.start, self.target, self.echo = chain, start, target, echo
        self.started = self.shown = time.monotonic()
        self.gauge = metrics.BACKFILL_PROGRESS.labels(chain=chain)
        self.gauge.set(0)

    def update(self, block: int, locks: int) -> None:
        done = (block - self.start) / max(self.target - self.start, 1)
        self.gauge.set(done)
        now = time.monotonic()
        if now - self.shown < PROGRESS_EVERY and not (self.echo and now - self.shown >= 1):
            return
        self.shown = now
        elapsed = now - self.started
        eta = elapsed * (1 - done) / done if done > 0 else float("inf")
        line = (
            f"backfill {self.chain}: {done:6.1%} (block {block} of {self.target}), {locks} locks, "
            f"{locks / elapsed:,.0f} locks/s, ETA {eta:,.0f} s"
        )
        log.info(line)
        if self.echo:
            print(line, file=sys.stderr, flush=True)

    def done(self, locks: int) -> None:
        self.gauge.set(1)
        elapsed = time.monotonic() - self.started
        log.info("backfill %s: done, %d locks in %.1f s", self.chain, locks, elapsed)
