"""The indexer against real anvil chains and a real PostgreSQL.

A lock on chain A becomes a PENDING transfer, then CONFIRMED once blocks are mined
(announced by NOTIFY); a release on chain B moves it to RELEASED and FINALIZED;
restarts and replays never duplicate rows or history; a dead, wrong-chain or
secret-bearing endpoint is rotated away from without leaking its URL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
import pytest

from ferry.deploy import bridge_contract, lock_tokens, send_transaction
from ferry.devchain import free_port
from ferry.devstack import DevChain, DevNetwork
from ferry.domain import CHANGES_CHANNEL, transfer_id
from ferry.rpc import RpcClient
from ferry.settings import ChainConfig
from indexer import service
from indexer.endpoints import Endpoints
from indexer.follower import Follower, StepResult
from relayer.eip712 import ReleaseOrder, sign_release_order
from tests.support.indexing import eventually, following

AMOUNT = 25 * 10**18
T = TypeVar("T")


@pytest.fixture
async def followers(dev_chains: DevNetwork, pool: asyncpg.Pool) -> AsyncIterator[list[Follower]]:
    """One follower per dev chain (A first, B second), on a freshly prepared database."""
    config = dev_chains.config
    await service.prepare_database(pool, config)
    started = [Follower(chain, config, pool) for chain in config.chains]
    yield started
    for follower in started:
        await follower.close()


async def catch_up(follower: Follower) -> StepResult:
    for _ in range(1_000):
        result = await follower.step()
        if result.caught_up:
            return result
    raise AssertionError(f"{follower.chain.name} did not catch up")


async def mine(chain: DevChain, blocks: int) -> None:
    rpc = RpcClient(chain.url)
    try:
        await rpc.call("anvil_mine", hex(blocks))
    finally:
        await rpc.close()


def lock(network: DevNetwork, source: DevChain, target: DevChain) -> tuple[str, str, int]:
    """Lock AMOUNT on ``source`` for the network's recipient on ``target``: (transfer id, tx hash, block)."""
    receipt = lock_tokens(
        source.w3,
        network.user_key,
        source.token,
        source.bridge,
        AMOUNT,
        network.recipient_address,
        target.chain_id,
    )
    return transfer_id(source.chain_id, source.bridge, receipt.nonce), receipt.tx_hash, receipt.block_number


def release(network: DevNetwork, source: DevChain, target: DevChain, transfer: str) -> str:
    """Release ``transfer`` on ``target`` the way the relayer would; returns the release tx hash."""
    nonce = int(transfer.rsplit(":", 1)[1])
    order = ReleaseOrder(source.chain_id, source.bridge, nonce, network.recipient_address, AMOUNT)
    keys = [bytes.fromhex(key.removeprefix("0x")) for key in network.signer_keys]
    signatures = sign_release_order(order, target.chain_id, target.bridge, keys)
    call = bridge_contract(target.w3, target.bridge).functions.release(order.as_tuple(), signatures)
    receipt = send_transaction(target.w3, network.submitter_key, call, "releasing")
    return str(receipt["transactionHash"].to_0x_hex())


async def transfer_row(pool: asyncpg.Pool, transfer: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM transfers WHERE id = $1", transfer)


async def history(pool: asyncpg.Pool, transfer: str) -> list[tuple[str | None, str]]:
    rows = await pool.fetch(
        "SELECT from_status, to_status FROM transfer_status_history WHERE transfer_id = $1 ORDER BY id",
        transfer,
    )
    return [(r["from_status"], r["to_status"]) for r in rows]


async def test_a_lock_becomes_pending_then_confirmed_with_a_notification(
    dev_chains: DevNetwork, pool: asyncpg.Pool, followers: list[Follower], clean_db: str
) -> None:
    chain_a, chain_b = dev_chains.chains
    transfer, tx_hash, block = lock(dev_chains, chain_a, chain_b)

    await catch_up(followers[0])

    row = await transfer_row(pool, transfer)
    assert row is not None
    assert row["status"] == "PENDING"
    assert row["amount"] == Decimal(AMOUNT)
    assert (row["sender"], row["recipient"]) == (dev_chains.user_address, dev_chains.recipient_address)
    assert (row["source_bridge"], row["target_bridge"]) == (chain_a.bridge.lower(), chain_b.bridge.lower())
    assert (row["lock_tx_hash"], row["lock_block_number"]) == (tx_hash, block)
    assert (row["route_id"], row["token"], row["confirmations_required"]) == ("FTT:31337-31338", "FTT", 2)
    assert await history(pool, transfer) == [(None, "PENDING")]

    listener = await asyncpg.connect(clean_db)
    notifications: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(CHANGES_CHANNEL, lambda *args: notifications.put_nowait(args[3]))
    try:
        await mine(chain_a, 1)
        result = await catch_up(followers[0])
        payload = await asyncio.wait_for(notifications.get(), timeout=30)
    finally:
        await listener.close()

    assert [(c.transfer_id, c.to_status) for c in result.changes] == [(transfer, "CONFIRMED")]
    assert (await transfer_row(pool, transfer) or {})["status"] == "CONFIRMED"
    assert await history(pool, transfer) == [(None, "PENDING"), ("PENDING", "CONFIRMED")]
    confirmed_id = await pool.fetchval(
        "SELECT id FROM transfer_status_history WHERE transfer_id = $1 AND to_status = 'CONFIRMED'", transfer
    )
    assert payload == str(confirmed_id)


async def test_a_release_on_the_target_chain_moves_the_transfer_to_released_then_finalized(
    dev_chains: DevNetwork, pool: asyncpg.Pool, followers: list[Follower]
) -> None:
    chain_a, chain_b = dev_chains.chains
    transfer, _, _ = lock(dev_chains, chain_a, chain_b)
    await mine(chain_a, 1)
    await catch_up(followers[0])
    release_tx = release(dev_chains, chain_a, chain_b, transfer)

    await catch_up(followers[1])

    row = await transfer_row(pool, transfer)
    assert row is not None
    assert (row["status"], row["release_tx_hash"]) == ("RELEASED", release_tx)
    assert row["release_block_time"] is not None
    seen = await pool.fetchrow("SELECT * FROM releases_seen WHERE transfer_id = $1", transfer)
    assert seen is not None
    assert (seen["chain_id"], seen["recipient"], seen["amount"]) == (
        chain_b.chain_id,
        dev_chains.recipient_address,
        Decimal(AMOUNT),
    )

    await mine(chain_b, 1)
    await catch_up(followers[1])

    assert await history(pool, transfer) == [
        (None, "PENDING"),
        ("PENDING", "CONFIRMED"),
        ("CONFIRMED", "RELEASED"),
        ("RELEASED", "FINALIZED"),
    ]


async def test_a_release_seen_before_its_lock_is_linked_when_the_lock_is_indexed(
    dev_chains: DevNetwork, pool: asyncpg.Pool, followers: list[Follower]
) -> None:
    chain_a, chain_b = dev_chains.chains
    transfer, _, _ = lock(dev_chains, chain_b, chain_a)
    await mine(chain_b, 1)
    release_tx = release(dev_chains, chain_b, chain_a, transfer)
    await mine(chain_a, 1)

    await catch_up(followers[0])  # chain A: sees the release of a transfer it has no row for yet
    assert await transfer_row(pool, transfer) is None
    await catch_up(followers[1])  # chain B: sees the lock, already confirmed and released
    await catch_up(followers[0])  # chain A: the release is deep enough to finalize

    row = await transfer_row(pool, transfer)
    assert row is not None
    assert (row["status"], row["release_tx_hash"]) == ("FINALIZED", release_tx)
    assert [to for _, to in await history(pool, transfer)] == [
        "PENDING",
        "CONFIRMED",
        "RELEASED",
        "FINALIZED",
    ]


async def test_restarts_and_replays_never_duplicate_transfers_or_history(
    dev_chains: DevNetwork, pool: asyncpg.Pool, followers: list[Follower]
) -> None:
    chain_a, chain_b = dev_chains.chains
    transfer, _, _ = lock(dev_chains, chain_a, chain_b)
    await catch_up(followers[0])
    await followers[0].close()
    before = await _counts(pool)
    cursor = await pool.fetchval("SELECT indexed_block FROM chains WHERE chain_id = $1", chain_a.chain_id)

    await service.prepare_database(pool, dev_chains.config)  # what a restarted indexer does first
    restarted = Follower(followers[0].chain, dev_chains.config, pool)
    try:
        await catch_up(restarted)
        assert await pool.fetchval("SELECT indexed_block FROM chains WHERE chain_id = $1", 31337) == cursor
        assert await _counts(pool) == before

        await pool.execute(
            "UPDATE chains SET indexed_block = $2, indexed_block_hash = NULL WHERE chain_id = $1",
            chain_a.chain_id,
            chain_a.deploy_block - 1,
        )
        await catch_up(restarted)  # a full replay of chain A
    finally:
        await restarted.close()

    assert await _counts(pool) == before
    assert await history(pool, transfer) == [(None, "PENDING")]


async def _counts(pool: asyncpg.Pool) -> tuple[int, int, int]:
    row = await pool.fetchrow(
        """
        SELECT (SELECT count(*) FROM transfers), (SELECT count(*) FROM transfer_status_history),
               (SELECT count(*) FROM releases_seen)
        """
    )
    assert row is not None
    return row[0], row[1], row[2]


async def test_failing_endpoints_are_rotated_away_without_leaking_their_url(
    dev_chains: DevNetwork, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    chain_a, chain_b = dev_chains.chains
    config = dev_chains.config
    await service.prepare_database(pool, config)
    chain: ChainConfig = config.chain_by_id[chain_a.chain_id]
    endpoints = Endpoints(
        chain,
        [
            RpcClient(f"http://127.0.0.1:{free_port()}/v3/SECRET-API-KEY", timeout=2),
            RpcClient(chain_b.url),  # answers, but for the wrong chain
            RpcClient(chain_a.url),
        ],
    )
    follower = Follower(chain, config, pool, endpoints)
    transfer, _, _ = lock(dev_chains, chain_a, chain_b)
    caplog.set_level(logging.WARNING, logger="indexer")
    async with following(follower):
        await eventually(lambda: transfer_row(pool, transfer), "the lock to be indexed")

    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "serves chain id 31338" in text
    assert f"127.0.0.1:{chain_b.url.rsplit(':', 1)[1]}" in text
    assert "SECRET-API-KEY" not in text


async def test_the_service_indexes_every_chain_and_stops_on_sigterm(
    dev_chains: DevNetwork, pool: asyncpg.Pool, clean_db: str, redis_url: str
) -> None:
    chain_a, chain_b = dev_chains.chains
    transfer, _, _ = lock(dev_chains, chain_b, chain_a)
    settings = dev_chains.settings(clean_db, redis_url, metrics_port=0)
    running = asyncio.create_task(service.run(settings))

    async def indexed() -> Any:
        if running.done():
            running.result()  # the service stopped on its own: show why
        heads = await pool.fetchval("SELECT count(*) FROM chains WHERE head_block IS NOT NULL")
        return await transfer_row(pool, transfer) if heads == 2 else None

    await eventually(indexed, "the service to index the lock and step every chain")
    routes = await pool.fetch("SELECT route_id FROM routes ORDER BY route_id")
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(running, timeout=30)

    assert [r["route_id"] for r in routes] == ["FTT:31337-31338", "FTT:31338-31337"]
    chains = await pool.fetch("SELECT chain_id, indexed_block, head_block FROM chains ORDER BY chain_id")
    assert [r["chain_id"] for r in chains] == [31337, 31338]
    assert all(r["indexed_block"] >= 0 and r["head_block"] is not None for r in chains)


async def test_with_finality_finalized_a_lock_waits_for_the_nodes_finalized_block(
    dev_chains: DevNetwork, pool: asyncpg.Pool
) -> None:
    chain_a, chain_b = dev_chains.chains
    config = dev_chains.config
    await service.prepare_database(pool, config)
    chain = config.chain_by_id[chain_a.chain_id].model_copy(update={"finality": "finalized"})
    follower = Follower(chain, config, pool)
    transfer, _, block = lock(dev_chains, chain_a, chain_b)
    try:
        await mine(chain_a, 5)  # more than `confirmations`, but not yet finalized
        await catch_up(follower)
        assert await finalized_block(chain_a) < block
        assert (await transfer_row(pool, transfer) or {})["status"] == "PENDING"
        while await finalized_block(chain_a) < block:
            await mine(chain_a, 16)
        await catch_up(follower)
    finally:
        await follower.close()

    assert (await transfer_row(pool, transfer) or {})["status"] == "CONFIRMED"


async def finalized_block(chain: DevChain) -> int:
    rpc = RpcClient(chain.url)
    try:
        answer = await rpc.get_block("finalized")
    finally:
        await rpc.close()
    assert answer is not None
    return int(answer["number"], 16)
