"""One chain's supervisor: win the chain's leader lock, run its follower, restart it when stuck.

``ChainSupervisor.run`` loops forever:

1. wait for the chain's advisory lock (``indexer.leader``): a standby waits here;
2. run a fresh ``Follower`` next to two guards: the lock session's ``watch`` (the
   lock is lost => stop following at once and go back to 1) and the watchdog;
3. the watchdog: when no block has been indexed for ``watchdog`` seconds while
   the node's head is above the indexed block, the chain is *stalled*: the
   metric fires, ``/ready`` fails, and the follower is replaced by a new one
   (new RPC clients, new connections). The chain stays stalled for ``/ready``
   until the new follower makes progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg

from ferry import metrics
from ferry.rpc import RpcError, RpcGarbage, RpcUnavailable
from ferry.settings import ChainConfig, ChainsConfig
from indexer import leader
from indexer.follower import Follower

log = logging.getLogger(__name__)


class ChainSupervisor:
    def __init__(
        self, chain: ChainConfig, config: ChainsConfig, pool: asyncpg.Pool, dsn: str, watchdog: float
    ) -> None:
        self.chain, self.config, self.pool, self.dsn = chain, config, pool, dsn
        self.watchdog = watchdog
        self.follower: Follower | None = None
        self.stalled_since: float | None = None

    @property
    def stalled(self) -> bool:
        follower = self.follower
        if (
            self.stalled_since is not None
            and follower is not None
            and follower.progress_at > self.stalled_since
        ):
            self.stalled_since = None
            metrics.INDEXER_STALLED.labels(chain=self.chain.name).set(0)
        return self.stalled_since is not None

    async def run(self) -> None:
        name = self.chain.name
        while True:
            conn = await leader.acquire(self.dsn, self.chain.id)
            metrics.INDEXER_LEADER.labels(chain=name).set(1)
            log.info(
                "chain %s: leading it (holding its advisory lock)", name, extra={"chain_id": self.chain.id}
            )
            try:
                await self._lead(conn)
            finally:
                metrics.INDEXER_LEADER.labels(chain=name).set(0)
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2):
                        await conn.close()
            log.warning(
                "chain %s: lost its leader lock; standing by", name, extra={"chain_id": self.chain.id}
            )

    async def _lead(self, conn: asyncpg.Connection) -> None:
        """Follow while the lock holds; restart the follower whenever the watchdog fires."""
        while True:
            follower = self.follower = Follower(self.chain, self.config, self.pool)
            if self.stalled_since is not None:
                follower.progress_at = self.stalled_since  # NOTE: stalled until it really progresses
            tasks = {
                asyncio.create_task(follower.run(), name=f"follow:{self.chain.name}"),
                asyncio.create_task(leader.watch(conn), name=f"lock:{self.chain.name}"),
                asyncio.create_task(self._guard(follower), name=f"watchdog:{self.chain.name}"),
            }
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await follower.close()
            finished = done.pop()
            if finished.get_name().startswith("lock:"):
                return
            if finished.get_name().startswith("follow:"):
                finished.result()  # NOTE: run() only ends by raising; surface it

    async def _look_at_head(self, follower: Follower) -> None:
        """Ask the node for its head ourselves: a stuck follower may never ask again."""
        if follower.head is None:
            return
        try:
            rpc = follower.endpoints.current.client
            async with asyncio.timeout(5):  # NOTE: not wait_for: on 3.11 it can swallow a cancel
                head = await rpc.block_number()
        except (TimeoutError, RpcError, RpcUnavailable, RpcGarbage):
            return
        follower.head = max(follower.head, head)

    async def _guard(self, follower: Follower) -> None:
        """Return (so the follower is replaced) once it has been stuck for ``watchdog`` seconds."""
        started = time.monotonic()
        while True:
            await asyncio.sleep(min(self.watchdog / 4, 1.0))
            await self._look_at_head(follower)
            stuck = min(follower.stalled_for, time.monotonic() - started)
            if stuck >= self.watchdog:
                break
        self.stalled_since = time.monotonic()
        metrics.WATCHDOG_RESTARTS.labels(chain=self.chain.name).inc()
        metrics.INDEXER_STALLED.labels(chain=self.chain.name).set(1)
        log.error(
            "chain %s: no block indexed for %.0f s while the node's head (%s) is past the indexed block "
            "(%s); restarting the follower",
            self.chain.name,
            stuck,
            follower.head,
            follower.indexed,
            extra={"chain_id": self.chain.id},
        )
