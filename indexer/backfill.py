"""Backfill: from the cursor to just below the head, at the speed of the node.

Blocks deeper than the follower's dense window (``2 * confirmations + 16`` below
the head; with ``finality: finalized``, also at or below the finalized block) are
read by ``backfill`` instead of one step at a time:

- ranges are fetched concurrently and committed strictly in order, one transaction
  per range, through the follower's own commit (so the cursor guard, unique keys
  and history work as in a step); a crash or kill at any moment resumes from the
  committed cursor;
- what is in flight is bounded (memory), the same way in both phases below: one
  range until an answer with logs shows the chain's density, then at most
  ``BACKFILL_CONCURRENCY`` ranges holding about ``LOGS_IN_FLIGHT`` logs in all,
  counting the ranges being fetched (their expected logs) and those being
  committed (their actual logs); a fetch waits for a commit to end rather than
  pass the budget (only a lone range may: one block can hold more);
- two range transactions overlap (``Commits``): the next range's blocks and locks
  are written while the previous one commits; its cursor update waits for that
  commit (``store.CURSOR_WAIT``), so commits stay in order and each stays whole;
- every lock there is already final, so it is inserted CONFIRMED with its one
  history row; a range of many locks is COPYed into ``transfers`` (``store``);
- then the dense window itself: ranges read exactly like a step's
  (``ChainReader.read_range``) while they hold final blocks, committed through the
  same ``Commits`` under the same budget (the next range is read while the previous
  ones commit), so their final locks go in CONFIRMED at once instead of PENDING and
  one UPDATE each; the last ``confirmations - 1`` blocks are left to the steps;
- range sizes adapt: a range that fails with a "too many results" / range-limit
  error is split in halves (recursively); the next ranges shrink to about
  ``TARGET_LOGS`` when answers are large (above ``2 * TARGET_LOGS``) and grow again,
  up to ``log_range``, when small;
- empty answers are checked against the logs bloom (``ChainReader``);
- progress: the ``ferry_indexer_backfill_progress`` gauge, and an INFO line with
  the rate and ETA every ``PROGRESS_EVERY`` seconds (on stderr too with ``progress``).

Anything that goes wrong raises: the follower's loop classifies it, backs off,
rotates the endpoint where the RPC failed, and calls ``backfill`` again.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import time
from collections import deque
from typing import TYPE_CHECKING

from ferry import metrics
from ferry.rpc import RpcClient, RpcError
from indexer import store
from indexer.chain import ChainRange, breaks_continuity
from indexer.endpoints import is_rate_limit

if TYPE_CHECKING:
    from indexer.follower import Follower, StepResult
    from indexer.store import Cursor

log = logging.getLogger(__name__)

#: Range transactions open at once: the next range's writes overlap the previous one's commit.
COMMITS_IN_FLIGHT = 2
#: Ranges fetched or being committed at once, at most.
BACKFILL_CONCURRENCY = 4
#: Logs fetched or being committed at once, at most (about; it bounds the memory, in both phases).
LOGS_IN_FLIGHT = 8_000
#: Logs per eth_getLogs answer the range sizing aims at: a few ranges fit the budget.
TARGET_LOGS = LOGS_IN_FLIGHT // 4
#: Seconds a range's transaction waits for the range before it to commit (``store.advance_cursor``).
CURSOR_WAIT = 60.0
PROGRESS_EVERY = 5.0
#: Blocks in the first backfill range (then doubled while answers stay small): one, so that the
#: first answer, read before the chain's density is known, is as small as it can be.
FIRST_RANGE = 1
_RANGE_LIMIT_WORDS = ("too many", "more than", "range", "limit", "exceed", "too large", "response size")


def is_range_limit(exc: BaseException) -> bool:
    """An ``eth_getLogs`` error that asks for a smaller block range (not a rate limit)."""
    if not isinstance(exc, RpcError) or is_rate_limit(exc):
        return False
    text = exc.message.lower()
    return any(word in text for word in _RANGE_LIMIT_WORDS)


class RangeSizer:
    """Blocks per ``eth_getLogs``: shrinks after a big answer or a range error, doubles after small ones.

    It also bounds what is in flight (memory): one range until an answer with logs
    shows how dense the chain is, then up to ``BACKFILL_CONCURRENCY`` ranges, fewer
    when the logs held plus the next range's expected logs would pass ``LOGS_IN_FLIGHT``.
    """

    def __init__(self, limit: int) -> None:
        # NOTE: start small and double: a few small answers cost less than one huge one.
        self.limit, self.size = limit, min(limit, FIRST_RANGE)
        self.logs_per_block: float | None = None

    def observe(self, blocks: int, logs: int) -> None:
        density = logs / max(blocks, 1)
        if density > 0 or self.logs_per_block is not None:
            # NOTE: unknown until a range holds logs (empty ranges say nothing about the next ones),
            # and it forgets a dense stretch by halves: a few fetches started on the word of an empty
            # range could each bring a dense range, all at once, past the budget.
            self.logs_per_block = max(density, (self.logs_per_block or 0.0) / 2)
        if logs > 2 * TARGET_LOGS:
            self.size = max(1, min(self.size, blocks * TARGET_LOGS // logs))
        elif logs < TARGET_LOGS // 4 and blocks >= self.size:
            self.size = min(self.limit, self.size * 2)

    def expected(self) -> int:
        """The logs the next range will likely hold (0 while the density is unknown)."""
        return 0 if self.logs_per_block is None else round(self.logs_per_block * self.size)

    def may_start(self, ranges: int, held: int) -> bool:
        """Whether another range may be fetched while ``ranges`` ranges holding ``held`` logs are out."""
        if ranges == 0:
            return True
        if self.logs_per_block is None or ranges >= BACKFILL_CONCURRENCY:
            return False
        return held + self.expected() <= LOGS_IN_FLIGHT

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
    sizer = RangeSizer(follower.chain.log_range)
    locks = await _deep(follower, rpc, sizer, cursor, target, head, meter) if cursor.block < target else 0
    locks += await _final_near_head(follower, sizer, meter, locks)
    meter.done(locks)
    return locks


async def _deep(
    follower: Follower,
    rpc: RpcClient,
    sizer: RangeSizer,
    cursor: Cursor,
    target: int,
    head: int,
    meter: Progress,
) -> int:
    """Blocks up to ``target``: concurrent fetches, and two commits overlapping (``Commits``)."""
    fetching: deque[tuple[asyncio.Task[ChainRange], int]] = deque()
    commits = Commits(follower, cursor, meter)
    next_first = cursor.block + 1
    try:
        while next_first <= target or fetching:
            while next_first <= target and sizer.may_start(
                len(fetching) + len(commits.running), commits.held + sum(e for _, e in fetching)
            ):
                last = min(target, next_first + sizer.size - 1)
                task = asyncio.create_task(_fetch(follower, rpc, sizer, next_first, last, head))
                fetching.append((task, sizer.expected()))
                next_first = last + 1
            if not fetching:
                await commits.next()  # NOTE: the budget is held by commits: one must end first
                continue
            chain_range = await fetching.popleft()[0]
            if not await commits.start(chain_range):
                break  # NOTE: the chain moved under us: the regular steps handle it
            del chain_range
        await commits.finish()
    finally:
        for task, _ in fetching:
            task.cancel()
        await asyncio.gather(*(task for task, _ in fetching), return_exceptions=True)
        await commits.abandon()
    return commits.locks


class Commits:
    """Commits ranges in order, the next one's writes overlapping the previous one's commit.

    Range N+1's transaction starts (blocks, the COPY of its locks) while range N's is
    still running, so PostgreSQL works on two ranges at once. Order and atomicity are
    those of one range at a time: N+1's cursor update names N's last block as the
    expected cursor, so it waits on N's row lock and fails (``CursorMoved``, rolled
    back) unless N committed; its history rows come after N's (the history lock is
    taken after the cursor update). At most ``COMMITS_IN_FLIGHT`` transactions at once;
    ``held`` is the logs their ranges hold (the memory budget counts them).
    """

    def __init__(self, follower: Follower, cursor: Cursor, meter: Progress, locks: int = 0) -> None:
        self.follower, self.meter = follower, meter
        self.expected, self.tip_hash = cursor.block, cursor.hash
        self.running: deque[tuple[asyncio.Task[StepResult], ChainRange]] = deque()
        self.held = 0
        self.locks = locks

    async def start(self, chain_range: ChainRange) -> bool:
        """Start committing the range after the last one; False (nothing started) if it does not link."""
        if breaks_continuity(self.tip_hash, chain_range):
            await self.finish()
            return False
        while len(self.running) >= COMMITS_IN_FLIGHT:
            await self.next()
        commit = self.follower.commit(self.expected, chain_range, backfill=True)
        context = contextvars.copy_context()
        context.run(store.CURSOR_WAIT.set, CURSOR_WAIT)  # NOTE: this commit's task only
        self.running.append((asyncio.create_task(commit, context=context), chain_range))
        self.held += _logs(chain_range)
        self.expected = chain_range.last
        if not chain_range.empty:
            self.tip_hash = chain_range.headers[chain_range.last].hash
        return True

    async def finish(self) -> None:
        while self.running:
            await self.next()

    async def next(self) -> None:
        """Wait for the oldest running commit (there must be one)."""
        task, chain_range = self.running.popleft()
        try:
            result = await task
        except BaseException:
            for later, _ in self.running:  # NOTE: they wait for this range's cursor: it will not come
                later.cancel()
            raise
        finally:
            self.held -= _logs(chain_range)
        self.follower.observe(result, chain_range)
        self.follower.progressed(result)
        self.locks += result.new_transfers
        self.meter.update(result.indexed_block, self.locks)

    async def abandon(self) -> None:
        """After a failure: let running commits end (each commits or rolls back whole); first error wins."""
        tasks = [task for task, _ in self.running]
        self.running.clear()
        self.held = 0
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors and not isinstance(errors[0], asyncio.CancelledError):
            log.debug("backfill: a commit in flight ended with %r", errors[0])


def _logs(chain_range: ChainRange) -> int:
    return len(chain_range.locks) + len(chain_range.releases)


async def _final_near_head(follower: Follower, sizer: RangeSizer, meter: Progress, locks: int) -> int:
    """The dense window's ranges that hold final locks, read like a step, their final locks CONFIRMED.

    A regular step would insert them PENDING and move each one to CONFIRMED in the same
    transaction (one UPDATE per transfer); a range read here is read exactly as a step
    reads it (dense headers, the re-read of its last header), but its locks at or below
    the finality line go in CONFIRMED at once, with their one history row, like the deep
    ranges'. Stops at the head, at a reorg (left to the steps), or when the next range
    holds no final block. Ranges are as long as ``sizer`` says (the deep ranges' size, by
    the logs they held) and are committed through ``Commits`` under the same budget: the
    next range is read while the ones before commit, and the logs held stay within
    ``LOGS_IN_FLIGHT`` as in the deep phase. Returns the locks of this phase.
    """
    commits = Commits(follower, await follower.load_cursor(), meter, locks)
    try:
        while True:
            if not sizer.may_start(len(commits.running), commits.held):
                await commits.next()
                continue
            try:
                chain_range = await follower.reader.read_range(commits.expected, blocks=sizer.size)
            except RpcError as exc:
                if not is_range_limit(exc) or sizer.size == 1:
                    raise
                sizer.shrink(sizer.size)
                continue
            if not chain_range.empty:
                sizer.observe(chain_range.last - chain_range.first + 1, _logs(chain_range))
            final = chain_range.head - follower.chain.confirmations + 1
            if chain_range.finalized is not None:
                final = chain_range.finalized
            if chain_range.empty or chain_range.first > final or not await commits.start(chain_range):
                break
            del chain_range
        await commits.finish()
    finally:
        await commits.abandon()
    return commits.locks - locks


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
