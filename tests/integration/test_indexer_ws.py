"""New heads over a WebSocket subscription, polling as the fallback, and pruning of ``blocks``.

Real anvil (which serves WebSocket on its HTTP port) and a real PostgreSQL:

- with ``poll_interval`` set to ten minutes, a lock is indexed within seconds: the
  head can only have come from the ``newHeads`` subscription;
- when the WebSocket path dies (a relay in front of anvil is cut), the follower
  polls and indexes every lock mined meanwhile; when it comes back, heads flow
  again; the indexed locks equal the chain's;
- garbage on the WebSocket (malformed JSON, another chain id) counts against that
  endpoint's index and never stops indexing;
- a reorg while heads come over the WebSocket is rolled back like any other
  (a notified block is read by hash only while the HTTP node holds it as canonical);
- the ``blocks`` table keeps only the recent window a reorg walk needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import asyncpg
import pytest
from prometheus_client import REGISTRY

from ferry.db import create_pool
from ferry.devstack import DevChain, DevNetwork, start_dev_network
from ferry.domain import transfer_id
from ferry.rpc import RpcClient
from ferry.settings import ChainConfig
from indexer import heads as heads_module
from indexer import pruning, service
from indexer.chain import BlockHeader, parse_header
from indexer.follower import Follower
from tests.support.indexing import eventually, following, lock, locks_on_chain
from tests.support.ws_relay import FakeHeads, TcpRelay

ONE = 10**18
#: Locks on the session's shared chains stay small: other tests lock from the same balance.
SMALL = ONE // 100
T = TypeVar("T")


@pytest.fixture
async def pool(clean_db: str, dev_chains: DevNetwork) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(clean_db)
    await service.prepare_database(pool, dev_chains.config)
    yield pool
    await pool.close()


def chain_with(network: DevNetwork, *extra_urls: str, poll_interval: float) -> ChainConfig:
    source = network.chains[0]
    chain = network.config.chain_by_id[source.chain_id]
    return chain.model_copy(update={"rpc_urls": [source.url, *extra_urls], "poll_interval": poll_interval})


async def indexed(pool: asyncpg.Pool, transfer: str) -> bool:
    return bool(await pool.fetchval("SELECT count(*) FROM transfers WHERE id = $1", transfer))


async def indexed_locks(pool: asyncpg.Pool, chain: DevChain) -> set[tuple[str, int]]:
    rows = await pool.fetch("SELECT id, amount FROM transfers WHERE source_chain_id = $1", chain.chain_id)
    return {(r["id"], int(r["amount"])) for r in rows}


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def caught_up(pool: asyncpg.Pool, chain: DevChain) -> bool:
    head = int(chain.w3.eth.block_number)
    return bool(
        await pool.fetchval(
            "SELECT indexed_block >= $1 FROM chains WHERE chain_id = $2", head, chain.chain_id
        )
    )


async def test_new_heads_over_websocket_wake_the_follower_without_polling(
    dev_chains: DevNetwork, pool: asyncpg.Pool
) -> None:
    source = dev_chains.chains[0]
    ws_url = source.url.replace("http://", "ws://", 1)
    chain = chain_with(dev_chains, ws_url, poll_interval=600)  # NOTE: ten minutes: no polling in this test
    follower = Follower(chain, dev_chains.config, pool)
    assert follower.heads is not None
    async with following(follower) as task:
        await eventually(lambda: caught_up(pool, source), "the first steps")
        await eventually(lambda: asyncio.sleep(0, follower.heads.subscribed), "the subscription")
        await asyncio.sleep(1)  # NOTE: the step that subscribing wakes is over: the follower now waits
        notified = follower.heads.notifications
        new = [lock(dev_chains, (700 + i) * SMALL) for i in range(3)]
        for transfer in new:
            await eventually(lambda t=transfer: indexed(pool, t), "a lock woken by a new head", seconds=20)
        assert not task.done(), "the follower stopped"

    assert follower.heads.notifications > notified
    assert follower.reader.hinted_reads > 0, "new blocks were not read by their notified hashes"
    assert await indexed_locks(pool, source) == await locks_on_chain(source)


async def test_a_follower_stops_when_cancelled_even_as_a_new_head_wakes_it(
    dev_chains: DevNetwork, pool: asyncpg.Pool
) -> None:
    source = dev_chains.chains[0]
    chain = chain_with(dev_chains, source.url.replace("http://", "ws://", 1), poll_interval=600)
    follower = Follower(chain, dev_chains.config, pool)
    assert follower.heads is not None
    heads = follower.heads
    task = asyncio.create_task(follower.run())
    try:
        await eventually(lambda: caught_up(pool, source), "the first steps")
        await eventually(lambda: asyncio.sleep(0, heads.subscribed), "the subscription")
        await asyncio.sleep(1)  # NOTE: the step that subscribing wakes is over: the follower now waits
        heads.wake.set()  # NOTE: a head and the stop in the same loop iteration
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=20)
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=20)
        await follower.close()

    assert done, "the cancelled follower went on following"
    assert task.cancelled()


async def test_when_the_websocket_dies_polling_takes_over_without_missing_a_block(
    dev_chains: DevNetwork, pool: asyncpg.Pool
) -> None:
    source = dev_chains.chains[0]
    relay = await TcpRelay(urlsplit(source.url).port or 0).start()
    chain = chain_with(dev_chains, relay.ws_url, poll_interval=0.5)
    labels = {"chain": chain.name, "endpoint": "1"}
    follower = Follower(chain, dev_chains.config, pool)
    assert follower.heads is not None
    heads = follower.heads
    try:
        async with following(follower) as task:
            await eventually(lambda: asyncio.sleep(0, heads.subscribed), "the subscription")
            before = lock(dev_chains, 801 * SMALL)
            await eventually(lambda: indexed(pool, before), "a lock while the WebSocket is up")
            dropped = sample("ferry_rpc_errors_total", {**labels, "kind": "unavailable"})

            await relay.cut()
            await eventually(lambda: asyncio.sleep(0, not heads.subscribed), "the subscription to drop")
            during = [lock(dev_chains, (802 + i) * SMALL) for i in range(3)]
            for transfer in during:
                await eventually(lambda t=transfer: indexed(pool, t), "a lock found by polling")
            assert not heads.subscribed, "the WebSocket is cut: only polling can have found these locks"
            assert sample("ferry_rpc_errors_total", {**labels, "kind": "unavailable"}) > dropped
            assert sample("ferry_rpc_head_subscription_up", labels) == 0
            # NOTE: its requests were never tried while cut: the subscription alone is down
            assert sample("ferry_rpc_endpoint_up", labels) == 1

            await relay.restore()
            await eventually(lambda: asyncio.sleep(0, heads.subscribed), "the subscription again", seconds=60)
            notified = heads.notifications
            after = lock(dev_chains, 805 * SMALL)
            await eventually(lambda: indexed(pool, after), "a lock after the WebSocket came back")
            await eventually(lambda: caught_up(pool, source), "the follower at the head")
            assert heads.notifications > notified
            assert sample("ferry_rpc_head_subscription_up", labels) == 1
            assert not task.done(), "the follower stopped"
    finally:
        await relay.cut()

    assert await indexed_locks(pool, source) == await locks_on_chain(source)
    assert await pool.fetchval("SELECT count(*) FROM reorgs") == 0


async def test_an_unexpected_error_in_the_subscription_is_logged_and_it_subscribes_again(
    dev_chains: DevNetwork,
    pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug in reading a notification (here: the header parser raising once) ends one socket only."""
    source = dev_chains.chains[0]
    chain = chain_with(dev_chains, source.url.replace("http://", "ws://", 1), poll_interval=600)
    failures = []

    def parse_once_wrongly(raw: object, number: int) -> BlockHeader:
        if not failures:
            failures.append(number)
            raise RuntimeError("a bug in reading the header")
        return parse_header(raw, number)

    monkeypatch.setattr(heads_module, "parse_header", parse_once_wrongly)
    unexpected = {"chain": chain.name, "kind": "unexpected"}
    unexpected_before = sample("ferry_indexer_errors_total", unexpected)
    unavailable = {"chain": chain.name, "endpoint": "1", "kind": "unavailable"}
    unavailable_before = sample("ferry_rpc_errors_total", unavailable)
    follower = Follower(chain, dev_chains.config, pool)
    assert follower.heads is not None
    heads = follower.heads
    async with following(follower) as task:
        await eventually(lambda: caught_up(pool, source), "the first steps")
        await eventually(lambda: asyncio.sleep(0, heads.subscribed), "the subscription")
        first = lock(dev_chains, 950 * SMALL)  # NOTE: its block's notification meets the bug
        await eventually(lambda: asyncio.sleep(0, bool(failures)), "the failing notification")
        await eventually(lambda: asyncio.sleep(0, heads.subscribed), "the subscription again")
        after = lock(dev_chains, 951 * SMALL)
        for transfer in (first, after):
            await eventually(lambda t=transfer: indexed(pool, t), "a lock after the bug", seconds=20)
        assert not task.done(), "the follower stopped"

    assert "stopped on an unexpected error" in caplog.text
    assert "a bug in reading the header" in caplog.text
    assert "parse_once_wrongly" in caplog.text, "no traceback"
    assert sample("ferry_indexer_errors_total", unexpected) == unexpected_before + 1
    assert sample("ferry_rpc_errors_total", unavailable) == unavailable_before, (
        "a bug counted against the node"
    )


@pytest.mark.parametrize("mode", ["malformed", "wrong_chain", "far_future"])
async def test_garbage_on_the_websocket_counts_against_its_endpoint_and_polling_goes_on(
    dev_chains: DevNetwork, pool: asyncpg.Pool, mode: str
) -> None:
    source = dev_chains.chains[0]
    fake = await FakeHeads(source.chain_id, mode).start()
    chain = chain_with(dev_chains, fake.ws_url, poll_interval=0.5)
    labels = {"chain": chain.name, "endpoint": "1", "kind": "garbage"}
    before = sample("ferry_rpc_errors_total", labels)
    http_before = sample("ferry_rpc_errors_total", {**labels, "endpoint": "0"})
    follower = Follower(chain, dev_chains.config, pool)
    try:
        async with following(follower):
            await eventually(lambda: asyncio.sleep(0, fake.connections > 0), "the subscription attempt")
            transfer = lock(dev_chains, 900 * SMALL)
            await eventually(lambda: indexed(pool, transfer), "a lock found by polling")
            await eventually(
                lambda: asyncio.sleep(0, sample("ferry_rpc_errors_total", labels) > before),
                "the garbage count",
            )
            assert sample("ferry_rpc_head_subscription_up", {"chain": chain.name, "endpoint": "1"}) == 0
            assert follower.heads is not None
            assert not follower.heads.subscribed
            assert sample("ferry_rpc_errors_total", {**labels, "endpoint": "0"}) == http_before, (
                "the WebSocket's garbage was counted against the HTTP endpoint"
            )
    finally:
        await fake.stop()

    assert await indexed_locks(pool, source) == await locks_on_chain(source)


@pytest.fixture
def own_network(tmp_path: Path) -> Iterator[DevNetwork]:
    """Chains of this test's own: a reorg must not rewrite the session's shared chains."""
    network = start_dev_network(tmp_path / "chains", (31537, 31538), confirmations=4)
    try:
        yield network
    finally:
        network.stop()


async def test_a_reorg_while_heads_come_over_the_websocket_is_rolled_back(
    own_network: DevNetwork, clean_db: str
) -> None:
    pool = await create_pool(clean_db)
    try:
        await follow_through_a_reorg(own_network, pool)
    finally:
        await pool.close()


async def follow_through_a_reorg(own_network: DevNetwork, pool: asyncpg.Pool) -> None:
    source = own_network.chains[0]
    await service.prepare_database(pool, own_network.config)
    ws_url = source.url.replace("http://", "ws://", 1)
    chain = chain_with(own_network, ws_url, poll_interval=600)  # NOTE: heads only from the WebSocket
    follower = Follower(chain, own_network.config, pool)
    assert follower.heads is not None
    heads = follower.heads
    async with following(follower) as task:
        await eventually(lambda: asyncio.sleep(0, heads.subscribed), "the subscription")
        await asyncio.sleep(1)
        dropped = lock(own_network, 11 * ONE)
        await eventually(lambda: indexed(pool, dropped), "the lock that the reorg drops")
        await rpc_call(source, "anvil_reorg", 1, [])  # NOTE: replaces the lock's block with an empty one
        await rpc_call(source, "anvil_mine", hex(1))
        await eventually(
            lambda: pool.fetchval("SELECT status = 'ORPHANED' FROM transfers WHERE id = $1", dropped),
            "the dropped lock to be ORPHANED",
        )
        kept = lock(own_network, 12 * ONE)  # NOTE: the bridge nonce is free again: usually the same id
        await rpc_call(source, "anvil_mine", hex(4))
        await eventually(
            lambda: pool.fetchval("SELECT status = 'CONFIRMED' FROM transfers WHERE id = $1", kept),
            "the lock on the new branch to be CONFIRMED",
        )
        assert not task.done(), "the follower stopped"

    assert follower.reader.hinted_reads > 0
    assert await pool.fetchval("SELECT count(*) FROM reorgs WHERE chain_id = $1", source.chain_id) == 1
    history = await pool.fetch(
        "SELECT from_status, to_status FROM transfer_status_history WHERE transfer_id = $1 ORDER BY id",
        dropped,
    )
    assert [(r["from_status"], r["to_status"]) for r in history][:2] == [
        (None, "PENDING"),
        ("PENDING", "ORPHANED"),
    ]
    rows = await pool.fetch(
        "SELECT id, amount FROM transfers WHERE source_chain_id = $1 AND status <> 'ORPHANED'",
        source.chain_id,
    )
    assert {(r["id"], int(r["amount"])) for r in rows} == await locks_on_chain(source)
    assert (dropped, 11 * ONE) not in await locks_on_chain(source)


async def rpc_call(chain: DevChain, method: str, *params: object) -> object:
    rpc = RpcClient(chain.url)
    try:
        return await rpc.call(method, *params)
    finally:
        await rpc.close()


async def test_the_blocks_table_keeps_only_the_window_a_reorg_walk_needs(
    dev_chains: DevNetwork, pool: asyncpg.Pool
) -> None:
    source = dev_chains.chains[0]
    chain = dev_chains.config.chain_by_id[source.chain_id]
    rpc = RpcClient(source.url)
    try:
        await rpc.call("anvil_mine", hex(400))
    finally:
        await rpc.close()
    transfer = lock(dev_chains, 950 * SMALL)
    follower = Follower(chain, dev_chains.config, pool)
    try:
        for _ in range(100):
            if (await follower.step()).caught_up:
                break
        await rpc_mine(source, pruning.PRUNE_EVERY)
        for _ in range(100):
            if (await follower.step()).caught_up:
                break
    finally:
        await follower.close()

    cursor = await pool.fetchval("SELECT indexed_block FROM chains WHERE chain_id = $1", source.chain_id)
    dense = follower.reader.dense_window
    keep_from = pruning.keep_from(cursor, dense)
    kept = await pool.fetch("SELECT number FROM blocks WHERE chain_id = $1 ORDER BY number", source.chain_id)
    # NOTE: the shared chains may hold releases other tests made of locks this database
    # never indexed: their blocks are kept on purpose (the next test covers that rule).
    unlinked = {
        r["block_number"]
        for r in await pool.fetch(
            "SELECT block_number FROM releases_seen AS r WHERE chain_id = $1"
            " AND NOT EXISTS (SELECT 1 FROM transfers AS t WHERE t.id = r.transfer_id)",
            source.chain_id,
        )
    }
    numbers = [r["number"] for r in kept if r["number"] not in unlinked]
    assert keep_from > 0, "the chain must be longer than the kept window for this test"
    assert min(numbers) >= keep_from, "blocks below the kept window were not pruned"
    assert set(range(cursor - dense + 1, cursor + 1)) <= set(numbers), "the dense window must stay whole"
    assert len(numbers) <= dense + pruning.PRUNE_MARGIN + pruning.PRUNE_EVERY
    assert await indexed(pool, transfer)


async def rpc_mine(chain: DevChain, blocks: int) -> None:
    rpc = RpcClient(chain.url)
    try:
        await rpc.call("anvil_mine", hex(blocks))
    finally:
        await rpc.close()


async def test_pruning_keeps_the_block_of_a_release_whose_lock_is_not_indexed_yet(
    dev_chains: DevNetwork, pool: asyncpg.Pool
) -> None:
    chain_b = dev_chains.chains[1]
    await pool.execute(
        """
        INSERT INTO blocks (chain_id, number, hash, parent_hash, timestamp)
        SELECT $1, n, '0x' || lpad(to_hex(n), 64, '0'), '0x' || lpad(to_hex(n - 1), 64, '0'), now()
          FROM generate_series(1, 300) AS n
        """,
        chain_b.chain_id,
    )
    waiting = transfer_id(dev_chains.chains[0].chain_id, dev_chains.chains[0].bridge, 424242)
    await pool.execute(
        """
        INSERT INTO releases_seen (chain_id, tx_hash, log_index, bridge, block_number, block_hash,
                                   source_chain_id, source_bridge, nonce, recipient, amount, transfer_id)
        VALUES ($1, '0x' || repeat('ab', 32), 0, $2, 50, '0x' || lpad(to_hex(50), 64, '0'),
                $3, $4, 424242, $5, 1, $6)
        """,
        chain_b.chain_id,
        chain_b.bridge.lower(),
        dev_chains.chains[0].chain_id,
        dev_chains.chains[0].bridge.lower(),
        dev_chains.recipient_address,
        waiting,
    )
    async with pool.acquire() as conn:
        deleted = await pruning.prune_blocks(conn, chain_b.chain_id, 200)
    numbers = [
        r["number"]
        for r in await pool.fetch(
            "SELECT number FROM blocks WHERE chain_id = $1 ORDER BY number", chain_b.chain_id
        )
    ]

    assert deleted == 198
    assert numbers == [50, *range(200, 301)]
