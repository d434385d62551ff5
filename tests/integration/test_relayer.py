"""The relayer against real anvil chains, PostgreSQL and Redis.

Each test locks real tokens on chain A with ``ferry.deploy.lock_tokens`` and
inserts the matching CONFIRMED transfer as the indexer would, then runs the relay
job and chain B's submitter (with the context the worker builds at start-up), or
the real ``ferry relayer`` process, and checks what a user would notice: the
recipient's balance on chain B, the transfer's status and timeline, and that the
chain released each lock once. Submitter tests also check the account's nonces
on chain: every release transaction used the next nonce, none skipped or reused.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis_asyncio
from eth_account import Account
from web3 import Web3

from ferry.contracts import TRANSFER_RELEASED_TOPIC
from ferry.deploy import LockReceipt, bridge_contract, lock_tokens, send_transaction, token_contract
from ferry.devstack import DevChain, DevNetwork, ProcessGroup
from ferry.domain import TransferStatus, transfer_id
from ferry.settings import ConfigError, route_id
from ferry.transitions import record_new
from relayer import txstore
from relayer.bridge import encode_call, encode_release_batch
from relayer.context import CONTEXT_KEY, RelayerContext, open_context
from relayer.eip712 import ReleaseOrder, sign_release_order
from relayer.jobs import relay_transfer
from relayer.submitter import ChainSubmitter
from relayer.txstore import SignedTx
from relayer.worker import run

S = TransferStatus
AMOUNT = 7 * 10**18
#: Upper bound on waits for the real worker: a failure guard, not a timing assertion.
WAIT_LIMIT = 60.0


@pytest.fixture
async def relayer(
    dev_chains: DevNetwork, clean_db: str, redis_url: str, queue_name: str
) -> AsyncIterator[RelayerContext]:
    settings = dev_chains.settings(clean_db, redis_url, queue_name=queue_name, metrics_port=0, batch_linger=0)
    context = await open_context(settings)
    yield context
    await context.close()


def new_recipient() -> str:
    address: str = Account.create().address
    return address


def chains(network: DevNetwork) -> tuple[DevChain, DevChain]:
    return network.chain(31337), network.chain(31338)


def lock(network: DevNetwork, source: DevChain, target: DevChain, recipient: str) -> LockReceipt:
    return lock_tokens(
        source.w3, network.user_key, source.token, source.bridge, AMOUNT, recipient, target.chain_id
    )


async def insert_confirmed(
    pool: asyncpg.Pool,
    network: DevNetwork,
    source: DevChain,
    locked: LockReceipt,
    recipient: str,
    target_chain_id: int,
) -> str:
    """The CONFIRMED transfer row the indexer writes for ``locked`` (factory)."""
    block = source.w3.eth.get_block(locked.block_number)
    receipt = source.w3.eth.get_transaction_receipt(locked.tx_hash)  # type: ignore[arg-type]
    log_index = next(log["logIndex"] for log in receipt["logs"] if log["address"] == source.bridge)
    tid = transfer_id(source.chain_id, source.bridge, locked.nonce)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """
            INSERT INTO transfers (id, route_id, token, source_chain_id, source_bridge, nonce,
                                   target_chain_id, sender, recipient, amount, status,
                                   confirmations_required, lock_tx_hash, lock_log_index,
                                   lock_block_number, lock_block_hash, lock_block_time)
            VALUES ($1, $2, 'FTT', $3, $4, $5, $6, $7, $8, $9, 'CONFIRMED', $10, $11, $12, $13, $14, $15)
            """,
            tid, route_id("FTT", source.chain_id, target_chain_id), source.chain_id, source.bridge.lower(),
            locked.nonce, target_chain_id, network.user_address, recipient, AMOUNT, network.confirmations,
            locked.tx_hash, log_index, locked.block_number, block["hash"].to_0x_hex(),
            datetime.fromtimestamp(block["timestamp"], UTC),
        )  # fmt: skip
        await record_new(conn, [(tid, S.CONFIRMED)])
    return tid


async def locked_transfer(network: DevNetwork, pool: asyncpg.Pool) -> tuple[str, str, LockReceipt]:
    """Lock AMOUNT on chain A for a fresh recipient on chain B; insert it CONFIRMED."""
    source, target = chains(network)
    recipient = new_recipient()
    locked = lock(network, source, target, recipient)
    tid = await insert_confirmed(pool, network, source, locked, recipient, target.chain_id)
    return tid, recipient, locked


def balance(chain: DevChain, holder: str) -> int:
    value: int = token_contract(chain.w3, chain.token).functions.balanceOf(holder).call()
    return value


def releases_on_chain(network: DevNetwork, locked: LockReceipt) -> list[str]:
    """Hashes of the transactions that emitted TransferReleased for this lock on chain B."""
    source, target = chains(network)
    logs = target.w3.eth.get_logs(
        {
            "address": Web3.to_checksum_address(target.bridge),
            "topics": [
                TRANSFER_RELEASED_TOPIC,
                "0x" + source.chain_id.to_bytes(32, "big").hex(),
                "0x" + locked.nonce.to_bytes(32, "big").hex(),
            ],
            "fromBlock": target.deploy_block,
            "toBlock": "latest",
        }
    )
    return [log["transactionHash"].to_0x_hex() for log in logs]


async def history(pool: asyncpg.Pool, tid: str) -> list[tuple[Any, ...]]:
    rows = await pool.fetch(
        """
        SELECT from_status, to_status, tx_hash FROM transfer_status_history
         WHERE transfer_id = $1 ORDER BY id
        """,
        tid,
    )
    return [tuple(row) for row in rows]


FINISHED = ("RELEASED", "FINALIZED", "HELD", "FAILED")


def submitter_for(relayer: RelayerContext, chain_id: int = 31338) -> ChainSubmitter:
    """Chain ``chain_id``'s submitter as the worker builds it (driven by hand here)."""
    return ChainSubmitter(
        relayer.chains.chain_by_id[chain_id],
        relayer.rpc[chain_id],
        relayer.pool,
        relayer.settings,
        relayer.submitter,
        relayer.signers,
    )


async def statuses(pool: asyncpg.Pool, tids: list[str]) -> dict[str, str]:
    rows = await pool.fetch("SELECT id, status FROM transfers WHERE id = ANY($1::text[])", tids)
    return {row["id"]: row["status"] for row in rows}


async def drive(
    submitter: ChainSubmitter, tids: list[str], until: tuple[str, ...] = FINISHED, *, resume: bool = True
) -> dict[str, str]:
    """Run submitter rounds until every transfer is in one of ``until``; their statuses."""
    if resume:
        await submitter.resume()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT
    while True:
        await submitter.tick()
        found = await statuses(submitter.pool, tids)
        if all(found.get(tid) in until for tid in tids):
            return {tid: found[tid] for tid in tids}
        assert loop.time() < deadline, f"transfers did not reach {until}: {found}"
        await asyncio.sleep(0.05)


async def release(relayer: RelayerContext, *tids: str) -> dict[str, str]:
    """The relay job for each transfer, then chain B's submitter until each is settled."""
    ctx = {CONTEXT_KEY: relayer}
    for tid in tids:
        assert await relay_transfer(ctx, tid) in ("handed_over", "held", "noop")
    return await drive(submitter_for(relayer), list(tids))


def account_nonce(chain: DevChain, address: str) -> int:
    return chain.w3.eth.get_transaction_count(address, "latest")  # type: ignore[arg-type]


async def release_nonces(pool: asyncpg.Pool) -> list[int]:
    rows = await pool.fetch("SELECT nonce FROM relay_txs WHERE status <> 'DROPPED' ORDER BY nonce")
    return [row["nonce"] for row in rows]


async def test_confirmed_transfer_is_released_once(dev_chains: DevNetwork, relayer: RelayerContext) -> None:
    _, target = chains(dev_chains)
    tid, recipient, locked = await locked_transfer(dev_chains, relayer.pool)
    ctx = {CONTEXT_KEY: relayer}

    assert await relay_transfer(ctx, tid) == "handed_over"
    assert await drive(submitter_for(relayer), [tid]) == {tid: "RELEASED"}

    assert balance(target, recipient) == AMOUNT
    row = await relayer.pool.fetchrow("SELECT * FROM transfers WHERE id = $1", tid)
    assert row["release_tx_hash"] is not None
    assert row["release_block_number"] is not None
    assert row["release_block_time"] is not None
    assert row["attempts"] == 1
    assert await history(relayer.pool, tid) == [
        (None, "CONFIRMED", None),
        ("CONFIRMED", "SUBMITTED", row["release_tx_hash"]),
        ("SUBMITTED", "RELEASED", row["release_tx_hash"]),
    ]
    assert releases_on_chain(dev_chains, locked) == [row["release_tx_hash"]]

    # At-least-once delivery: a second run changes nothing, on chain or in the database.
    assert await relay_transfer(ctx, tid) == "noop"
    await submitter_for(relayer).tick()
    assert balance(target, recipient) == AMOUNT
    assert releases_on_chain(dev_chains, locked) == [row["release_tx_hash"]]
    assert len(await history(relayer.pool, tid)) == 3


async def test_confirmed_transfers_go_out_together_in_one_batch_and_finalize(
    dev_chains: DevNetwork, relayer: RelayerContext
) -> None:
    _, target = chains(dev_chains)
    transfers = [await locked_transfer(dev_chains, relayer.pool) for _ in range(3)]
    tids = [tid for tid, _, _ in transfers]
    ctx = {CONTEXT_KEY: relayer}
    for tid in tids:
        assert await relay_transfer(ctx, tid) == "handed_over"
    submitter = submitter_for(relayer)
    nonce_before = account_nonce(target, relayer.submitter.address)

    assert set((await drive(submitter, tids)).values()) == {"RELEASED"}

    hashes = {tuple(releases_on_chain(dev_chains, locked)) for _, _, locked in transfers}
    assert len(hashes) == 1, "one releaseBatch transaction released all three"
    assert all(balance(target, recipient) == AMOUNT for _, recipient, _ in transfers)
    assert account_nonce(target, relayer.submitter.address) == nonce_before + 1
    # The target chain moves on by its confirmations (2): the release becomes FINALIZED.
    rpc(target, "anvil_mine", "0x2")
    assert set((await drive(submitter, tids, ("FINALIZED",), resume=False)).values()) == {"FINALIZED"}
    assert await relayer.pool.fetchval("SELECT status FROM relay_txs") == "FINAL"


async def test_release_already_processed_on_chain_is_success(
    dev_chains: DevNetwork, relayer: RelayerContext
) -> None:
    source, target = chains(dev_chains)
    tid, recipient, locked = await locked_transfer(dev_chains, relayer.pool)
    order = ReleaseOrder(source.chain_id, source.bridge, locked.nonce, recipient, AMOUNT)
    keys = [bytes.fromhex(key.removeprefix("0x")) for key in dev_chains.signer_keys]
    signatures = sign_release_order(order, target.chain_id, target.bridge, keys)
    call = bridge_contract(target.w3, target.bridge).functions.release(order.as_tuple(), signatures)
    direct = send_transaction(target.w3, dev_chains.user_key, call, "releasing directly")

    assert await release(relayer, tid) == {tid: "RELEASED"}

    assert balance(target, recipient) == AMOUNT
    row = await relayer.pool.fetchrow("SELECT * FROM transfers WHERE id = $1", tid)
    assert row["release_tx_hash"] == direct["transactionHash"].to_0x_hex()
    assert row["release_block_number"] == direct["blockNumber"]
    assert releases_on_chain(dev_chains, locked) == [row["release_tx_hash"]]
    assert [h[1:] for h in await history(relayer.pool, tid)][-1] == ("RELEASED", row["release_tx_hash"])


async def sign_and_store(relayer: RelayerContext, submitter: ChainSubmitter, tid: str) -> SignedTx:
    """What the submitter commits before broadcasting (the process then dies)."""
    await submitter.resume()
    ready = await txstore.ready_transfers(relayer.pool, 31338, 10)
    assert [t.id for t in ready] == [tid]
    batch = await submitter.batcher.build(ready)
    assert batch is not None
    fees = await submitter_fees(submitter)
    data = bytes.fromhex(batch.call_data.removeprefix("0x"))
    address, nonce = relayer.submitter.address, submitter.next_nonce
    tx_hash, raw = relayer.submitter.sign(31338, nonce, batch.bridge, data, batch.gas, fees)
    signed = SignedTx(31338, address, nonce, batch.bridge, tx_hash, data, batch.gas, raw, fees)
    assert await txstore.persist_tx(relayer.pool, signed, [tid]) is not None
    return signed


async def submitter_fees(submitter: ChainSubmitter) -> Any:
    from relayer.fees import suggest_fees

    return await suggest_fees(submitter.rpc)


async def test_release_signed_before_a_crash_is_resent_unchanged(
    dev_chains: DevNetwork, relayer: RelayerContext
) -> None:
    _, target = chains(dev_chains)
    tid, recipient, locked = await locked_transfer(dev_chains, relayer.pool)
    assert await relay_transfer({CONTEXT_KEY: relayer}, tid) == "handed_over"
    signed = await sign_and_store(relayer, submitter_for(relayer), tid)
    assert (await statuses(relayer.pool, [tid]))[tid] == "SUBMITTED"

    # A new submitter resumes from the database: the node never saw the transaction.
    assert await drive(submitter_for(relayer), [tid]) == {tid: "RELEASED"}

    assert balance(target, recipient) == AMOUNT
    assert releases_on_chain(dev_chains, locked) == [signed.tx_hash]
    assert account_nonce(target, relayer.submitter.address) == signed.nonce + 1
    assert await release_nonces(relayer.pool) == [signed.nonce]


async def test_release_the_bridge_cannot_pay_yet_waits_and_is_retried(
    dev_chains: DevNetwork, relayer: RelayerContext
) -> None:
    source, target = chains(dev_chains)
    recipient = new_recipient()
    locked = lock(dev_chains, source, target, recipient)
    tid = await insert_confirmed(relayer.pool, dev_chains, source, locked, recipient, target.chain_id)
    # More than the target bridge holds (as if liquidity had been drained).
    await relayer.pool.execute("UPDATE transfers SET amount = $2 WHERE id = $1", tid, 10**30)
    assert await relay_transfer({CONTEXT_KEY: relayer}, tid) == "handed_over"
    submitter = submitter_for(relayer)
    await submitter.resume()

    await submitter.tick()

    row = await relayer.pool.fetchrow("SELECT status, last_error, attempts FROM transfers WHERE id = $1", tid)
    assert row["status"] == "CONFIRMED"
    assert "InsufficientLiquidity" in row["last_error"]
    assert row["attempts"] == 1
    retry_at = await relayer.pool.fetchval(
        "SELECT retry_at > now() FROM relay_notes WHERE transfer_id = $1", tid
    )
    assert retry_at is True, "it waits (with back-off) before the next try"
    assert await relayer.pool.fetchval("SELECT count(*) FROM relay_txs") == 0
    assert balance(target, recipient) == 0


async def test_an_order_the_bridge_cannot_pay_is_left_out_and_its_batch_goes_without_it(
    dev_chains: DevNetwork, relayer: RelayerContext
) -> None:
    tids = [(await locked_transfer(dev_chains, relayer.pool))[0] for _ in range(3)]
    # The last order (a later position than the one the round's gas estimate samples) is more
    # than the target bridge holds: the batch's check reverts, the culprit is sorted out.
    await relayer.pool.execute("UPDATE transfers SET amount = $2 WHERE id = $1", tids[-1], 10**30)
    for tid in tids:
        assert await relay_transfer({CONTEXT_KEY: relayer}, tid) == "handed_over"
    submitter = submitter_for(relayer)
    await submitter.resume()

    await submitter.tick()

    assert await statuses(relayer.pool, tids) == {
        tids[0]: "SUBMITTED",
        tids[1]: "SUBMITTED",
        tids[2]: "CONFIRMED",
    }
    carried = await relayer.pool.fetch("SELECT transfer_id FROM relay_tx_orders")
    assert sorted(row["transfer_id"] for row in carried) == sorted(tids[:2])
    assert await relayer.pool.fetchval("SELECT count(*) FROM relay_txs") == 1
    last_error = await relayer.pool.fetchval("SELECT last_error FROM transfers WHERE id = $1", tids[-1])
    assert "InsufficientLiquidity" in last_error
    assert await drive(submitter, tids[:2], resume=False) == {tids[0]: "RELEASED", tids[1]: "RELEASED"}


async def test_transfer_on_unconfigured_route_is_held(
    dev_chains: DevNetwork, relayer: RelayerContext
) -> None:
    source, _ = chains(dev_chains)
    recipient = new_recipient()
    locked = lock(dev_chains, source, dev_chains.chain(31338), recipient)
    tid = await insert_confirmed(relayer.pool, dev_chains, source, locked, recipient, target_chain_id=4_242)

    assert await relay_transfer({CONTEXT_KEY: relayer}, tid) == "held"

    row = await relayer.pool.fetchrow("SELECT status, last_error FROM transfers WHERE id = $1", tid)
    assert row["status"] == "HELD"
    assert "FTT:31337-4242 is not configured" in row["last_error"]
    assert [h[:2] for h in await history(relayer.pool, tid)] == [(None, "CONFIRMED"), ("CONFIRMED", "HELD")]


async def test_fewer_signer_keys_than_threshold_holds_the_transfer(
    dev_chains: DevNetwork, clean_db: str, redis_url: str, queue_name: str
) -> None:
    settings = dev_chains.settings(
        clean_db, redis_url, queue_name=queue_name, signer_keys=dev_chains.signer_keys[0], batch_linger=0
    )
    relayer = await open_context(settings)
    try:
        _, target = chains(dev_chains)
        tid, recipient, _ = await locked_transfer(dev_chains, relayer.pool)

        assert await release(relayer, tid) == {tid: "HELD"}

        row = await relayer.pool.fetchrow("SELECT status, last_error FROM transfers WHERE id = $1", tid)
        assert "needs 2 signatures" in row["last_error"]
        assert balance(target, recipient) == 0
    finally:
        await relayer.close()


async def test_relayer_without_submitter_key_refuses_to_start(
    dev_chains: DevNetwork, database_url: str, redis_url: str, queue_name: str
) -> None:
    settings = dev_chains.settings(database_url, redis_url, queue_name=queue_name, submitter_key=None)
    with pytest.raises(ConfigError, match="FERRY_SUBMITTER_KEY"):
        await run(settings)


# --------------------------------------------------------------------- the real worker


async def wait_for_status(pool: asyncpg.Pool, tid: str, status: str, worker: subprocess.Popen[bytes]) -> None:
    """Wait until the transfer is in ``status`` (RELEASED also accepts the FINALIZED that follows)."""
    accepted = {status, "FINALIZED"} if status == "RELEASED" else {status}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT
    while await pool.fetchval("SELECT status FROM transfers WHERE id = $1", tid) not in accepted:
        assert worker.poll() is None, f"the relayer exited early with code {worker.returncode}"
        assert loop.time() < deadline, f"transfer {tid} did not reach {status}"
        await asyncio.sleep(0.1)


async def flush_queue(redis_url: str, queue_name: str) -> None:
    """Lose everything this test's queue holds in Redis (and only that): the queue and its jobs."""
    client = redis_asyncio.Redis.from_url(redis_url)
    try:
        keys = [queue_name, f"{queue_name}:health-check"]
        # NOTE: job ids start with the queue name (relayer.sweep.vet_job_id and relay_job_id).
        keys += [key async for key in client.scan_iter(match=f"arq:*:{queue_name}:*")]
        await client.delete(*keys)
    finally:
        await client.aclose()


def rpc(chain: DevChain, method: str, *params: Any) -> Any:
    return chain.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]


async def test_worker_releases_from_the_database_across_redis_flush_and_kill(
    dev_chains: DevNetwork, relayer: RelayerContext, redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    _, target = chains(dev_chains)
    env = {
        **dev_chains.env(),
        "FERRY_DATABASE_URL": relayer.settings.database_url.get_secret_value(),
        "FERRY_REDIS_URL": redis_url,
        "FERRY_QUEUE_NAME": queue_name,
        "FERRY_METRICS_PORT": "0",
        "FERRY_SWEEP_INTERVAL": "0.5",
        "FERRY_BATCH_LINGER": "0",
        "FERRY_LOG_FORMAT": "text",
    }
    group = ProcessGroup(env, logdir=tmp_path)
    try:
        worker = group.start("relayer-1", "relayer")
        # The sweeper finds a confirmed transfer on its own: nothing is enqueued by hand.
        first, first_recipient, _ = await locked_transfer(dev_chains, relayer.pool)
        await wait_for_status(relayer.pool, first, "RELEASED", worker)
        assert balance(target, first_recipient) == AMOUNT

        # Chain B stops mining: the next release is signed, sent and left in flight...
        rpc(target, "evm_setAutomine", False)
        second, second_recipient, second_lock = await locked_transfer(dev_chains, relayer.pool)
        await wait_for_status(relayer.pool, second, "SUBMITTED", worker)
        # ... when the worker is killed mid-job and Redis loses the queue.
        group.kill("relayer-1", signal.SIGKILL)
        await flush_queue(redis_url, queue_name)
        third, third_recipient, _ = await locked_transfer(dev_chains, relayer.pool)

        worker = group.start("relayer-2", "relayer")
        rpc(target, "evm_mine")
        rpc(target, "evm_setAutomine", True)
        await wait_for_status(relayer.pool, second, "RELEASED", worker)
        await wait_for_status(relayer.pool, third, "RELEASED", worker)
    finally:
        rpc(target, "evm_setAutomine", True)
        group.stop()

    assert group.processes["relayer-2"].returncode == 0, "SIGTERM must stop the relayer cleanly"
    assert balance(target, second_recipient) == AMOUNT
    assert balance(target, third_recipient) == AMOUNT
    # NOTE: the version that was mined: relayer-2 may also have re-priced the release left in
    # flight (same nonce, a new hash in relay_txs.tx_hash) before the block took the first one.
    sent = await relayer.pool.fetch(
        "SELECT x.mined_hash, t.release_tx_hash FROM relay_txs AS x"
        " JOIN relay_tx_orders AS o ON o.tx_id = x.id JOIN transfers AS t ON t.id = o.transfer_id"
        " WHERE o.transfer_id = $1",
        second,
    )
    assert [tuple(row) for row in sent] == [(sent[0]["mined_hash"], sent[0]["mined_hash"])]
    assert releases_on_chain(dev_chains, second_lock) == [sent[0]["mined_hash"]]
    timeline = [h[:2] for h in await history(relayer.pool, second)]
    assert timeline[:3] == [(None, "CONFIRMED"), ("CONFIRMED", "SUBMITTED"), ("SUBMITTED", "RELEASED")]
    assert timeline[3:] in ([], [("RELEASED", "FINALIZED")]), "later blocks may already finalize it"


@pytest.mark.parametrize("orders", [1, 3, 50])
def test_release_batch_call_data_encoded_by_hand_equals_the_abi_encoding(orders: int) -> None:
    keys = [bytes([1]) * 32, bytes([2]) * 32]
    bridge = "0x" + "ef" * 20
    batch = [ReleaseOrder(31337, "0x" + "ab" * 20, n, new_recipient(), 10**15 + n) for n in range(orders)]
    # One or two signatures per order: the nested arrays' offsets differ.
    signatures = [sign_release_order(o, 31338, bridge, keys[: 1 + n % 2]) for n, o in enumerate(batch)]
    tuples = [o.as_tuple() for o in batch]

    assert encode_release_batch(tuples, signatures) == encode_call("releaseBatch", tuples, signatures)
