"""Live status changes: one LISTEN per process, fanned out in memory to subscribers.

Design (the subscription's promises rest on it):

- One ``ferry.db.Listener`` per process hears ``NOTIFY ferry_transfer_changes``
  (payload: the highest history id a writer committed). It LISTENs on the
  primary (``DATABASE_URL``): PostgreSQL does not forward notifications to
  replicas.
- One fetcher task reads history rows with id > its cursor, in id order, from
  the read pool (with each row's transfer, for address and filter matching), and
  offers each row to the subscribers of that transfer, of its sender or
  recipient, and to filter subscribers whose filter it passes. The
  cursor advances in the same synchronous step as the offers, so a subscriber
  that registers between two reads gets every row read after it registered.
  History ids are in commit order (``ferry.transitions``), so reading
  ``id > cursor`` never skips a row that commits later with a smaller id.
- When the read pool is a lagging replica, the fetcher keeps reading until it
  has seen the id the notification announced. After a LISTEN reconnect it reads
  until nothing is newer: notifications sent while it was away are lost, rows
  are not.
- Each subscriber has a bounded queue. One that falls ``queue_size`` changes
  behind is cut off with ``SubscriberTooSlow``, which tells the client the
  cursor to resume from, instead of growing memory without limit.
- ``follow_transfer`` and ``follow_changes`` register the subscriber *before*
  replaying history from the database, then drop live changes already replayed
  (id <= last sent): nothing is skipped or sent twice across the switch.
  ``follow_changes`` replays only up to the feed's cursor at registration.

Nothing polls per subscriber; the work per change is two or three dict lookups,
a filter check per filter subscriber without an address, and one queue put per
receiving subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from typing import Any, Protocol

import asyncpg

from ferry import metrics
from ferry.db import Listener
from ferry.domain import CHANGES_CHANNEL
from ferry.tasks import stop_task
from gateway import reads
from gateway.errors import SubscriberTooSlow, UserError
from gateway.paging import TransferFilter
from gateway.records import StatusChange, TransferRecord

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 256
FETCH_BATCH = 1_000
REPLAY_PAGE = 500
#: Changes offered between two yields to the event loop (at most half a subscriber's queue).
FAN_OUT_STEP = 64
#: Longest wait, between two steps, for the shared work the last step started.
SETTLE_PATIENCE = 1.0
#: Seconds between reads while the read database has not yet caught up with a notification.
LAG_RETRY_DELAY = 0.05
#: How long to wait for a lagging read database before giving up on this round.
LAG_PATIENCE = 30.0
_DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class Subscriber:
    """One subscription's mailbox: a bounded queue of changes to one transfer, or matching a filter.

    A deque and one waiter rather than an ``asyncio.Queue`` (which carries two waiter
    deques and an event): ten thousand open subscriptions make the difference count.
    """

    __slots__ = (
        "_changes",
        "_waiter",
        "adopted",
        "direct",
        "dropped",
        "queue_size",
        "start_cursor",
        "transfer_id",
        "wanted",
    )

    def __init__(
        self,
        transfer_id: str | None,
        queue_size: int,
        start_cursor: int,
        wanted: TransferFilter | None = None,
    ) -> None:
        self.transfer_id = transfer_id
        self.wanted = wanted
        #: The feed's cursor when this subscriber registered: every later change reaches the queue.
        self.start_cursor = start_cursor
        self.queue_size = queue_size
        self.dropped = False
        #: Handed to a live delivery (``LiveHandoff``), which releases it when it ends.
        self.adopted = False
        #: Writes a change to the client at once (True) or declines (False); tried only while
        #: the consumer waits on an empty queue, so the order of changes is kept.
        self.direct: Callable[[StatusChange], bool] | None = None
        self._changes: deque[StatusChange] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, change: StatusChange) -> bool:
        """Queue ``change``; False (and dropped from now on) when the queue is full."""
        if self.dropped:
            return False
        waiter = self._waiter
        idle = waiter is not None and not waiter.done() and not self._changes
        if idle and self.direct is not None and self.direct(change):
            return True
        if len(self._changes) >= self.queue_size:
            self.dropped = True
            self._changes.clear()
            self._wake()
            return False
        self._changes.append(change)
        self._wake()
        return True

    async def next(self) -> StatusChange | None:
        """The next live change, or None once this subscriber has been dropped."""
        while not self._changes:
            if self.dropped:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self.dropped:
            return None
        return self._changes.popleft()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class ChangeFeed:
    """The process's single reader of new history rows and their in-memory fan-out."""

    def __init__(self, pool: asyncpg.Pool, listen_dsn: str, *, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self._pool = pool
        self._queue_size = queue_size
        self._subscribers: dict[str, set[Subscriber]] = {}
        #: Filter subscribers with an address, under that address (checksummed, as stored).
        self._by_address: dict[str, set[Subscriber]] = {}
        #: Filter subscribers without addresses: every change is checked against them.
        self._wide: set[Subscriber] = set()
        self._cursor = 0
        self._announced = 0
        self._wake = asyncio.Event()
        self._listener = Listener(listen_dsn, CHANGES_CHANNEL, self._heard, self._reconnected)
        self._fetcher: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Future[Any]] = set()

    @property
    def cursor(self) -> int:
        """The highest history id fanned out so far."""
        return self._cursor

    @property
    def healthy(self) -> bool:
        """True while the LISTEN connection is up and the fetcher is running."""
        return self._listener.connected and self._fetcher is not None and not self._fetcher.done()

    async def start(self) -> None:
        # NOTE: LISTEN first, then read the cursor: a change committed in between is
        # both below the cursor and announced, so it is neither missed nor sent twice.
        await self._listener.start()
        self._cursor = await reads.latest_change_id(self._pool)
        self._announced = max(self._announced, self._cursor)
        metrics.CHANGE_FEED_CURSOR.set(self._cursor)
        self._fetcher = asyncio.create_task(self._fetch_forever(), name="gateway:change-feed")

    async def stop(self) -> None:
        await stop_task(self._fetcher)
        await self._listener.stop()

    @contextlib.contextmanager
    def subscribe(self, transfer_id: str) -> Iterator[Subscriber]:
        """Receive every change to ``transfer_id`` read after this call, until the block exits."""
        subscriber = Subscriber(transfer_id, self._queue_size, self._cursor)
        self._subscribers.setdefault(transfer_id, set()).add(subscriber)
        metrics.SUBSCRIPTIONS.inc()
        try:
            yield subscriber
        finally:
            if not subscriber.adopted:
                self.release(subscriber)

    @contextlib.contextmanager
    def subscribe_matching(self, wanted: TransferFilter) -> Iterator[Subscriber]:
        """Receive every change matching ``wanted`` read after this call, until the block exits."""
        subscriber = Subscriber(None, self._queue_size, self._cursor, wanted)
        for key in _address_keys(wanted):
            self._by_address.setdefault(key, set()).add(subscriber)
        if not _address_keys(wanted):
            self._wide.add(subscriber)
        metrics.SUBSCRIPTIONS.inc()
        try:
            yield subscriber
        finally:
            if not subscriber.adopted:
                self.release(subscriber)

    def release(self, subscriber: Subscriber) -> None:
        """The subscription has ended: stop offering it changes."""
        self._forget(subscriber)
        metrics.SUBSCRIPTIONS.dec()

    def _forget(self, subscriber: Subscriber) -> None:
        if subscriber.transfer_id is not None:
            _discard(self._subscribers, subscriber.transfer_id, subscriber)
            return
        assert subscriber.wanted is not None
        for key in _address_keys(subscriber.wanted):
            _discard(self._by_address, key, subscriber)
        self._wide.discard(subscriber)

    def _heard(self, payload: str) -> None:
        try:
            self._announced = max(self._announced, int(payload))
        except ValueError:
            log.warning("ignoring a change notification whose payload is not a history id")
        self._wake.set()

    async def _reconnected(self) -> None:
        self._wake.set()

    async def _fetch_forever(self) -> None:
        delay = LAG_RETRY_DELAY
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._catch_up()
                delay = LAG_RETRY_DELAY
            except _DATABASE_ERRORS as exc:
                log.warning(
                    "change feed cannot read history, retrying in %.1fs: %s", delay, type(exc).__name__
                )
            except Exception:
                log.exception("change feed failed, retrying in %.1fs", delay)
            else:
                continue
            self._wake.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _catch_up(self) -> None:
        """Read and fan out every row after the cursor, until the announced id is reached."""
        waited = 0.0
        while True:
            batch = await reads.changes_after(self._pool, self._cursor, FETCH_BATCH)
            await self._fan_out_in_steps(batch.changes, batch.last_id)
            if batch.full:
                continue
            if self._cursor >= self._announced:
                return
            if waited >= LAG_PATIENCE:
                log.warning(
                    "read database is still behind the announced history id %d (at %d)",
                    self._announced,
                    self._cursor,
                )
                return
            # NOTE: a replica has not yet replayed what the primary announced.
            await asyncio.sleep(LAG_RETRY_DELAY)
            waited += LAG_RETRY_DELAY

    async def _fan_out_in_steps(
        self, changes: list[tuple[StatusChange, TransferRecord | None]], highest: int
    ) -> None:
        """``_fan_out`` a few changes at a time, letting subscribers drain their queues in between.

        A burst larger than a queue (one commit of a thousand transfers) must not cut off a
        subscriber that keeps up. Each step moves the cursor with its offers, so a subscriber
        registering between steps gets exactly the changes of the later steps.
        """
        step = max(1, min(FAN_OUT_STEP, self._queue_size // 2))
        for start in range(0, len(changes), step):
            chunk = changes[start : start + step]
            self._fan_out(chunk, chunk[-1][0].id if start + step < len(changes) else highest)
            await self._settle()
        if not changes:
            self._fan_out([], highest)

    def track(self, work: asyncio.Future[Any]) -> None:
        """Shared work for subscribers (one encoding of a change) to finish before the next step."""
        self._in_flight.add(work)
        work.add_done_callback(self._in_flight.discard)

    async def _settle(self) -> None:
        """Let subscribers take what was offered, and the shared work they started finish."""
        await asyncio.sleep(0)
        if self._in_flight:
            # NOTE: bounded: a slow read for one group must not hold every subscriber's changes.
            await asyncio.wait(set(self._in_flight), timeout=SETTLE_PATIENCE)
            await asyncio.sleep(0)

    def _fan_out(self, changes: list[tuple[StatusChange, TransferRecord | None]], highest: int) -> None:
        """Offer ``changes`` to their subscribers and move the cursor to ``highest``, in one step."""
        now = time.time()
        for change, record in changes:
            for subscriber in self._receivers(change, record):
                if not subscriber.offer(change):
                    self._forget(subscriber)
                    metrics.FANOUT_DROPPED.inc()
            metrics.FANOUT_LAG.observe(max(0.0, now - change.at.timestamp()))
        if highest > self._cursor:
            metrics.CHANGES_READ.inc(len(changes))
            self._cursor = highest
            metrics.CHANGE_FEED_CURSOR.set(highest)

    def _receivers(self, change: StatusChange, record: TransferRecord | None) -> list[Subscriber]:
        receivers = list(self._subscribers.get(change.transfer_id, ()))
        if record is not None and (self._by_address or self._wide):
            candidates = set(self._wide)
            for address in (record.sender, record.recipient):
                candidates.update(self._by_address.get(address, ()))
            receivers.extend(
                subscriber
                for subscriber in candidates
                if subscriber.wanted is not None and matches(subscriber.wanted, change, record)
            )
        return receivers


def matches(wanted: TransferFilter, change: StatusChange, record: TransferRecord) -> bool:
    """True when ``change`` (to ``record``) passes ``wanted``; status is the status moved to."""
    sender, recipient = record.sender, record.recipient
    checks = (
        wanted.address is None or wanted.address in (sender, recipient),
        wanted.sender is None or sender == wanted.sender,
        wanted.recipient is None or recipient == wanted.recipient,
        wanted.statuses is None or change.to_status in wanted.statuses,
        wanted.source_chain_id is None or record.source_chain_id == wanted.source_chain_id,
        wanted.target_chain_id is None or record.target_chain_id == wanted.target_chain_id,
        wanted.route_id is None or record.route_id == wanted.route_id,
        wanted.token is None or record.token == wanted.token,
        wanted.amount_min is None or record.amount >= wanted.amount_min,
        wanted.amount_max is None or record.amount <= wanted.amount_max,
        wanted.locked_after is None or record.lock_block_time >= wanted.locked_after,
        wanted.locked_before is None or record.lock_block_time < wanted.locked_before,
    )
    return all(checks)


def _address_keys(wanted: TransferFilter) -> tuple[str, ...]:
    return () if wanted.address is None else (wanted.address,)


def _discard(index: dict[str, set[Subscriber]], key: str, subscriber: Subscriber) -> None:
    peers = index.get(key)
    if peers is not None:
        peers.discard(subscriber)
        if not peers:
            del index[key]


async def follow_transfer(
    feed: ChangeFeed, pool: asyncpg.Pool, transfer_id: str, after: int
) -> AsyncIterator[StatusChange]:
    """Every change to ``transfer_id`` with id > ``after``: the stored ones, then live ones."""
    with feed.subscribe(transfer_id) as subscriber:
        last_sent = after
        # NOTE: a client resuming from the feed's position has nothing stored to catch up
        # on: skip the queries (a reconnect storm of thousands of wallets costs no reads).
        if after < subscriber.start_cursor:
            async for change in _replay(pool, transfer_id, after, subscriber.start_cursor):
                yield change
                last_sent = change.id
        async for live in _live(feed, subscriber, last_sent):
            yield live


async def follow_changes(
    feed: ChangeFeed, pool: asyncpg.Pool, wanted: TransferFilter, after: int | None
) -> AsyncIterator[StatusChange]:
    """Every change matching ``wanted`` with id > ``after`` (stored, then live); only live if None."""
    with feed.subscribe_matching(wanted) as subscriber:
        last_sent = subscriber.start_cursor if after is None else after
        if after is not None and after < subscriber.start_cursor:
            await _wait_until_visible(pool, subscriber.start_cursor)
            while True:
                page = await reads.matching_history_after(
                    pool, wanted, last_sent, subscriber.start_cursor, REPLAY_PAGE
                )
                for change in page:
                    yield change
                    last_sent = change.id
                if len(page) < REPLAY_PAGE:
                    break
        async for live in _live(feed, subscriber, last_sent):
            yield live


class LiveHandoff(Protocol):
    """Takes over a subscription once it is live, delivering its changes itself.

    Set in ``DIRECT_DELIVERY`` by the WebSocket handler for the task that runs one
    subscription (see ``gateway.subscriptions``). The generators here then end instead
    of yielding live changes; the handoff owns the subscriber from then on and calls
    ``release`` once, when it is done with it.
    """

    def adopt(self, subscriber: Subscriber, last_sent: int, release: Callable[[], None]) -> None: ...


DIRECT_DELIVERY: ContextVar[LiveHandoff | None] = ContextVar("ferry_direct_delivery", default=None)


async def _live(feed: ChangeFeed, subscriber: Subscriber, last_sent: int) -> AsyncIterator[StatusChange]:
    """The subscriber's live changes newer than ``last_sent``; SubscriberTooSlow once it is dropped."""
    handoff = DIRECT_DELIVERY.get()
    if handoff is not None:
        # NOTE: the transport encodes each change once per group of identical subscriptions
        # and writes it itself: nothing is executed through GraphQL per subscriber.
        subscriber.adopted = True
        handoff.adopt(subscriber, last_sent, functools.partial(feed.release, subscriber))
        return
    while True:
        live = await subscriber.next()
        if live is None:
            raise SubscriberTooSlow(too_slow_message(subscriber.queue_size, last_sent))
        if live.id > last_sent:
            yield live
            last_sent = live.id


def too_slow_message(queue_size: int, last_sent: int) -> str:
    """What a subscriber dropped for falling behind is told: why, and where to resume."""
    return (
        f"this subscription fell more than {queue_size} changes behind and was closed; "
        f'subscribe again with after: "{last_sent}" to resume without missing a change'
    )


async def _replay(
    pool: asyncpg.Pool, transfer_id: str, after: int, visible_from: int
) -> AsyncIterator[StatusChange]:
    await _wait_until_visible(pool, visible_from)
    while True:
        page = await reads.history_after(pool, transfer_id, after, REPLAY_PAGE)
        for change in page:
            yield change
        if len(page) < REPLAY_PAGE:
            return
        after = page[-1].id


async def _wait_until_visible(pool: asyncpg.Pool, history_id: int) -> None:
    """Wait until the read database shows ``history_id`` (a replica may lag behind the feed)."""
    waited = 0.0
    while await reads.latest_change_id(pool) < history_id:
        if waited >= LAG_PATIENCE:
            raise UserError("the gateway's database is catching up; subscribe again in a few seconds")
        await asyncio.sleep(LAG_RETRY_DELAY)
        waited += LAG_RETRY_DELAY
