"""The indexer's SQL: chains, routes, blocks, transfers (source side) and releases seen.

Every function takes a connection and runs inside the caller's transaction; the
follower composes them into one transaction per indexed range. Multi-row writes
go through ``unnest`` so a range with thousands of events is a handful of
statements; a range of many new locks is COPYed into ``transfers``
(``_copy_new_locks``). Bridge addresses are stored lowercase, people's addresses
checksummed (see ``indexer.decode``).

Status changes are *not* made here: these functions only find which transfers
are due for a move; ``ferry.transitions`` makes the moves, last in the transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple

import asyncpg

from ferry.db import copy_text
from ferry.domain import TransferStatus
from ferry.settings import ChainConfig, ChainsConfig, route_id
from ferry.transitions import Tally
from indexer.chain import BlockHeader, ChainRange
from indexer.decode import LockEvent, ReleaseEvent
from indexer.reconcile import BlockRef

log = logging.getLogger(__name__)

#: Chain ids are stored as BIGINT; a lock naming a larger target chain cannot be routed.
MAX_CHAIN_ID = 2**63 - 1
#: Locks in one range from which they are COPYed into ``transfers`` (``_copy_new_locks``).
COPY_LOCKS_FROM = 256
#: COPY rows built and sent at a time (``_copy_chunks``).
COPY_CHUNK = 256
_PENDING, _CONFIRMED = TransferStatus.PENDING.value, TransferStatus.CONFIRMED.value
_COPY_COLUMNS = (
    "id",
    "route_id",
    "token",
    "source_chain_id",
    "source_bridge",
    "nonce",
    "target_chain_id",
    "target_bridge",
    "sender",
    "recipient",
    "amount",
    "status",
    "confirmations_required",
    "lock_tx_hash",
    "lock_log_index",
    "lock_block_number",
    "lock_block_hash",
    "lock_block_time",
)


@dataclass(frozen=True, slots=True)
class Cursor:
    """The last block the indexer committed on a chain."""

    block: int
    hash: str | None


#: Rows and amounts per ((route label, token), status) of COPYed locks (``_copy_chunks``, ``_tally``).
_Sums = dict[tuple[tuple[str, str], str], list[int]]


class Inserted(NamedTuple):
    """What ``insert_locks`` did: new transfers, ORPHANED ones whose lock reappeared, and the tally.

    ``tally`` counts the new transfers for the metrics when they were COPYed
    (``transitions.Created.tally``); None when they were not.
    """

    new: list[Due]
    reappeared: list[Due]
    tally: list[Tally] | None = None


class Due(NamedTuple):
    """A transfer due for a move, with what the move records.

    A named tuple, not a dataclass: a backfill makes one per lock, and a tuple is
    several times cheaper to build than a frozen dataclass.
    """

    transfer_id: str
    route_id: str
    tx_hash: str | None = None
    block_number: int | None = None
    status: str | None = None


async def register_chains(conn: asyncpg.Connection, chains: Sequence[ChainConfig]) -> None:
    """Insert unseen chains with the cursor just before their first bridge (never moving a cursor
    back), and their tokens with the chains file's decimals."""
    await conn.execute(
        """
        INSERT INTO chains (chain_id, name, indexed_block)
        SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[])
        ON CONFLICT (chain_id) DO UPDATE SET name = EXCLUDED.name
        """,
        [c.id for c in chains],
        [c.name for c in chains],
        [min(d.start_block for d in c.bridges.values()) - 1 for c in chains],
    )
    # NOTE: the tokens' decimals, for the analytics views and the volume metric (migration 0007).
    tokens = [(c.id, symbol, d) for c in chains for symbol, d in c.bridges.items()]
    await conn.execute(
        """
        INSERT INTO tokens (chain_id, symbol, token_address, bridge, decimals)
        SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::smallint[])
        ON CONFLICT (chain_id, symbol) DO UPDATE
           SET token_address = EXCLUDED.token_address, bridge = EXCLUDED.bridge,
               decimals = EXCLUDED.decimals, updated_at = now()
        """,
        [t[0] for t in tokens],
        [t[1] for t in tokens],
        [t[2].token.lower() for t in tokens],
        [t[2].bridge.lower() for t in tokens],
        [t[2].decimals for t in tokens],
    )


async def register_routes(conn: asyncpg.Connection, config: ChainsConfig) -> None:
    """Insert configured routes that are new; operator switches on existing ones stay as they are."""
    await conn.execute(
        """
        INSERT INTO routes (route_id, token, source_chain_id, target_chain_id)
        SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])
        ON CONFLICT (route_id) DO NOTHING
        """,
        [r.route_id for r in config.routes],
        [r.token for r in config.routes],
        [r.source for r in config.routes],
        [r.target for r in config.routes],
    )


async def load_cursor(conn: asyncpg.Connection, chain_id: int) -> Cursor | None:
    row = await conn.fetchrow(
        "SELECT indexed_block, indexed_block_hash FROM chains WHERE chain_id = $1", chain_id
    )
    return None if row is None else Cursor(row["indexed_block"], row["indexed_block_hash"])


#: Seconds ``advance_cursor`` waits for the cursor to reach the range's expected block (see there).
CURSOR_WAIT: ContextVar[float] = ContextVar("ferry_indexer_cursor_wait", default=0.0)
_CURSOR_POLL = 0.005


async def advance_cursor(
    conn: asyncpg.Connection, chain_id: int, expected: int, chain_range: ChainRange
) -> bool:
    """Move the cursor to the range's last block; False when another writer moved it first.

    With ``CURSOR_WAIT`` set (the backfill's overlapping commits, ``indexer.backfill``),
    a cursor still *below* ``expected`` is waited for, up to that many seconds: the
    transaction of the range before is committing it. The wait ends as soon as the
    cursor is at ``expected`` (and at the block this range builds on: its first block's
    parent), or has passed it; anything else returns False, as without the wait.
    """
    moved = await _advance(conn, chain_id, expected, chain_range)
    wait = CURSOR_WAIT.get()
    if moved or wait <= 0 or chain_range.empty:
        return moved
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        row = await conn.fetchrow(
            "SELECT indexed_block, indexed_block_hash FROM chains WHERE chain_id = $1", chain_id
        )
        if row is None or row["indexed_block"] > expected:
            return False
        if row["indexed_block"] == expected:
            parent = chain_range.headers[chain_range.first].parent_hash
            if (row["indexed_block_hash"] or "").lower() != parent:
                return False
            return await _advance(conn, chain_id, expected, chain_range)
        await asyncio.sleep(_CURSOR_POLL)
    return False


async def _advance(conn: asyncpg.Connection, chain_id: int, expected: int, chain_range: ChainRange) -> bool:
    last = None if chain_range.empty else chain_range.headers[chain_range.last]
    moved = await conn.fetchval(
        """
        UPDATE chains
           SET indexed_block = $3, indexed_block_hash = COALESCE($4, indexed_block_hash),
               head_block = $5, head_seen_at = now(), updated_at = now()
         WHERE chain_id = $1 AND indexed_block = $2
        RETURNING true
        """,
        chain_id,
        expected,
        chain_range.last,
        last.hash if last else None,
        chain_range.head,
    )
    return moved is True


async def record_blocks(conn: asyncpg.Connection, chain_id: int, headers: Iterable[BlockHeader]) -> None:
    rows = list(headers)
    if not rows:
        return
    await conn.execute(
        """
        INSERT INTO blocks (chain_id, number, hash, parent_hash, timestamp)
        SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::timestamptz[])
        ON CONFLICT (chain_id, number) DO UPDATE
           SET hash = EXCLUDED.hash, parent_hash = EXCLUDED.parent_hash, timestamp = EXCLUDED.timestamp
        """,
        chain_id,
        [h.number for h in rows],
        [h.hash for h in rows],
        [h.parent_hash for h in rows],
        [h.timestamp for h in rows],
    )


def routable(locks: Iterable[LockEvent]) -> list[LockEvent]:
    """The locks whose target chain id fits the schema; the others are logged and skipped."""
    kept = []
    for lock in locks:
        if 0 < lock.target_chain_id <= MAX_CHAIN_ID:
            kept.append(lock)
        else:
            log.error(
                "lock names target chain id %d, which no EVM chain can have; it cannot be relayed",
                lock.target_chain_id,
                extra={"transfer_id": lock.transfer_id, "tx_hash": lock.tx_hash},
            )
    return kept


async def insert_locks(
    conn: asyncpg.Connection,
    chain: ChainConfig,
    config: ChainsConfig,
    chain_range: ChainRange,
    final_through: int = -1,
) -> Inserted:
    """Insert the range's locks as transfers: new ones, ORPHANED ones whose lock reappeared.

    New transfers are PENDING, or CONFIRMED straight away when their lock is already
    final (at or below ``final_through``: a backfill of old blocks); ``Due.status``
    says which.

    A lock whose transfer id exists already is a replay (nothing changes) unless the
    row was ORPHANED by a reorg: then the lock on the new branch replaces it (it may
    even be another lock that got the same bridge nonce), and the caller moves it
    back to PENDING. A transfer past PENDING whose identical lock reappears in
    another block only has its lock position refreshed.
    """
    locks = routable(chain_range.locks)
    if not locks:
        return Inserted([], [])
    if len(locks) >= COPY_LOCKS_FROM:
        copied = await _copy_new_locks(conn, chain, config, chain_range, locks, final_through)
        if copied is not None:
            return copied
    await _displace_orphans(conn, chain.id, locks)
    tokens = [_token_of(config, chain.id, lock.bridge) for lock in locks]
    rows = await conn.fetch(
        """
        INSERT INTO transfers (id, route_id, token, source_chain_id, source_bridge, nonce,
                               target_chain_id, target_bridge, sender, recipient, amount, status,
                               confirmations_required, lock_tx_hash, lock_log_index,
                               lock_block_number, lock_block_hash, lock_block_time)
        SELECT l.id, l.route_id, l.token, $1, l.bridge, l.nonce::numeric, l.target_chain_id, l.target_bridge,
               l.sender, l.recipient, l.amount::numeric,
               CASE WHEN l.block_number <= $19 THEN 'CONFIRMED' ELSE $2 END, $3, l.tx_hash, l.log_index,
               l.block_number, l.block_hash, l.block_time
          FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::bigint[],
                      $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::int[],
                      $16::bigint[], $17::text[], $18::timestamptz[])
               AS l(id, route_id, token, bridge, nonce, target_chain_id, target_bridge, sender,
                    recipient, amount, tx_hash, log_index, block_number, block_hash, block_time)
        ON CONFLICT ON CONSTRAINT transfers_lock_key DO UPDATE SET
               lock_tx_hash = EXCLUDED.lock_tx_hash, lock_log_index = EXCLUDED.lock_log_index,
               lock_block_number = EXCLUDED.lock_block_number, lock_block_hash = EXCLUDED.lock_block_hash,
               lock_block_time = EXCLUDED.lock_block_time, route_id = EXCLUDED.route_id,
               token = EXCLUDED.token, target_chain_id = EXCLUDED.target_chain_id,
               target_bridge = EXCLUDED.target_bridge, sender = EXCLUDED.sender,
               recipient = EXCLUDED.recipient, amount = EXCLUDED.amount,
               confirmations_required = EXCLUDED.confirmations_required, updated_at = now()
         WHERE transfers.lock_block_hash <> EXCLUDED.lock_block_hash
           AND (transfers.status = 'ORPHANED'
                OR (transfers.lock_tx_hash, transfers.sender, transfers.recipient, transfers.amount,
                    transfers.target_chain_id)
                   = (EXCLUDED.lock_tx_hash, EXCLUDED.sender, EXCLUDED.recipient, EXCLUDED.amount,
                      EXCLUDED.target_chain_id))
        RETURNING id, route_id, lock_tx_hash, lock_block_number, status, (xmax = 0) AS inserted
        """,
        chain.id,
        TransferStatus.PENDING.value,
        chain.confirmations,
        [lock.transfer_id for lock in locks],
        [route_id(token, chain.id, lock.target_chain_id) for token, lock in zip(tokens, locks, strict=True)],
        tokens,
        [lock.bridge for lock in locks],
        # NOTE: uint256 values travel as decimal text: much cheaper to encode than Decimal.
        [str(lock.nonce) for lock in locks],
        [lock.target_chain_id for lock in locks],
        [_target_bridge(config, token, chain.id, lock) for token, lock in zip(tokens, locks, strict=True)],
        [lock.user for lock in locks],
        [lock.target_address for lock in locks],
        [str(lock.amount) for lock in locks],
        [lock.tx_hash for lock in locks],
        [lock.log_index for lock in locks],
        [lock.block_number for lock in locks],
        [lock.block_hash for lock in locks],
        [chain_range.headers[lock.block_number].timestamp for lock in locks],
        final_through,
    )
    due = [
        (Due(r["id"], r["route_id"], r["lock_tx_hash"], r["lock_block_number"], r["status"]), r) for r in rows
    ]
    return Inserted(
        [d for d, r in due if r["inserted"]],
        [d for d, r in due if not r["inserted"] and r["status"] == TransferStatus.ORPHANED.value],
    )


async def _copy_new_locks(
    conn: asyncpg.Connection,
    chain: ChainConfig,
    config: ChainsConfig,
    chain_range: ChainRange,
    locks: Sequence[LockEvent],
    final_through: int,
) -> Inserted | None:
    """The fast path for many locks: COPY them straight into ``transfers``; None if one exists already.

    Nearly always every lock of a range is new (the cursor guard keeps a range from
    being committed twice). COPY skips the per-row conflict checks of
    ``INSERT ... ON CONFLICT`` and the encoding of one array per column; when a unique
    key is already taken (a replay, a lock that reappeared after a reorg) the COPY is
    undone (a savepoint) and the caller takes the careful path.

    The rows travel in COPY's text format, one f-string per lock: asyncpg's binary
    encoding turns every uint256 into a ``Decimal`` digit tuple, several times slower.
    Decoded fields are hex or numbers (nothing to escape); text from the chains file
    (route, token, target bridge) is escaped once per (bridge, target chain).

    The rows are tallied as they are written (``Inserted.tally``): every one of them
    is in ``transfers`` once the COPY succeeded, so ``ferry.transitions`` need not
    count their history joined to ``transfers`` again.
    """
    due: list[Due] = []
    sums: _Sums = {}
    try:
        async with conn.transaction():
            await conn.copy_to_table(
                "transfers",
                source=_copy_chunks(chain, config, chain_range, locks, final_through, due, sums),
                columns=_COPY_COLUMNS,
            )
    except asyncpg.UniqueViolationError:
        return None
    return Inserted(due, [], _tally(config, chain.id, sums))


def _tally(config: ChainsConfig, chain_id: int, sums: _Sums) -> list[Tally]:
    """``((route label, token), status) -> [count, amount]`` as ``transitions._written`` counts them.

    The label is the route id, ``unrouted`` when the route is not configured (``_copy_chunks``);
    amounts become tokens with the source token's decimals (the ``tokens`` table holds the
    chains file's decimals).
    """
    bridges = config.chain_by_id[chain_id].bridges
    return [
        Tally(route, status, count, amount / 10 ** bridges[token].decimals)
        for ((route, token), status), (count, amount) in sums.items()
    ]


async def _copy_chunks(
    chain: ChainConfig,
    config: ChainsConfig,
    chain_range: ChainRange,
    locks: Sequence[LockEvent],
    final_through: int,
    due: list[Due],
    sums: _Sums,
) -> AsyncIterator[bytes]:
    """The COPY rows of ``locks``, ``COPY_CHUNK`` lines at a time; appends each lock's ``Due``.

    Chunks, not one buffer: the text of a whole range (and its encoded copy) would sit in
    memory beside the range's events; a chunk is sent before the next is built. ``sums``
    counts the rows and adds up their amounts per ((route label, token), status) (``_tally``).
    """
    targets: dict[tuple[str, int], tuple[str, str, str, tuple[str, str]]] = {}
    times: dict[int, str] = {}
    lines: list[str] = []
    prefix = f"{chain.id}:"
    head = f"\t{chain.id}\t"
    confirmations = chain.confirmations
    for lock in locks:
        key = (lock.bridge, lock.target_chain_id)
        target = targets.get(key)
        if target is None:
            token = _token_of(config, chain.id, lock.bridge)
            route = route_id(token, chain.id, lock.target_chain_id)
            bridge = _target_bridge(config, token, chain.id, lock)
            label = (route if bridge is not None else "unrouted", token)
            target = (route, f"{copy_text(route)}\t{copy_text(token)}", copy_text(bridge), label)
            if bridge is not None:  # NOTE: not cached when unrouted, so each such lock is logged
                targets[key] = target
        block = lock.block_number
        stamp = times.get(block)
        if stamp is None:
            stamp = times[block] = chain_range.headers[block].timestamp.isoformat()
        status = _CONFIRMED if block <= final_through else _PENDING
        transfer = f"{prefix}{lock.bridge}:{lock.nonce}"  # NOTE: ferry.domain.transfer_id, inlined
        lines.append(
            f"{transfer}\t{target[1]}{head}{lock.bridge}\t{lock.nonce}\t{lock.target_chain_id}\t{target[2]}\t"
            f"{lock.user}\t{lock.target_address}\t{lock.amount}\t{status}\t{confirmations}\t{lock.tx_hash}\t"
            f"{lock.log_index}\t{block}\t{lock.block_hash}\t{stamp}\n"
        )
        due.append(Due(transfer, target[0], lock.tx_hash, block, status))
        tally = sums.get((target[3], status))
        if tally is None:
            tally = sums[(target[3], status)] = [0, 0]
        tally[0] += 1
        tally[1] += lock.amount
        if len(lines) == COPY_CHUNK:
            yield "".join(lines).encode()
            lines.clear()
    if lines:
        yield "".join(lines).encode()


async def _displace_orphans(conn: asyncpg.Connection, chain_id: int, locks: Sequence[LockEvent]) -> None:
    """Free the (tx hash, log index) of ORPHANED transfers that another lock now occupies.

    On the new branch a re-included transaction may emit a lock with another bridge
    nonce; the ORPHANED row of its old nonce still holds the position, which is unique.
    """
    # NOTE: -1 - index keeps the old index recoverable and can never collide with a real one.
    await conn.execute(
        """
        UPDATE transfers AS t SET lock_log_index = -1 - t.lock_log_index, updated_at = now()
          FROM unnest($2::text[], $3::int[], $4::text[]) AS l(tx_hash, log_index, id)
         WHERE t.status = 'ORPHANED' AND t.source_chain_id = $1 AND t.lock_log_index >= 0
           AND t.lock_tx_hash = l.tx_hash AND t.lock_log_index = l.log_index AND t.id <> l.id
        """,
        chain_id,
        [lock.tx_hash for lock in locks],
        [lock.log_index for lock in locks],
        [lock.transfer_id for lock in locks],
    )


def _token_of(config: ChainsConfig, chain_id: int, bridge: str) -> str:
    owner = config.bridge_owner(chain_id, bridge)
    if owner is None:  # the reader only asks for configured bridges
        raise ValueError(f"bridge {bridge} is not configured on chain {chain_id}")
    return owner[0]


def _target_bridge(config: ChainsConfig, token: str, chain_id: int, lock: LockEvent) -> str | None:
    if config.route(token, chain_id, lock.target_chain_id) is None:
        log.warning(
            "lock targets chain %d, for which no %s route is configured",
            lock.target_chain_id,
            token,
            extra={"transfer_id": lock.transfer_id},
        )
        return None
    return config.chain_by_id[lock.target_chain_id].bridges[token].bridge.lower()


async def insert_releases(conn: asyncpg.Connection, chain_id: int, releases: Sequence[ReleaseEvent]) -> int:
    """Insert the range's releases into ``releases_seen``; returns how many were new."""
    kept = [r for r in releases if 0 < r.source_chain_id <= MAX_CHAIN_ID]
    if not kept:
        return 0
    rows = await conn.fetch(
        """
        INSERT INTO releases_seen (chain_id, tx_hash, log_index, bridge, block_number, block_hash,
                                   source_chain_id, source_bridge, nonce, recipient, amount, transfer_id)
        SELECT $1, * FROM unnest($2::text[], $3::int[], $4::text[], $5::bigint[], $6::text[], $7::bigint[],
                                 $8::text[], $9::numeric[], $10::text[], $11::numeric[], $12::text[])
        ON CONFLICT DO NOTHING
        RETURNING 1
        """,
        chain_id,
        [r.tx_hash for r in kept],
        [r.log_index for r in kept],
        [r.bridge for r in kept],
        [r.block_number for r in kept],
        [r.block_hash for r in kept],
        [r.source_chain_id for r in kept],
        [r.source_bridge for r in kept],
        [Decimal(r.nonce) for r in kept],
        [r.recipient for r in kept],
        [Decimal(r.amount) for r in kept],
        [r.transfer_id for r in kept],
    )
    return len(rows)


async def recent_blocks(conn: asyncpg.Connection, chain_id: int, through: int, limit: int) -> list[BlockRef]:
    """The ``limit`` highest kept blocks at or below ``through``, ascending (dense near the head)."""
    rows = await conn.fetch(
        """
        SELECT number, hash, parent_hash FROM blocks
         WHERE chain_id = $1 AND number <= $2
         ORDER BY number DESC LIMIT $3
        """,
        chain_id,
        through,
        limit,
    )
    return [BlockRef(r["number"], r["hash"], r["parent_hash"]) for r in reversed(rows)]
