"""Reorgs with ``anvil_reorg`` while the indexer and the real relayer run.

Two fresh anvil chains with ``confirmations: 4``. The indexer runs in-process
(one follower task per chain); the relayer runs as a real ``ferry relayer``
subprocess. Locks carry distinct amounts, so a release names which lock it paid.

- Every depth 1..confirmations-1: two locks per block (two users) in the last
  ``depth`` blocks; the reorg re-includes one user's locks (which may now get
  other bridge nonces) and drops the other's. In the end the releases on chain B
  are exactly the locks on chain A's canonical chain: no orphaned lock released,
  every reappearing one released, counts and amounts equal.
- A reorg deeper than confirmations takes a CONFIRMED transfer's lock: the route
  is paused, the metric and the ERROR log fire, the transfer is listed in
  ``reorgs``, and the running relayer releases nothing on that route.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from ferry.contracts import TOKENS_LOCKED_TOPIC, TRANSFER_RELEASED_TOPIC
from ferry.deploy import bridge_contract, lock_tokens, mint, send_transaction, token_contract
from ferry.devchain import DEV_ACCOUNTS
from ferry.devstack import DEPLOYER, USER, DevChain, DevNetwork, ProcessGroup, start_dev_network
from ferry.domain import transfer_id
from indexer import service
from indexer.decode import LockEvent, ReleaseEvent, decode_log
from indexer.follower import Follower

CONFIRMATIONS = 4
ONE = 10**18
SECOND_USER = DEV_ACCOUNTS[7]
WAIT = 120.0


@pytest.fixture
def network(tmp_path: Path) -> Iterator[DevNetwork]:
    net = start_dev_network(tmp_path / "chains", (31437, 31438), confirmations=CONFIRMATIONS)
    try:
        chain_a = net.chains[0]
        mint(chain_a.w3, DEPLOYER[1], chain_a.token, SECOND_USER[0], 10_000 * ONE)
        for _, key in (USER, SECOND_USER):
            approve = token_contract(chain_a.w3, chain_a.token).functions.approve(chain_a.bridge, 10**30)
            send_transaction(chain_a.w3, key, approve, "approving the bridge")
        yield net
    finally:
        net.stop()


@pytest.fixture
async def indexer(network: DevNetwork, pool: asyncpg.Pool) -> AsyncIterator[list[Follower]]:
    """Both chains followed by in-process follower tasks."""
    config = network.config
    await service.prepare_database(pool, config)
    followers = [Follower(chain, config, pool) for chain in config.chains]
    tasks = [asyncio.create_task(f.run()) for f in followers]
    yield followers
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for follower in followers:
        await follower.close()


@pytest.fixture
def relayer_env(network: DevNetwork, clean_db: str, redis_url: str, queue_name: str) -> dict[str, str]:
    return {
        **network.env(),
        "FERRY_DATABASE_URL": clean_db,
        "FERRY_REDIS_URL": redis_url,
        "FERRY_QUEUE_NAME": queue_name,
        "FERRY_METRICS_PORT": "0",
        "FERRY_SWEEP_INTERVAL": "0.5",
        "FERRY_LOG_FORMAT": "text",
    }


class Traffic:
    """Locks on chain A for chain B, as raw signed transactions that a reorg can re-include."""

    def __init__(self, network: DevNetwork) -> None:
        self.network = network
        self.source, self.target = network.chains
        self.w3 = self.source.w3
        self.count = 0

    def signed_lock(self, key: str) -> str:
        """A signed lock of a fresh, distinct amount from ``key`` (not sent)."""
        self.count += 1
        account = self.w3.eth.account.from_key(key)
        call = bridge_contract(self.w3, self.source.bridge).functions.lockTokens(
            (100 + self.count) * ONE, self.network.recipient_address, self.target.chain_id
        )
        tx = call.build_transaction(
            {
                "from": account.address,
                "nonce": self.w3.eth.get_transaction_count(account.address, "pending"),
                "gas": 300_000,
                "maxFeePerGas": 50 * 10**9,
                "maxPriorityFeePerGas": 10**9,
            }
        )
        return str(account.sign_transaction(tx).raw_transaction.to_0x_hex())

    def block_of_two_locks(self) -> str:
        """Mine one block holding a lock of each user; returns the first user's raw lock."""
        rpc(self.source, "evm_setAutomine", False)
        try:
            kept = self.signed_lock(USER[1])
            for raw in (kept, self.signed_lock(SECOND_USER[1])):
                rpc(self.source, "eth_sendRawTransaction", raw)
            rpc(self.source, "evm_mine")
        finally:
            rpc(self.source, "evm_setAutomine", True)
        return kept

    def single_lock(self) -> None:
        rpc(self.source, "eth_sendRawTransaction", self.signed_lock(USER[1]))


def rpc(chain: DevChain, method: str, *params: Any) -> Any:
    response = chain.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
    assert "error" not in response, f"{method}: {response['error']}"
    return response.get("result")


def head(chain: DevChain) -> int:
    return int(chain.w3.eth.block_number)


def chain_events(chain: DevChain) -> list[Any]:
    logs = rpc(
        chain,
        "eth_getLogs",
        {"address": chain.bridge, "fromBlock": "0x0", "toBlock": "latest",
         "topics": [[TOKENS_LOCKED_TOPIC, TRANSFER_RELEASED_TOPIC]]},
    )  # fmt: skip
    return [decode_log(chain.chain_id, log) for log in logs]


def locks_on_chain(chain: DevChain) -> set[tuple[str, int]]:
    return {(e.transfer_id, e.amount) for e in chain_events(chain) if isinstance(e, LockEvent)}


def releases_on_chain(chain: DevChain) -> list[tuple[str, int]]:
    return [(e.transfer_id, e.amount) for e in chain_events(chain) if isinstance(e, ReleaseEvent)]


async def wait_until(
    pool: asyncpg.Pool, query: str, *args: Any, what: str, relayer: ProcessGroup | None = None
) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while not await pool.fetchval(query, *args):
        assert relayer is None or not relayer.failed(), "the relayer exited early"
        assert asyncio.get_running_loop().time() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.1)


async def test_reorgs_at_every_depth_below_confirmations_never_release_an_orphaned_lock(
    network: DevNetwork,
    pool: asyncpg.Pool,
    indexer: list[Follower],
    relayer_env: dict[str, str],
    tmp_path: Path,
) -> None:
    traffic = Traffic(network)
    source, target = traffic.source, traffic.target
    relayer = ProcessGroup(relayer_env, logdir=tmp_path / "logs")
    relayer.start("relayer", "relayer")
    try:
        for depth in range(1, CONFIRMATIONS):
            traffic.single_lock()  # traffic that confirms and is relayed while reorgs happen
            rpc(source, "anvil_mine", hex(CONFIRMATIONS))
            kept = [traffic.block_of_two_locks() for _ in range(depth)]
            tip = head(source)
            await wait_until(
                pool, "SELECT indexed_block >= $1 FROM chains WHERE chain_id = $2", tip, source.chain_id,
                what=f"the locks before the depth-{depth} reorg", relayer=relayer,
            )  # fmt: skip
            rpc(source, "anvil_reorg", depth, [[raw, offset] for offset, raw in enumerate(kept)])
            await wait_until(
                pool,
                "SELECT count(*) = $1 FROM reorgs",
                depth,
                what=f"the depth-{depth} reorg",
                relayer=relayer,
            )
        rpc(source, "anvil_mine", hex(CONFIRMATIONS))
        canonical = locks_on_chain(source)
        await wait_until(
            pool,
            "SELECT count(*) = $1 FROM transfers"
            " WHERE source_chain_id = $2 AND status IN ('RELEASED', 'FINALIZED')",
            len(canonical), source.chain_id, what="every canonical lock to be released", relayer=relayer,
        )  # fmt: skip
    finally:
        relayer.stop()

    released = releases_on_chain(target)
    assert sorted(released) == sorted(canonical), "releases on B must be exactly the locks on A's chain"
    rows = await pool.fetch(
        "SELECT id, amount, status FROM transfers WHERE source_chain_id = $1", source.chain_id
    )
    live = {(r["id"], int(r["amount"])) for r in rows if r["status"] != "ORPHANED"}
    assert live == canonical
    top_nonce = max(int(tid.rsplit(":", 1)[1]) for tid, _ in canonical)
    orphaned = [r["id"] for r in rows if r["status"] == "ORPHANED"]
    assert orphaned
    assert all(int(tid.rsplit(":", 1)[1]) > top_nonce for tid in orphaned)
    moves = await pool.fetch("SELECT from_status, to_status FROM transfer_status_history")
    assert ("PENDING", "ORPHANED") in {(m[0], m[1]) for m in moves}
    assert ("ORPHANED", "PENDING") in {(m[0], m[1]) for m in moves}, "a reappearing lock comes back"
    reorgs = await pool.fetch("SELECT depth, deep FROM reorgs ORDER BY id")
    assert [(r["depth"], r["deep"]) for r in reorgs] == [(d, False) for d in range(1, CONFIRMATIONS)]
    assert not await pool.fetchval("SELECT bool_or(paused) FROM routes")


async def test_a_reappearing_lock_already_final_is_confirmed_by_the_step_that_reads_it_again(
    network: DevNetwork, pool: asyncpg.Pool
) -> None:
    """No later head is needed: the chain may stop (or heads may only come over a quiet WebSocket)."""
    source = network.chains[0]
    config = network.config
    await service.prepare_database(pool, config)
    follower = Follower(config.chain_by_id[source.chain_id], config, pool)
    raw = Traffic(network).signed_lock(USER[1])
    try:
        rpc(source, "eth_sendRawTransaction", raw)
        await step_to_the_head(follower)
        transfer = await pool.fetchval("SELECT id FROM transfers WHERE source_chain_id = $1", source.chain_id)
        rpc(source, "anvil_reorg", 1, [[raw, 0]])  # NOTE: the same lock, in the new branch's block
        rpc(source, "anvil_mine", hex(CONFIRMATIONS))  # NOTE: final at once, and no block after these
        await step_to_the_head(follower)
    finally:
        await follower.close()

    history = await pool.fetch(
        "SELECT from_status, to_status FROM transfer_status_history WHERE transfer_id = $1 ORDER BY id",
        transfer,
    )
    assert [(r["from_status"], r["to_status"]) for r in history] == [
        (None, "PENDING"),
        ("PENDING", "ORPHANED"),
        ("ORPHANED", "PENDING"),
        ("PENDING", "CONFIRMED"),
    ]


async def step_to_the_head(follower: Follower) -> None:
    """Step until a step ends at the node's head (a rollback is not the head), and not one step more."""
    for _ in range(20):
        if (await follower.step()).caught_up:
            return
    raise AssertionError("the follower did not reach the head in 20 steps")


async def test_a_reorg_deeper_than_confirmations_halts_the_route_and_nothing_is_released(
    network: DevNetwork,
    pool: asyncpg.Pool,
    indexer: list[Follower],
    relayer_env: dict[str, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    traffic = Traffic(network)
    source, target = traffic.source, traffic.target
    name = indexer[0].chain.name
    deep_before = REGISTRY.get_sample_value("ferry_indexer_deep_reorgs_total", {"chain": name}) or 0
    caplog.set_level(logging.ERROR, logger="indexer")
    traffic.single_lock()
    lock_nonce = bridge_contract(source.w3, source.bridge).functions.lockNonce().call()
    lost = transfer_id(source.chain_id, source.bridge, lock_nonce)
    rpc(source, "anvil_mine", hex(CONFIRMATIONS))
    await wait_for_status(pool, lost, "CONFIRMED")

    rpc(source, "anvil_reorg", CONFIRMATIONS + 1, [])
    await wait_until(pool, "SELECT count(*) = 1 FROM reorgs", what="the deep reorg")
    relayer = ProcessGroup(relayer_env, logdir=tmp_path / "logs")
    relayer.start("relayer", "relayer")
    try:
        # The other route keeps working: the relayer is alive and releasing.
        back = lock_back(network)
        await wait_until(
            pool, "SELECT status = 'RELEASED' FROM transfers WHERE id = $1", back,
            what="a release on the unaffected route", relayer=relayer,
        )  # fmt: skip
    finally:
        relayer.stop()

    route = await pool.fetchrow(
        "SELECT paused, paused_reason FROM routes WHERE route_id = $1", "FTT:31437-31438"
    )
    assert route is not None
    assert route["paused"] is True
    assert "reorg" in route["paused_reason"]
    reorg = await pool.fetchrow("SELECT * FROM reorgs")
    assert reorg is not None
    assert (reorg["deep"], reorg["policy"], reorg["affected_transfers"]) == (True, "halt", [lost])
    assert await pool.fetchval("SELECT status FROM transfers WHERE id = $1", lost) == "CONFIRMED"
    assert [tid for tid, _ in releases_on_chain(target)] == []
    after = REGISTRY.get_sample_value("ferry_indexer_deep_reorgs_total", {"chain": name})
    assert after == deep_before + 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(lost in message and "deeper than its finality" in message for message in errors)


def lock_back(network: DevNetwork) -> str:
    """Lock on chain B for chain A (the unaffected route); returns the transfer id."""
    chain_a, chain_b = network.chains
    receipt = lock_tokens(
        chain_b.w3,
        USER[1],
        chain_b.token,
        chain_b.bridge,
        7 * ONE,
        network.recipient_address,
        chain_a.chain_id,
    )
    rpc(chain_b, "anvil_mine", hex(CONFIRMATIONS))
    return transfer_id(chain_b.chain_id, chain_b.bridge, receipt.nonce)


async def wait_for_status(pool: asyncpg.Pool, tid: str, status: str) -> None:
    for _ in range(int(WAIT * 10)):
        if await pool.fetchval("SELECT status FROM transfers WHERE id = $1", tid) == status:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"transfer {tid} did not reach {status}")


async def test_under_policy_rollback_a_deep_reorg_orphans_the_unreleased_transfer(
    network: DevNetwork, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    config = network.config
    source = network.chains[0]
    chain = config.chain_by_id[source.chain_id].model_copy(update={"reorg_policy": "rollback"})
    await service.prepare_database(pool, config)
    follower = Follower(chain, config, pool)
    caplog.set_level(logging.ERROR, logger="indexer")
    traffic = Traffic(network)
    traffic.single_lock()
    lost = transfer_id(
        source.chain_id, source.bridge, bridge_contract(source.w3, source.bridge).functions.lockNonce().call()
    )
    rpc(source, "anvil_mine", hex(CONFIRMATIONS))
    running = asyncio.create_task(follower.run())
    try:
        await wait_for_status(pool, lost, "CONFIRMED")
        rpc(source, "anvil_reorg", CONFIRMATIONS + 1, [])
        await wait_for_status(pool, lost, "ORPHANED")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await follower.close()

    reorg = await pool.fetchrow("SELECT deep, policy, affected_transfers, paused_routes FROM reorgs")
    assert reorg is not None
    assert (reorg["deep"], reorg["policy"], reorg["affected_transfers"]) == (True, "rollback", [lost])
    assert reorg["paused_routes"] == [], "nothing was released, so no route needs pausing"
    assert not await pool.fetchval("SELECT bool_or(paused) FROM routes")
    moves = await pool.fetch(
        "SELECT from_status, to_status FROM transfer_status_history WHERE transfer_id = $1", lost
    )
    assert [(m[0], m[1]) for m in moves][-1] == ("CONFIRMED", "ORPHANED")
    assert any(
        "deeper than its finality" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR
    )
