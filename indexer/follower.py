"""One chain's follower: read the next range of blocks, commit it in one transaction.

Each ``step`` is one iteration, easy to drive from tests:

1. load the cursor (``chains.indexed_block``) from the database: the database,
   not this object, holds the state, so a restarted or second follower resumes;
2. read ``cursor+1 .. min(head, cursor+log_range)`` from the chain
   (``ChainReader``): bridge logs, the headers of blocks holding them and of the
   range's first and last block;
3. in ONE transaction: blocks, new transfers (PENDING), releases seen, release
   columns, then the confirmation passes (which run even when nothing new was
   read), the cursor (guarded: it must still be where step 1 found it), and last
   the history and NOTIFY through ``ferry.transitions``.

``run`` loops over ``step`` and keeps going through failures: RPC trouble (an
error, an unreachable node, garbage, a malformed log) rotates to the next
endpoint with backoff; database trouble pauses and retries. A range whose first
block does not build on the cursor's block raises ``ReorgDetected``; until reorg
handling lands, the follower stops advancing (loudly) rather than index a fork.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg

from ferry import metrics
from ferry.db import DatabaseUnavailable
from ferry.domain import TransferStatus
from ferry.rpc import RpcError, RpcGarbage, RpcUnavailable
from ferry.settings import ChainConfig, ChainsConfig
from ferry.transitions import Change, move_transfers
from indexer import lifecycle, store
from indexer.chain import ChainMoved, ChainRange, ChainReader, Endpoints, breaks_continuity
from indexer.decode import MalformedLog

log = logging.getLogger(__name__)

RPC_FAILURES = (RpcError, RpcUnavailable, RpcGarbage, MalformedLog)
DATABASE_FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, DatabaseUnavailable)


class ReorgDetected(Exception):
    """The chain no longer contains the block the cursor points at."""


class CursorMoved(Exception):
    """Another writer advanced this chain's cursor while this step was reading."""


@dataclass(frozen=True)
class StepResult:
    """What one step committed."""

    head: int
    indexed_block: int
    new_transfers: int
    new_releases: int
    changes: tuple[Change, ...]

    @property
    def caught_up(self) -> bool:
        return self.indexed_block >= self.head


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
    ) -> None:
        self.chain = chain
        self.config = config
        self.pool = pool
        self.endpoints = endpoints or Endpoints(chain)
        self.reader = ChainReader(chain, self.endpoints)

    async def step(self) -> StepResult:
        """One iteration: read the next range and commit it. Raises on any failure."""
        cursor = await self._cursor()
        chain_range = await self.reader.read_range(cursor.block)
        if breaks_continuity(cursor.hash, chain_range):
            raise ReorgDetected(
                f"block {chain_range.first} of chain {self.chain.name} does not build on indexed block "
                f"{cursor.block} ({cursor.hash})"
            )
        result = await self._commit(cursor.block, chain_range)
        self._observe(result, chain_range)
        return result

    async def run(self) -> None:
        """Step forever; sleep ``poll_interval`` when caught up; survive RPC and database failures."""
        backoff = Backoff()
        while True:
            try:
                result = await self.step()
            except Exception as exc:  # classified and logged in _failed
                await asyncio.sleep(self._failed(exc, backoff))
                continue
            backoff.reset()
            if result.caught_up:
                await asyncio.sleep(self.chain.poll_interval)

    async def close(self) -> None:
        await self.endpoints.close()

    async def _cursor(self) -> store.Cursor:
        async with self.pool.acquire() as conn:
            cursor = await store.load_cursor(conn, self.chain.id)
            if cursor is None:
                await store.register_chains(conn, [self.chain])
                cursor = await store.load_cursor(conn, self.chain.id)
        assert cursor is not None
        return cursor

    async def _commit(self, expected: int, chain_range: ChainRange) -> StepResult:
        chain, head = self.chain, chain_range.head
        async with self.pool.acquire() as conn, conn.transaction():
            await store.record_blocks(conn, chain.id, chain_range.headers.values())
            new = await store.insert_locks(conn, chain, self.config, chain_range)
            new_releases = await store.insert_releases(conn, chain.id, chain_range.releases)
            confirmed = await lifecycle.due_confirmations(conn, chain.id, head)
            to_link = [r.transfer_id for r in chain_range.releases] + [d.transfer_id for d in new + confirmed]
            released = await lifecycle.link_releases(conn, to_link)
            finalized = await lifecycle.due_finalizations(
                conn, chain.id, head, chain.confirmations, [d.transfer_id for d in released]
            )
            if not await store.advance_cursor(conn, chain.id, expected, chain_range):
                raise CursorMoved(f"the cursor of chain {chain.name} moved past block {expected}")
            changes = await move_transfers(
                conn,
                lifecycle.moves(confirmed, released, finalized),
                created=[(d.transfer_id, TransferStatus.PENDING) for d in new],
            )
        routes = {d.transfer_id: d.route_id for d in (*new, *confirmed, *released, *finalized)}
        _announce(changes, routes)
        return StepResult(head, chain_range.last, len(new), new_releases, tuple(changes))

    def _observe(self, result: StepResult, chain_range: ChainRange) -> None:
        name = self.chain.name
        metrics.CHAIN_HEAD.labels(chain=name).set(result.head)
        metrics.INDEXED_BLOCK.labels(chain=name).set(result.indexed_block)
        metrics.INDEXER_LAG.labels(chain=name).set(max(result.head - result.indexed_block, 0))
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
            self.endpoints.rotate()
            log.warning(
                "chain %s: RPC endpoint %s failed (%s: %s); switching to %s",
                name,
                endpoint,
                type(exc).__name__,
                exc,
                self.endpoints.current_name,
                extra=extra,
            )
            kind = "rpc"
        elif isinstance(exc, DATABASE_FAILURES):
            log.warning(
                "chain %s: database error (%s: %s); retrying", name, type(exc).__name__, exc, extra=extra
            )
            kind = "database"
        elif isinstance(exc, ChainMoved | CursorMoved):
            log.info("chain %s: %s; retrying", name, exc, extra=extra)
            return backoff.next()  # NOTE: not 0: a node that keeps contradicting itself must not spin us
        elif isinstance(exc, ReorgDetected):
            log.error("chain %s: reorg detected, indexing halted: %s", name, exc, extra=extra)
            kind = "reorg"
        else:
            log.exception("chain %s: unexpected error in a step; retrying", name, extra=extra)
            kind = "unexpected"
        metrics.INDEXER_ERRORS.labels(chain=name, kind=kind).inc()
        return backoff.next()


def _announce(changes: list[Change], routes: dict[str, str]) -> None:
    """Log and count committed changes (after COMMIT, so nothing here is uncommitted)."""
    for change in changes:
        route = routes.get(change.transfer_id, "unknown")
        metrics.TRANSFER_TRANSITIONS.labels(route=route, status=change.to_status.value).inc()
        log.info(
            "transfer moved %s -> %s",
            change.from_status.value if change.from_status else "(new)",
            change.to_status.value,
            extra={"transfer_id": change.transfer_id, "route": route, "from_status": change.from_status},
        )
