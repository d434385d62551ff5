"""One chain's follower: read the next range of blocks, commit it in one transaction.

Each ``step`` is one iteration, easy to drive from tests:

1. load the cursor (``chains.indexed_block``) from the database: the database,
   not this object, holds the state, so a restarted or second follower resumes
   (after its own commit a step keeps the cursor it wrote and skips that query:
   the commit's guard below catches anyone else moving it, and any failure,
   rollback or backfill drops the kept cursor);
2. read ``cursor+1 .. min(head, cursor+log_range)`` from the chain
   (``ChainReader``): bridge logs, the headers of blocks holding them and of the
   range's first and last block;
3. in ONE transaction: blocks, new transfers (PENDING), releases seen, release
   columns, then the confirmation passes (which run even when nothing new was
   read), the cursor (guarded: it must still be where step 1 found it), and last
   the history and NOTIFY through ``ferry.transitions``.

``run`` loops over ``step`` and keeps going through failures: RPC trouble (an
error, an unreachable node, garbage, a malformed log, a lagging node) rotates to
the next endpoint with backoff; database trouble pauses and retries.

Between steps at the head, ``run`` waits for a new head: from the chain's
WebSocket ``newHeads`` subscription (``indexer.heads``) when ``rpc_urls`` lists
one, at the latest after ``poll_interval`` seconds (the polling fallback, and
the only source while the subscription is down). A notified header lets the
step read that block's logs by hash in one round trip. Whatever woke it, a step
reads from the cursor by number, so switching between the two loses no block.

Every ``PRUNE_EVERY`` blocks of progress, a step also prunes the ``blocks``
table below what a reorg walk needs (``indexer.pruning``): one ``DELETE`` by number.

When the node's blocks do not build on the indexed tip, the step becomes a
reorg check instead (``indexer.reorgs``): never on an endpoint whose head is
below the indexed block, walked to the common ancestor, confirmed by a second
endpoint where one is configured, and rolled back in one transaction
(``indexer.rollback``). The next steps re-index the new branch from the ancestor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from ferry import metrics, transitions
from ferry.db import DatabaseUnavailable
from ferry.domain import TransferStatus
from ferry.rpc import RpcError, RpcGarbage, RpcUnavailable
from ferry.settings import ChainConfig, ChainsConfig
from ferry.transitions import Change, move_transfers
from indexer import lifecycle, pruning, store
from indexer.backfill import backfill
from indexer.chain import BlockHeader, ChainMoved, ChainRange, ChainReader, breaks_continuity
from indexer.decode import MalformedLog
from indexer.endpoints import Endpoints
from indexer.heads import Heads
from indexer.reorgs import EndpointLagging, ReorgBeyondHistory, find_reorg
from indexer.rollback import CursorMoved, Rollback, roll_back

log = logging.getLogger(__name__)

#: Advisory lock key that orders the followers' linking of locks and releases (``Follower.commit``).
LINK_LOCK_KEY = 0x0F3E_11CC

#: New transfers in one range from which their history rows are written in bulk (``transitions.Created``).
BULK_CREATED_FROM = 256
#: Changes per transaction logged one by one; above this, one summary line.
ANNOUNCE_EACH = 100
#: Blocks another endpoint may be ahead of the current one before the current one counts as lagging.
LAG_TOLERANCE = 3
#: Seconds between two comparisons of the endpoints' heads (only while at the head).
LAG_CHECK_INTERVAL = 5.0
RPC_FAILURES = (RpcError, RpcUnavailable, RpcGarbage, MalformedLog)
DATABASE_FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, DatabaseUnavailable)


@dataclass(frozen=True)
class StepResult:
    """What one step committed."""

    head: int
    indexed_block: int
    new_transfers: int
    new_releases: int
    #: the moves, and the new transfers' first states unless recorded in bulk (``transitions.Created``)
    changes: tuple[Change, ...]
    rollback: Rollback | None = None

    @property
    def caught_up(self) -> bool:
        return self.indexed_block >= self.head and self.rollback is None


class Backoff:
    """Exponential pause between failed steps: ``first`` doubling up to ``limit`` seconds."""

    def __init__(self, first: float = 0.5, limit: float = 30.0) -> None:
        self.first, self.limit, self._next = first, limit, first

    def next(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self.limit)
        return delay

    def reset(self) -> None:
        self._next = self.first


class Follower:
    """Follows one chain's bridges and writes what it sees."""

    def __init__(
        self,
        chain: ChainConfig,
        config: ChainsConfig,
        pool: asyncpg.Pool,
        endpoints: Endpoints | None = None,
        heads: Heads | None = None,
    ) -> None:
        self.chain = chain
        self.config = config
        self.pool = pool
        self.endpoints = endpoints or Endpoints(chain)
        self.heads = heads if heads is not None else Heads.for_chain(chain)
        self.reader = ChainReader(chain, self.endpoints)
        self._next_lag_check = 0.0
        self._pruned_at: int | None = None
        #: The cursor this follower's last step committed (None: read it from the database).
        self._cursor: store.Cursor | None = None
        #: For the watchdog: the node's head and the indexed block last seen, and when the
        #: indexer last made progress (advanced, rolled back, or was at the head).
        self.head: int | None = None
        self.indexed: int | None = None
        self.progress_at = time.monotonic()

    async def step(self) -> StepResult:
        """One iteration: read the next range and commit it (or roll back a reorg). Raises on failure."""
        kept = self._cursor is not None
        try:
            return await self._step()
        except CursorMoved:
            if not kept:
                raise
            # NOTE: the kept cursor is stale (an operator's replay, another writer): read it and go again
            return await self._step()

    async def _step(self) -> StepResult:
        cursor, self._cursor = self._cursor or await self.load_cursor(), None
        chain_range = await self.reader.read_range(cursor.block, self.heads.hints() if self.heads else None)
        self.head = chain_range.head
        if chain_range.head < cursor.block:
            raise EndpointLagging(
                f"{self.endpoints.current_name} reports head {chain_range.head}, below indexed block "
                f"{cursor.block} of chain {self.chain.name}: it is behind"
            )
        if chain_range.empty:
            await self._check_lag(chain_range.head)
        if breaks_continuity(cursor.hash, chain_range):
            disputed = chain_range.headers[chain_range.last if chain_range.empty else chain_range.first]
            return await self._reorg(cursor, chain_range.head, disputed)
        result = await self.commit(cursor.block, chain_range)
        tip = chain_range.headers.get(chain_range.last)
        self._cursor = cursor if chain_range.empty or tip is None else store.Cursor(tip.number, tip.hash)
        self.observe(result, chain_range)
        self.progressed(result)
        await self._prune(result.indexed_block, chain_range.finalized)
        return result

    async def _prune(self, indexed: int, finalized: int | None) -> None:
        """Every ``PRUNE_EVERY`` blocks (and on the first step): drop blocks no reorg walk needs."""
        if self._pruned_at is not None and indexed - self._pruned_at < pruning.PRUNE_EVERY:
            return
        below = pruning.keep_from(indexed, self.reader.dense_window, finalized)
        async with self.pool.acquire() as conn:
            deleted = await pruning.prune_blocks(conn, self.chain.id, below)
        self._pruned_at = indexed
        if deleted:
            log.debug(
                "chain %s: pruned %d blocks below %d", self.chain.name, deleted, below,
                extra={"chain_id": self.chain.id},
            )  # fmt: skip

    def progressed(self, result: StepResult) -> None:
        if self.indexed is None or result.indexed_block != self.indexed or result.caught_up:
            self.progress_at = time.monotonic()
        self.indexed = result.indexed_block

    @property
    def stalled_for(self) -> float:
        """Seconds without progress while the node's head is above the indexed block (0 otherwise)."""
        if self.head is None or self.indexed is None or self.head <= self.indexed:
            return 0.0
        return time.monotonic() - self.progress_at

    async def _check_lag(self, head: int) -> None:
        """Every ``LAG_CHECK_INTERVAL`` s at the head: leave an endpoint that others are well ahead of."""
        now = time.monotonic()
        if now < self._next_lag_check:
            return
        self._next_lag_check = now + LAG_CHECK_INTERVAL
        for witness in await self.endpoints.witnesses():
            try:
                other = await witness.block_number()
            except (RpcError, RpcUnavailable, RpcGarbage):
                continue
            if other > head + LAG_TOLERANCE:
                raise EndpointLagging(
                    f"{self.endpoints.current_name} reports head {head} of chain {self.chain.name}, "
                    f"{other - head} blocks behind {witness.name}"
                )

    async def _reorg(self, cursor: store.Cursor, head: int, disputed: BlockHeader) -> StepResult:
        """Find the common ancestor below ``disputed`` and roll back to it in one transaction."""
        rpc = await self.endpoints.client()
        async with self.pool.acquire() as conn:
            reorg = await find_reorg(conn, self.chain, self.reader, rpc, cursor, disputed)
            if reorg is None:
                raise ChainMoved(f"block {disputed.number} of chain {self.chain.name} changed while read")
            async with conn.transaction():
                rollback = await roll_back(conn, self.chain, reorg)
        _announce(list(rollback.changes), {})
        self._observe_rollback(rollback)
        result = StepResult(head, reorg.ancestor.number, 0, 0, rollback.changes, rollback)
        self.progressed(result)
        return result

    def _observe_rollback(self, rollback: Rollback) -> None:
        name, reorg, extra = self.chain.name, rollback.reorg, {"chain_id": self.chain.id}
        metrics.REORGS.labels(chain=name).inc()
        metrics.REORG_DEPTH.labels(chain=name).observe(reorg.depth)
        metrics.INDEXED_BLOCK.labels(chain=name).set(reorg.ancestor.number)
        log.warning(
            "chain %s: reorg of %d blocks rolled back to block %d; %d transfers orphaned, %d releases undone",
            name,
            reorg.depth,
            reorg.ancestor.number,
            len(rollback.orphaned),
            len(rollback.reopened),
            extra=extra,
        )
        if rollback.deep:
            metrics.DEEP_REORGS.labels(chain=name).inc()
            log.error(
                "chain %s: reorg of %d blocks is deeper than its finality: transfers %s lost their lock or "
                "finalized release (policy %s); routes paused: %s. Check them (table reorgs) before "
                "resuming the routes",
                name,
                reorg.depth,
                ", ".join(rollback.affected),
                self.chain.reorg_policy,
                ", ".join(rollback.paused_routes) or "none",
                extra=extra,
            )

    async def run(self) -> None:
        """Step forever; when caught up, wait for a new head (or ``poll_interval``); survive failures."""
        heads = asyncio.create_task(self.heads.run(), name=f"heads:{self.chain.name}") if self.heads else None
        try:
            await self._run()
        finally:
            if heads is not None:
                heads.cancel()
                await asyncio.gather(heads, return_exceptions=True)

    async def _run(self) -> None:
        backoff = Backoff()
        backfilled = False
        while True:
            if self.heads is not None:
                self.heads.wake.clear()  # NOTE: before the step: a head notified during it wakes us
            try:
                if not backfilled:
                    await backfill(self)
                    backfilled = True
                result = await self.step()
            except Exception as exc:  # classified and logged in _failed
                backfilled = False  # NOTE: after a failure, catch up at full speed again
                await asyncio.sleep(self._failed(exc, backoff))
                continue
            backoff.reset()
            self.endpoints.succeeded()
            if result.caught_up:
                await self.wait_for_head()

    async def wait_for_head(self) -> None:
        """Until the subscription announces a head, at most ``poll_interval`` seconds (the polling floor)."""
        if self.heads is None:
            await asyncio.sleep(self.chain.poll_interval)
        else:
            await self.heads.wait(self.chain.poll_interval)

    async def close(self) -> None:
        await self.endpoints.close()

    async def load_cursor(self) -> store.Cursor:
        async with self.pool.acquire() as conn:
            cursor = await store.load_cursor(conn, self.chain.id)
            if cursor is None:
                await store.register_chains(conn, [self.chain])
                cursor = await store.load_cursor(conn, self.chain.id)
        assert cursor is not None
        return cursor

    async def commit(self, expected: int, chain_range: ChainRange, *, backfill: bool = False) -> StepResult:
        """Commit one range in one transaction; a backfill inserts its (final) locks CONFIRMED at once."""
        chain, head = self.chain, chain_range.head
        self._cursor = None
        async with self.pool.acquire() as conn, conn.transaction():
            await store.record_blocks(conn, chain.id, chain_range.headers.values())
            final = self._final_through(chain_range) if backfill else -1
            new, reappeared, tally = await store.insert_locks(conn, chain, self.config, chain_range, final)
            new_releases = await store.insert_releases(conn, chain.id, chain_range.releases)
            confirmed = await lifecycle.due_confirmations(
                conn, chain.id, head, chain_range.finalized, [d.transfer_id for d in reappeared]
            )
            to_link = [r.transfer_id for r in chain_range.releases] + [d.transfer_id for d in new + confirmed]
            # NOTE: the release columns (link_releases) lock rows the relayer settles too, so they are
            # written last, just before the moves: nothing slow runs while those rows are locked.
            # due_finalizations reads releases_seen only; given every transfer that may be linked
            # now, it finds what it would find after linking (any other is not a legal move).
            finalized = await lifecycle.due_finalizations(conn, chain.id, head, chain.confirmations, to_link)
            if not await store.advance_cursor(conn, chain.id, expected, chain_range):
                raise CursorMoved(f"the cursor of chain {chain.name} moved past block {expected}")
            if new or chain_range.releases:
                # NOTE: a lock and its release live on two chains, committed by two followers at
                # once: each transaction would miss the other's uncommitted rows, and a lock
                # inserted CONFIRMED (backfill) is never looked at again. Under this lock (held to
                # COMMIT) the second to link sees the first's rows (read committed).
                await conn.execute("SELECT pg_advisory_xact_lock($1)", LINK_LOCK_KEY)
            released = await lifecycle.link_releases(conn, to_link)
            # NOTE: set-based (one UPDATE per state, rows in id order), not one round trip per
            # transfer: the range's rows stay locked briefly, so the relayer settling the same
            # transfers does not wait on them (docs/relayer.md, "The wait (round 3)")
            # NOTE: a backfill range's thousands of new transfers get their history rows from one
            # statement over two arrays (transitions.Created): no Change object per lock
            bulk = len(new) >= BULK_CREATED_FROM
            changes = await move_transfers(
                conn,
                lifecycle.reappeared(reappeared) + lifecycle.moves(confirmed, released, finalized),
                created=() if bulk else [(d.transfer_id, TransferStatus(d.status or "PENDING")) for d in new],
                bulk=_created(new, tally) if bulk else None,
            )
        routes = {d.transfer_id: d.route_id for d in (*reappeared, *confirmed, *released, *finalized)}
        routes.update((d.transfer_id, d.route_id) for d in (() if bulk else new))
        _announce(changes, routes, len(new) if bulk else 0)
        return StepResult(head, chain_range.last, len(new), new_releases, tuple(changes))

    def _final_through(self, chain_range: ChainRange) -> int:
        """The highest block whose locks are final at this range's head (finality per chain)."""
        if chain_range.finalized is not None:
            return chain_range.finalized
        return chain_range.head - self.chain.confirmations + 1

    def observe(self, result: StepResult, chain_range: ChainRange) -> None:
        name = self.chain.name
        metrics.CHAIN_HEAD.labels(chain=name).set(result.head)
        metrics.INDEXED_BLOCK.labels(chain=name).set(result.indexed_block)
        metrics.INDEXER_LAG.labels(chain=name).set(max(result.head - result.indexed_block, 0))
        tip = chain_range.headers.get(chain_range.last)
        if tip is not None:
            lag = (datetime.now(UTC) - tip.timestamp).total_seconds()
            metrics.INDEXER_LAG_SECONDS.labels(chain=name).set(max(lag, 0.0))
        metrics.EVENTS_INDEXED.labels(chain=name, event="TokensLocked").inc(result.new_transfers)
        metrics.EVENTS_INDEXED.labels(chain=name, event="TransferReleased").inc(result.new_releases)
        if not chain_range.empty:
            log.debug(
                "indexed blocks %d..%d of %s (head %d)",
                chain_range.first,
                chain_range.last,
                name,
                result.head,
                extra={"chain_id": self.chain.id},
            )

    def _failed(self, exc: Exception, backoff: Backoff) -> float:
        """Log a failed step, rotate the endpoint when the RPC failed; returns the pause.

        Unexpected errors are logged with their traceback and retried too, so one chain's
        bug does not stop the others; ``ferry_indexer_errors_total`` counts every kind.
        """
        name, extra = self.chain.name, {"chain_id": self.chain.id}
        if isinstance(exc, RPC_FAILURES):
            endpoint = self.endpoints.current_name
            health = self.endpoints.failed(exc)
            log.warning(
                "chain %s: RPC endpoint %s failed (%s: %s); %s",
                name,
                endpoint,
                type(exc).__name__,
                exc,
                "slowing down" if health == "rate_limited" else f"switching to {self.endpoints.current_name}",
                extra=extra,
            )
            kind = "rate_limited" if health == "rate_limited" else "rpc"
        elif isinstance(exc, DATABASE_FAILURES):
            log.warning(
                "chain %s: database error (%s: %s); retrying", name, type(exc).__name__, exc, extra=extra
            )
            kind = "database"
        elif isinstance(exc, ChainMoved | CursorMoved):
            log.info("chain %s: %s; retrying", name, exc, extra=extra)
            return backoff.next()  # NOTE: not 0: a node that keeps contradicting itself must not spin us
        elif isinstance(exc, ReorgBeyondHistory):
            log.error("chain %s: %s", name, exc, extra=extra)
            kind = "reorg"
        else:
            log.exception("chain %s: unexpected error in a step; retrying", name, extra=extra)
            kind = "unexpected"
        metrics.INDEXER_ERRORS.labels(chain=name, kind=kind).inc()
        return backoff.next()


def _created(new: list[store.Due], tally: list[transitions.Tally] | None) -> transitions.Created:
    return transitions.Created([d.transfer_id for d in new], [d.status or "PENDING" for d in new], tally)


def _announce(changes: list[Change], routes: dict[str, str], created: int = 0) -> None:
    """Log committed changes (after COMMIT; ``ferry.transitions`` counts them).

    A backfill commits thousands of transfers at once (``created`` of them new, recorded in
    bulk): then one summary line, not one per transfer.
    """
    if created:
        log.info("%d transfers created, %d moved", created, len(changes))
    counts = Counter((routes.get(c.transfer_id, "unknown"), c.to_status.value) for c in changes)
    if len(changes) > ANNOUNCE_EACH:
        log.info(
            "%d transfers moved: %s", len(changes), ", ".join(f"{s} {n}" for (_, s), n in counts.items())
        )
        return
    for change in changes:
        route = routes.get(change.transfer_id, "unknown")
        log.info(
            "transfer moved %s -> %s",
            change.from_status.value if change.from_status else "(new)",
            change.to_status.value,
            extra={"transfer_id": change.transfer_id, "route": route, "from_status": change.from_status},
        )
