"""The backfill's bulk writes on a real PostgreSQL: COPY of many locks, and overlapping range commits.

- ``store.insert_locks`` COPYs a range of many locks straight into ``transfers``;
  a replay of the same range (or any lock whose key is taken) falls back to the
  careful ``INSERT ... ON CONFLICT`` and changes nothing.
  the COPYed rows equal, column for column, what the careful path writes (an
  unrouted lock included);
- ``ferry.transitions`` COPYs the history of many changes: ids contiguous and in
  commit order, one NOTIFY naming the highest, every change and its volume counted;
- many created transfers passed as ``transitions.Created`` (the backfill's ranges)
  get their history first, in order, before the moves of the same call, one NOTIFY,
  every one counted;
- a history row naming no transfer is refused (``UnknownTransfer``) on every insert
  path, and a transfer with history cannot be deleted or renamed (migration 0010
  replaced the per-row foreign key);
- ``store.advance_cursor`` with ``CURSOR_WAIT`` set waits for the range before to
  commit the cursor it builds on, and refuses a cursor that never comes or that
  ends on another block hash.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from ferry import metrics, transitions
from ferry.domain import CHANGES_CHANNEL, TransferStatus
from ferry.settings import BridgeDeployment, ChainConfig, ChainsConfig, RouteConfig
from indexer import store
from indexer.chain import BlockHeader, ChainRange
from indexer.decode import LockEvent

SOURCE, TARGET = 31_771, 31_772
BRIDGE = "0x" + "1" * 40
USER = "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc"
LOCKS = 3 * store.COPY_LOCKS_FROM // 2


def _config() -> ChainsConfig:
    def chain(chain_id: int, bridge: str) -> ChainConfig:
        return ChainConfig(
            id=chain_id,
            name=f"bulk-{chain_id}",
            rpc_urls=["http://127.0.0.1:9"],
            confirmations=2,
            bridges={"FTT": BridgeDeployment(bridge=bridge, token=bridge)},
        )

    return ChainsConfig(
        chains=[chain(SOURCE, BRIDGE), chain(TARGET, "0x" + "2" * 40)],
        routes=[RouteConfig(token="FTT", source=SOURCE, target=TARGET)],
    )


def _hash(number: int) -> str:
    return f"0x{number:064x}"


def _header(number: int) -> BlockHeader:
    return BlockHeader(
        number, _hash(number), _hash(number - 1), datetime.fromtimestamp(1_700_000_000 + number, UTC)
    )


def _range(first: int, last: int, head: int, locks_per_block: int = 0) -> ChainRange:
    locks = tuple(
        LockEvent(
            SOURCE, BRIDGE, _hash(10_000 + block), index, block, _hash(block), USER,
            10**18 + index, block * 1_000 + index, USER, TARGET,
        )
        for block in range(first, last + 1)
        for index in range(locks_per_block)
    )  # fmt: skip
    return ChainRange(head, first, last, locks, (), {n: _header(n) for n in range(first, last + 1)})


@pytest.fixture
async def pool(clean_db: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(clean_db, min_size=2, max_size=4)
    async with pool.acquire() as conn:
        await store.register_chains(conn, _config().chains)
        await store.register_routes(conn, _config())
        await conn.execute("UPDATE chains SET indexed_block = 9, indexed_block_hash = $1", _hash(9))
    yield pool
    await pool.close()


async def test_many_locks_are_copied_final_ones_confirmed_and_a_replay_changes_nothing(
    pool: asyncpg.Pool,
) -> None:
    config = _config()
    chain = config.chain_by_id[SOURCE]
    chain_range = _range(10, 12, head=13, locks_per_block=LOCKS // 3)
    async with pool.acquire() as conn, conn.transaction():
        new, reappeared, _ = await store.insert_locks(conn, chain, config, chain_range, final_through=11)
    again = await _insert_again(pool, config, chain_range)

    assert len(new) == len(chain_range.locks) >= store.COPY_LOCKS_FROM
    assert reappeared == []
    assert {d.status for d in new if d.block_number == 12} == {"PENDING"}
    assert {d.status for d in new if (d.block_number or 0) <= 11} == {"CONFIRMED"}
    rows = await pool.fetch(
        "SELECT id, route_id, target_bridge, nonce, amount, lock_block_time FROM transfers"
    )
    assert len(rows) == len(chain_range.locks)
    by_id = {row["id"]: row for row in rows}
    lock = chain_range.locks[-1]
    row = by_id[lock.transfer_id]
    assert (row["route_id"], row["target_bridge"], row["nonce"], row["amount"]) == (
        f"FTT:{SOURCE}-{TARGET}",
        "0x" + "2" * 40,
        lock.nonce,
        lock.amount,
    )
    assert row["lock_block_time"] == chain_range.headers[lock.block_number].timestamp
    assert again == ([], [], None)
    assert await pool.fetchval("SELECT count(*) FROM transfers") == len(chain_range.locks)


_ROW_COLUMNS = (
    "id, route_id, token, source_chain_id, source_bridge, nonce, target_chain_id, target_bridge, sender,"
    " recipient, amount, status, confirmations_required, lock_tx_hash, lock_log_index, lock_block_number,"
    " lock_block_hash, lock_block_time, release_tx_hash, attempts, last_error"
)


async def test_copied_rows_equal_the_careful_paths_rows(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config()
    chain = config.chain_by_id[SOURCE]
    routed = _range(10, 12, head=13, locks_per_block=LOCKS // 3)
    unrouted = LockEvent(SOURCE, BRIDGE, _hash(20_000), 0, 12, _hash(12), USER, 7, 99_999, USER, 424_242)
    chain_range = ChainRange(13, 10, 12, (*routed.locks, unrouted), (), routed.headers)
    async with pool.acquire() as conn, conn.transaction():
        copied, _, _ = await store.insert_locks(conn, chain, config, chain_range, final_through=11)
    copied_rows = await pool.fetch(f"SELECT {_ROW_COLUMNS} FROM transfers ORDER BY id")  # noqa: S608
    await pool.execute("DELETE FROM transfers")
    monkeypatch.setattr(store, "COPY_LOCKS_FROM", 10**9)  # NOTE: the careful INSERT ... ON CONFLICT path
    async with pool.acquire() as conn, conn.transaction():
        inserted, _, _ = await store.insert_locks(conn, chain, config, chain_range, final_through=11)
    inserted_rows = await pool.fetch(f"SELECT {_ROW_COLUMNS} FROM transfers ORDER BY id")  # noqa: S608

    assert len(copied_rows) == len(chain_range.locks)
    assert [dict(r) for r in copied_rows] == [dict(r) for r in inserted_rows]
    assert sorted(copied) == sorted(inserted)
    by_id = {row["id"]: row for row in copied_rows}
    assert by_id[unrouted.transfer_id]["target_bridge"] is None
    assert by_id[unrouted.transfer_id]["route_id"] == f"FTT:{SOURCE}-424242"


async def test_many_changes_are_copied_into_history_in_order_with_one_notify(
    pool: asyncpg.Pool, clean_db: str
) -> None:
    config = _config()
    chain_range = _range(10, 12, head=13, locks_per_block=transitions.COPY_HISTORY_FROM // 2)
    route = f"FTT:{SOURCE}-{TARGET}"
    moved, volume = _counted(route, "CONFIRMED")
    heard: list[str] = []
    listener = await asyncpg.connect(clean_db)
    try:
        await listener.add_listener(CHANGES_CHANNEL, lambda *args: heard.append(args[3]))
        new, changes = await _history_after_one_row(pool, config, chain_range, route)
        await asyncio.sleep(0.2)
    finally:
        await listener.close()

    rows = await pool.fetch(
        "SELECT id, transfer_id, to_status, created_at FROM transfer_status_history ORDER BY id"
    )
    ours = rows[1:]
    assert len(changes) == len(ours) == len(chain_range.locks) >= transitions.COPY_HISTORY_FROM
    assert [r["id"] for r in ours] == list(range(ours[0]["id"], ours[0]["id"] + len(ours)))
    assert [r["transfer_id"] for r in ours] == [d.transfer_id for d in new]
    assert {r["to_status"] for r in ours} == {"CONFIRMED"}
    assert ours[0]["created_at"] >= rows[0]["created_at"]
    assert heard == [str(rows[0]["id"]), str(ours[-1]["id"])]
    after_moved, after_volume = _counted(route, "CONFIRMED")
    assert after_moved - moved == len(ours)
    assert after_volume - volume == pytest.approx(sum(lock.amount for lock in chain_range.locks) / 10**18)


async def _history_after_one_row(
    pool: asyncpg.Pool, config: ChainsConfig, chain_range: ChainRange, route: str
) -> tuple[list[store.Due], list[transitions.Change]]:
    """One small transaction's history row (the regular INSERT), then the range's locks and their history."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO transfers (id, route_id, token, source_chain_id, source_bridge, nonce,"
            " target_chain_id, sender, recipient, amount, status, confirmations_required, lock_tx_hash,"
            " lock_log_index, lock_block_number, lock_block_hash, lock_block_time)"
            " VALUES ('x', $1, 'FTT', $2, $3, 0, $4, $5, $5, 5, 'PENDING', 2, $6, 0, 1, $6, now())",
            route, SOURCE, BRIDGE, TARGET, USER, _hash(1),
        )  # fmt: skip
        await transitions.record_new(conn, [("x", TransferStatus.PENDING)])
    async with pool.acquire() as conn, conn.transaction():
        new, _, _ = await store.insert_locks(
            conn, config.chain_by_id[SOURCE], config, chain_range, final_through=13
        )
        changes = await transitions.record_new(conn, [(d.transfer_id, TransferStatus.CONFIRMED) for d in new])
    return new, changes


def _counted(route: str, status: str) -> tuple[float, float]:
    labels = {"route": route, "status": status}
    return (
        metrics.TRANSFER_TRANSITIONS.labels(**labels)._value.get(),
        metrics.TRANSFER_VOLUME.labels(**labels)._value.get(),
    )


async def _insert_again(pool: asyncpg.Pool, config: ChainsConfig, chain_range: ChainRange) -> store.Inserted:
    async with pool.acquire() as conn, conn.transaction():
        return await store.insert_locks(conn, config.chain_by_id[SOURCE], config, chain_range, 11)


async def test_a_range_waits_for_the_cursor_of_the_range_before_it(pool: asyncpg.Pool) -> None:
    low, high = _range(10, 12, head=20), _range(13, 15, head=20)
    token = store.CURSOR_WAIT.set(30.0)
    try:
        async with pool.acquire() as second, second.transaction():
            waiting = asyncio.create_task(store.advance_cursor(second, SOURCE, 12, high))
            await asyncio.sleep(0.2)
            assert not waiting.done(), "the cursor is at 9: the range after 12 must wait"
            async with pool.acquire() as first, first.transaction():
                assert await store.advance_cursor(first, SOURCE, 9, low)
            assert await asyncio.wait_for(waiting, 10)
    finally:
        store.CURSOR_WAIT.reset(token)

    assert await pool.fetchval("SELECT indexed_block FROM chains WHERE chain_id = $1", SOURCE) == 15


async def test_a_cursor_that_never_comes_or_comes_on_another_block_is_refused(pool: asyncpg.Pool) -> None:
    high = _range(13, 15, head=20)
    token = store.CURSOR_WAIT.set(1.0)
    try:
        async with pool.acquire() as conn:
            never = await store.advance_cursor(conn, SOURCE, 12, high)
            other_branch = asyncio.create_task(store.advance_cursor(conn, SOURCE, 12, high))
            await asyncio.sleep(0.1)
            await pool.execute(
                "UPDATE chains SET indexed_block = 12, indexed_block_hash = $1", "0x" + "ee" * 32
            )
            refused = await other_branch
    finally:
        store.CURSOR_WAIT.reset(token)
    without_wait = await _advance_without_wait(pool, high)

    assert not never
    assert not refused
    assert not without_wait
    assert await pool.fetchval("SELECT indexed_block FROM chains WHERE chain_id = $1", SOURCE) == 9


async def _advance_without_wait(pool: asyncpg.Pool, chain_range: ChainRange) -> bool:
    async with pool.acquire() as conn:
        await conn.execute("UPDATE chains SET indexed_block = 9")
        return await store.advance_cursor(conn, SOURCE, 12, chain_range)


async def test_many_created_transfers_get_history_from_two_lists_before_the_moves_with_one_notify(
    pool: asyncpg.Pool, clean_db: str
) -> None:
    config = _config()
    chain_range = _range(10, 12, head=13, locks_per_block=store.COPY_LOCKS_FROM // 2)
    route = f"FTT:{SOURCE}-{TARGET}"
    confirmed_before, _ = _counted(route, "CONFIRMED")
    pending_before, _ = _counted(route, "PENDING")
    heard: list[str] = []
    listener = await asyncpg.connect(clean_db)
    try:
        await listener.add_listener(CHANGES_CHANNEL, lambda *args: heard.append(args[3]))
        async with pool.acquire() as conn, conn.transaction():
            new, _, _ = await store.insert_locks(
                conn, config.chain_by_id[SOURCE], config, chain_range, final_through=11
            )
            moved = next(d for d in new if d.status == "PENDING")
            created = transitions.Created([d.transfer_id for d in new], [d.status or "" for d in new])
            changes = await transitions.move_transfers(
                conn, [transitions.Move(moved.transfer_id, TransferStatus.CONFIRMED)], bulk=created
            )
        await asyncio.sleep(0.2)
    finally:
        await listener.close()

    rows = await pool.fetch(
        "SELECT id, transfer_id, from_status, to_status FROM transfer_status_history ORDER BY id"
    )
    assert [(c.transfer_id, c.to_status) for c in changes] == [(moved.transfer_id, "CONFIRMED")]
    assert [r["id"] for r in rows] == list(range(rows[0]["id"], rows[0]["id"] + len(new) + 1))
    assert [(r["transfer_id"], r["from_status"], r["to_status"]) for r in rows] == [
        *((d.transfer_id, None, d.status) for d in new),
        (moved.transfer_id, "PENDING", "CONFIRMED"),
    ]
    assert heard == [str(rows[-1]["id"])]
    pending = sum(1 for d in new if d.status == "PENDING")
    assert _counted(route, "PENDING")[0] - pending_before == pending
    assert _counted(route, "CONFIRMED")[0] - confirmed_before == len(new) - pending + 1


async def test_a_copied_ranges_tally_counts_what_the_history_joined_to_transfers_counts(
    pool: asyncpg.Pool,
) -> None:
    """The COPY path's own tally (no join) labels and sums as ``transitions._written`` does."""
    config = _config()
    routed = _range(10, 12, head=13, locks_per_block=LOCKS // 3)
    unrouted = LockEvent(SOURCE, BRIDGE, _hash(20_000), 0, 12, _hash(12), USER, 7 * 10**17, 99_999, USER, 5)
    chain_range = ChainRange(13, 10, 12, (*routed.locks, unrouted), (), routed.headers)
    labels = [(f"FTT:{SOURCE}-{TARGET}", "CONFIRMED"), (f"FTT:{SOURCE}-{TARGET}", "PENDING")]
    labels.append(("unrouted", "PENDING"))
    before = {label: _counted(*label) for label in labels}
    async with pool.acquire() as conn, conn.transaction():
        new, _, tally = await store.insert_locks(conn, config.chain_by_id[SOURCE], config, chain_range, 11)
        # NOTE: without the tally: counted joined to transfers, as every other history insert is
        created = transitions.Created([d.transfer_id for d in new], [d.status or "" for d in new])
        await transitions.move_transfers(conn, [], bulk=created)
    after = {label: _counted(*label) for label in labels}
    joined = {k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in labels}

    assert tally is not None
    assert {(t.route, t.status): (t.moved, pytest.approx(t.tokens)) for t in tally} == joined
    assert joined[("unrouted", "PENDING")] == (1, pytest.approx(0.7))


@pytest.mark.parametrize("count", [1, transitions.COPY_HISTORY_FROM])
async def test_history_naming_no_transfer_is_refused_and_nothing_is_recorded(
    pool: asyncpg.Pool, count: int
) -> None:
    chain_range = _range(10, 10, head=13, locks_per_block=max(count - 1, 1))
    with pytest.raises(transitions.UnknownTransfer):
        await _record_with_one_unknown(pool, chain_range, count)
    with pytest.raises(transitions.UnknownTransfer):
        await _create_unknown(pool, count)

    assert await pool.fetchval("SELECT count(*) FROM transfer_status_history") == 0
    assert await pool.fetchval("SELECT count(*) FROM transfers") == 0


async def _record_with_one_unknown(pool: asyncpg.Pool, chain_range: ChainRange, count: int) -> None:
    """``count`` history rows in one transaction (the last names no transfer), after inserting the locks."""
    config = _config()
    async with pool.acquire() as conn, conn.transaction():
        new, _, _ = await store.insert_locks(conn, config.chain_by_id[SOURCE], config, chain_range, 13)
        ids = [*(d.transfer_id for d in new[: count - 1]), "no-such-transfer"]
        await transitions.record_new(conn, [(i, TransferStatus.CONFIRMED) for i in ids])


async def _create_unknown(pool: asyncpg.Pool, count: int) -> None:
    async with pool.acquire() as conn, conn.transaction():
        created = transitions.Created(["no-such-transfer"] * count, ["CONFIRMED"] * count)
        await transitions.move_transfers(conn, [], bulk=created)


async def test_a_transfer_with_history_cannot_be_deleted_or_renamed(pool: asyncpg.Pool) -> None:
    config = _config()
    chain_range = _range(10, 10, head=13, locks_per_block=2)
    async with pool.acquire() as conn, conn.transaction():
        new, _, _ = await store.insert_locks(conn, config.chain_by_id[SOURCE], config, chain_range, 13)
        await transitions.record_new(conn, [(new[0].transfer_id, TransferStatus.CONFIRMED)])
    kept, free = new[0].transfer_id, new[1].transfer_id

    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await pool.execute("DELETE FROM transfers WHERE id = $1", kept)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await pool.execute("UPDATE transfers SET id = 'renamed' WHERE id = $1", kept)
    await pool.execute("UPDATE transfers SET id = id, updated_at = now() WHERE id = $1", kept)
    await pool.execute("DELETE FROM transfers WHERE id = $1", free)
    assert await pool.fetchval("SELECT array_agg(id) FROM transfers") == [kept]
