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
import logging
import time
from collections.abc import AsyncIterator, Iterator

import asyncpg

from ferry import metrics
from ferry.db import Listener
from ferry.domain import CHANGES_CHANNEL
from gateway import reads
from gateway.errors import SubscriberTooSlow, UserError
from gateway.paging import TransferFilter
from gateway.records import StatusChange, TransferRecord

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 256
FETCH_BATCH = 1_000
REPLAY_PAGE = 500
#: Seconds between reads while the read database has not yet caught up with a notification.
LAG_RETRY_DELAY = 0.05
#: How long to wait for a lagging read database before giving up on this round.
LAG_PATIENCE = 30.0
_DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class Subscriber:
    """One subscription's mailbox: a bounded queue of changes to one transfer, or matching a filter."""

    __slots__ = ("_queue", "dropped", "start_cursor", "transfer_id", "wanted")

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
        self.dropped = False
        self._queue: asyncio.Queue[StatusChange] = asyncio.Queue(maxsize=queue_size)

    @property
    def queue_size(self) -> int:
        return self._queue.maxsize

    def offer(self, change: StatusChange) -> bool:
        """Queue ``change``; False (and dropped from now on) when the queue is full."""
        if self.dropped:
            return False
        try:
            self._queue.put_nowait(change)
        except asyncio.QueueFull:
            self.dropped = True
            return False
        return True

    async def next(self) -> StatusChange | None:
        """The next live change, or None once this subscriber has been dropped."""
        if self.dropped:
            return None
        return await self._queue.get()


class ChangeFeed:
    """The process's single reader of new history rows and their in-memory fan-out."""

    def __init__(self, pool: asyncpg.Pool, listen_dsn: str, *, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self._pool = pool
        self._queue_size = queue_size
        self._subscribers: dict[str, set[Subscriber]] = {}
        #: Filter subscribers with addresses, under each lowercase address they name.
        self._by_address: dict[str, set[Subscriber]] = {}
        #: Filter subscribers without addresses: every change is checked against them.
        self._wide: set[Subscriber] = set()
        self._cursor = 0
        self._announced = 0
        self._wake = asyncio.Event()
        self._listener = Listener(listen_dsn, CHANGES_CHANNEL, self._heard, self._reconnected)
        self._fetcher: asyncio.Task[None] | None = None

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
        if self._fetcher is not None:
            self._fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fetcher
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
            self._forget(subscriber)
            metrics.SUBSCRIPTIONS.dec()

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
            self._fan_out(batch.changes, batch.last_id)
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
            for address in (record.sender.lower(), record.recipient.lower()):
                candidates.update(self._by_address.get(address, ()))
            receivers.extend(
                subscriber
                for subscriber in candidates
                if subscriber.wanted is not None and matches(subscriber.wanted, change, record)
            )
        return receivers


def matches(wanted: TransferFilter, change: StatusChange, record: TransferRecord) -> bool:
    """True when ``change`` (to ``record``) passes ``wanted``; status is the status moved to."""
    sender, recipient = record.sender.lower(), record.recipient.lower()
    checks = (
        wanted.addresses is None or sender in wanted.addresses or recipient in wanted.addresses,
        wanted.senders is None or sender in wanted.senders,
        wanted.recipients is None or recipient in wanted.recipients,
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
    return tuple({a.lower() for a in wanted.addresses}) if wanted.addresses else ()


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
        async for live in _live(subscriber, last_sent):
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
        async for live in _live(subscriber, last_sent):
            yield live


async def _live(subscriber: Subscriber, last_sent: int) -> AsyncIterator[StatusChange]:
    """The subscriber's live changes newer than ``last_sent``; SubscriberTooSlow once it is dropped."""
    while True:
        live = await subscriber.next()
        if live is None:
            raise SubscriberTooSlow(
                f"this subscription fell more than {subscriber.queue_size} changes behind and was "
                f'closed; subscribe again with after: "{last_sent}" to resume without missing a change'
            )
        if live.id > last_sent:
            yield live
            last_sent = live.id


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
