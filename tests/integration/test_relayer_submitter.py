"""The submitter against a real anvil: stuck transactions, lost transactions, reorged releases.

Each test hands real locks to chain B's submitter (``relayer.submitter``) and
drives it round by round while it plays the node's part with anvil's controls:
automining off, a base fee above what a transaction offers, a transaction
dropped from the pool, a block reorged away. What is checked is what users and
operators notice: every lock released once on chain, the transfer's timeline,
and the submitting account's nonces, which never skip and never repeat.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY

from ferry.devchain import DEV_ACCOUNTS
from ferry.devstack import DevNetwork
from ferry.rpc import RpcError
from relayer.context import CONTEXT_KEY, RelayerContext, open_context
from relayer.jobs import relay_transfer
from relayer.submitter import Broadcast, ChainSubmitter, judge_refusal
from tests.integration.test_relayer import (
    AMOUNT,
    WAIT_LIMIT,
    account_nonce,
    balance,
    chains,
    drive,
    history,
    locked_transfer,
    release_nonces,
    releases_on_chain,
    rpc,
    statuses,
    submitter_for,
)

OpenRelayer = Callable[..., Any]


@pytest.fixture
async def open_relayer(
    dev_chains: DevNetwork, clean_db: str, redis_url: str, queue_name: str
) -> AsyncIterator[OpenRelayer]:
    opened: list[RelayerContext] = []

    async def open_with(**settings: Any) -> RelayerContext:
        values = {"queue_name": queue_name, "metrics_port": 0, "batch_linger": 0, **settings}
        context = await open_context(dev_chains.settings(clean_db, redis_url, **values))
        opened.append(context)
        return context

    yield open_with
    _, target = chains(dev_chains)
    rpc(target, "evm_setAutomine", True)
    rpc(target, "evm_mine")
    for context in opened:
        await context.close()


async def hand_over(relayer: RelayerContext, count: int, network: DevNetwork) -> list[tuple[str, str, Any]]:
    transfers = [await locked_transfer(network, relayer.pool) for _ in range(count)]
    for tid, _, _ in transfers:
        assert await relay_transfer({CONTEXT_KEY: relayer}, tid) == "handed_over"
    return transfers


async def paused(
    relayer: RelayerContext, network: DevNetwork, count: int
) -> tuple[list[tuple[str, str, Any]], int, ChainSubmitter]:
    """``count`` transfers handed over, chain B's submitter resumed, chain B mining only on ``evm_mine``.

    Returns the transfers, the submitting account's nonce count before their releases, the submitter.
    """
    _, target = chains(network)
    transfers = await hand_over(relayer, count, network)
    nonce_before = account_nonce(target, relayer.submitter.address)
    submitter = submitter_for(relayer)
    await submitter.resume()
    rpc(target, "evm_setAutomine", False)
    return transfers, nonce_before, submitter


async def ticks_until(submitter: ChainSubmitter, query: str, *args: Any) -> Any:
    """Submitter rounds until ``query`` answers something truthy; that answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT
    while True:
        await submitter.tick()
        answer = await submitter.pool.fetchval(query, *args)
        if answer:
            return answer
        assert loop.time() < deadline, f"no answer to {query!r}"
        await asyncio.sleep(0.1)


async def test_stuck_release_is_replaced_with_higher_fees_and_mined_with_the_same_nonce(
    dev_chains: DevNetwork, open_relayer: OpenRelayer
) -> None:
    relayer = await open_relayer(replace_after=0.5)
    _, target = chains(dev_chains)
    [(tid, recipient, locked)], nonce_before, submitter = await paused(relayer, dev_chains, 1)

    await submitter.tick()
    first = await relayer.pool.fetchrow("SELECT tx_hash, nonce, max_fee_per_gas FROM relay_txs")
    assert first["nonce"] == nonce_before
    # The base fee jumps above what the release offers: blocks are mined without it.
    rpc(target, "anvil_setNextBlockBaseFeePerGas", hex(int(first["max_fee_per_gas"]) * 4))
    rpc(target, "evm_mine")
    assert target.w3.eth.get_transaction_count(relayer.submitter.address) == nonce_before  # type: ignore[arg-type]

    await ticks_until(submitter, "SELECT replacements >= 1 FROM relay_txs")
    rpc(target, "evm_mine")
    assert await drive(submitter, [tid], resume=False) == {tid: "RELEASED"}

    row = await relayer.pool.fetchrow("SELECT * FROM relay_txs")
    assert row["nonce"] == first["nonce"]
    assert row["earlier_hashes"][-1] == first["tx_hash"]
    assert row["max_fee_per_gas"] >= first["max_fee_per_gas"] * 9 // 8
    assert releases_on_chain(dev_chains, locked) == [row["tx_hash"]]
    assert row["tx_hash"] != first["tx_hash"]
    assert target.w3.eth.get_transaction_receipt(row["tx_hash"])["status"] == 1  # type: ignore[arg-type]
    assert account_nonce(target, relayer.submitter.address) == nonce_before + 1
    assert balance(target, recipient) == AMOUNT
    assert (await history(relayer.pool, tid))[-1][1:] == ("RELEASED", row["tx_hash"])


async def test_a_release_priced_at_the_fee_cap_stays_as_it_is_and_alerts_until_it_is_mined(
    dev_chains: DevNetwork, open_relayer: OpenRelayer
) -> None:
    """At ``max_fee_per_gas`` a stuck release is not bumped (no spending without bound).

    The gauge counts it while it waits: after the overdue look that found it at the cap,
    and after a block of better offers too (outbid at the cap re-prices nothing either);
    and it drops to 0 once the release is mined.
    """
    _, target = chains(dev_chains)
    base_fee = int(target.w3.eth.get_block("latest")["baseFeePerGas"])
    cap = base_fee  # NOTE: below the quote (twice the next base fee, at least 7/8 of it, plus a tip)
    relayer = await open_relayer(replace_after=0.2, max_fee_per_gas=cap)
    [(tid, recipient, locked)], nonce_before, submitter = await paused(relayer, dev_chains, 1)
    await ticks_until(submitter, "SELECT count(*) = 1 FROM relay_txs")
    first = await relayer.pool.fetchrow("SELECT * FROM relay_txs")
    assert first["max_fee_per_gas"] == cap
    # Blocks come with a base fee above the cap: the release cannot be mined.
    rpc(target, "anvil_setNextBlockBaseFeePerGas", hex(cap * 4))
    rpc(target, "evm_mine")
    gauge = {"chain": target.name}

    await asyncio.sleep(0.3)  # NOTE: past replace_after
    await ticks_until(submitter, "SELECT true")
    assert REGISTRY.get_sample_value("ferry_relayer_stuck_at_fee_cap", gauge) == 1
    row = await relayer.pool.fetchrow("SELECT * FROM relay_txs")
    assert (row["tx_hash"], row["replacements"], row["max_fee_per_gas"]) == (first["tx_hash"], 0, cap)

    # A block full of better offers, none of the account's: outbid, but at the cap.
    gas_limit = target.w3.eth.get_block("latest")["gasLimit"]
    rpc(target, "evm_setBlockGasLimit", hex(3 * 21_000))
    outbid(dev_chains, first, count=3)
    rpc(target, "evm_mine")
    assert len(target.w3.eth.get_block("latest")["transactions"]) == 3
    rpc(target, "evm_setBlockGasLimit", hex(gas_limit))
    await submitter.tick()
    assert REGISTRY.get_sample_value("ferry_relayer_stuck_at_fee_cap", gauge) == 1
    assert await relayer.pool.fetchval("SELECT replacements FROM relay_txs") == 0

    # The base fee falls again. anvil dropped the release from its pool meanwhile (its fee cap
    # was below the base fee): the follower's gap repair sends the same transaction again.
    rpc(target, "anvil_setNextBlockBaseFeePerGas", hex(base_fee // 2))
    rpc(target, "evm_mine")
    rpc(target, "evm_setAutomine", True)
    assert await drive(submitter, [tid], resume=False) == {tid: "RELEASED"}
    assert REGISTRY.get_sample_value("ferry_relayer_stuck_at_fee_cap", gauge) == 0
    assert releases_on_chain(dev_chains, locked) == [first["tx_hash"]]
    assert account_nonce(target, relayer.submitter.address) == nonce_before + 1
    assert balance(target, recipient) == AMOUNT


async def test_release_a_full_block_left_out_for_better_offers_is_re_priced_at_the_next_head(
    dev_chains: DevNetwork, open_relayer: OpenRelayer
) -> None:
    """Outbid: not after replace_after (30 s here), at the first head that shows it.

    The block's gas limit is cut to what the release needs plus two plain transfers, and
    three plain transfers from another account offer a fee cap and tip ten times the
    release's: the block takes those three and has no room left for the release.
    """
    relayer = await open_relayer(replace_after=30)
    _, target = chains(dev_chains)
    [(tid, recipient, locked)], nonce_before, submitter = await paused(relayer, dev_chains, 1)
    await ticks_until(submitter, "SELECT count(*) = 1 FROM relay_txs")
    await submitter.tick()  # NOTE: a look at the same head: the release is seen waiting there
    first = await relayer.pool.fetchrow("SELECT * FROM relay_txs")
    outbid_before = REGISTRY.get_sample_value(
        "ferry_relayer_replacements_total", {"chain": target.name, "reason": "outbid"}
    ) or 0.0  # fmt: skip

    gas_limit = target.w3.eth.get_block("latest")["gasLimit"]
    rpc(target, "evm_setBlockGasLimit", hex(first["gas"] + 2 * 21_000 - 1))
    outbid(dev_chains, first, count=3)
    rpc(target, "evm_mine")
    block = target.w3.eth.get_block("latest")
    assert len(block["transactions"]) == 3, "the block took the better offers only"
    rpc(target, "evm_setBlockGasLimit", hex(gas_limit))

    await submitter.tick()
    replaced = await relayer.pool.fetchrow("SELECT * FROM relay_txs")
    assert replaced["replacements"] == 1, "not re-priced at the head that showed it outbid"
    assert REGISTRY.get_sample_value(
        "ferry_relayer_replacements_total", {"chain": target.name, "reason": "outbid"}
    ) == outbid_before + 1  # fmt: skip
    assert replaced["max_fee_per_gas"] > first["max_fee_per_gas"] * 10
    assert replaced["max_priority_fee_per_gas"] > first["max_priority_fee_per_gas"] * 10

    await submitter.tick()  # NOTE: another look at the same head re-prices nothing more
    assert await relayer.pool.fetchval("SELECT replacements FROM relay_txs") == 1
    rpc(target, "evm_mine")
    assert await drive(submitter, [tid], resume=False) == {tid: "RELEASED"}
    row = await relayer.pool.fetchrow("SELECT * FROM relay_txs")
    assert row["nonce"] == nonce_before
    assert releases_on_chain(dev_chains, locked) == [row["tx_hash"]] == [replaced["tx_hash"]]
    assert account_nonce(target, relayer.submitter.address) == nonce_before + 1
    assert balance(target, recipient) == AMOUNT


async def test_releases_left_out_of_a_block_that_took_an_earlier_one_of_theirs_are_not_re_priced(
    dev_chains: DevNetwork, open_relayer: OpenRelayer
) -> None:
    """The account's queue moved: the block was full, but not of better offers alone.

    A better offer and the first release fill the block (its gas limit is cut to fit
    exactly those); the second release is left out. Nothing is re-priced: a backlog of
    releases fills blocks itself, and bumping it at every block would pay for nothing.
    """
    relayer = await open_relayer(batch_size=1, replace_after=30)
    _, target = chains(dev_chains)
    transfers, nonce_before, submitter = await paused(relayer, dev_chains, 2)
    await ticks_until(submitter, "SELECT count(*) = 2 FROM relay_txs")
    await submitter.tick()
    first = await relayer.pool.fetchrow("SELECT * FROM relay_txs ORDER BY nonce LIMIT 1")

    gas_limit = target.w3.eth.get_block("latest")["gasLimit"]
    rpc(target, "evm_setBlockGasLimit", hex(21_000 + first["gas"]))
    outbid(dev_chains, first, count=1)
    rpc(target, "evm_mine")
    assert len(target.w3.eth.get_block("latest")["transactions"]) == 2, "the better offer and one release"
    assert account_nonce(target, relayer.submitter.address) == nonce_before + 1
    rpc(target, "evm_setBlockGasLimit", hex(gas_limit))

    await submitter.tick()
    rows = await relayer.pool.fetch("SELECT replacements FROM relay_txs ORDER BY nonce")
    assert [row["replacements"] for row in rows] == [0, 0]
    rpc(target, "evm_mine")
    tids = [tid for tid, _, _ in transfers]
    assert set((await drive(submitter, tids, resume=False)).values()) <= {"RELEASED", "FINALIZED"}
    assert all(len(releases_on_chain(dev_chains, locked)) == 1 for _, _, locked in transfers)
    assert await release_nonces(relayer.pool) == [nonce_before, nonce_before + 1]


def outbid(network: DevNetwork, release: Any, count: int) -> None:
    """``count`` plain transfers on chain B from another account, at ten times ``release``'s fees."""
    _, target = chains(network)
    competitor, competitor_key = DEV_ACCOUNTS[9]
    nonce = target.w3.eth.get_transaction_count(competitor, "pending")  # type: ignore[arg-type]
    for index in range(count):
        offer = {"type": 2, "chainId": target.chain_id, "nonce": nonce + index, "to": competitor, "value": 0,
                 "gas": 21_000, "maxFeePerGas": int(release["max_fee_per_gas"]) * 10,
                 "maxPriorityFeePerGas": int(release["max_priority_fee_per_gas"]) * 10}  # fmt: skip
        signed = target.w3.eth.account.sign_transaction(offer, competitor_key)
        target.w3.eth.send_raw_transaction(signed.raw_transaction)


async def test_a_restart_re_prices_only_the_releases_in_flight_longer_than_replace_after(
    dev_chains: DevNetwork, open_relayer: OpenRelayer
) -> None:
    """A new process resumes with each open release's broadcast age from the database.

    It used to start every release it read back at age "forever", so a restart re-priced
    (and paid more for) everything in flight at once, however recently it was sent.
    """
    relayer = await open_relayer(batch_size=1, replace_after=30)
    _, _, submitter = await paused(relayer, dev_chains, 2)
    await ticks_until(submitter, "SELECT count(*) = 2 FROM relay_txs")
    # As far as the database knows, the first went out an hour ago, the second just now.
    await relayer.pool.execute(
        "UPDATE relay_txs SET sent_at = now() - interval '1 hour'"
        " WHERE nonce = (SELECT min(nonce) FROM relay_txs)"
    )

    restarted = submitter_for(relayer)
    await restarted.resume()
    await restarted.confirmer.reprice()

    rows = await relayer.pool.fetch("SELECT replacements FROM relay_txs ORDER BY nonce")
    assert [row["replacements"] for row in rows] == [1, 0]


async def test_release_the_node_lost_is_resent_and_later_nonces_follow_without_a_gap(
    dev_chains: DevNetwork, open_relayer: OpenRelayer
) -> None:
    relayer = await open_relayer(batch_size=1)
    _, target = chains(dev_chains)
    transfers, nonce_before, submitter = await paused(relayer, dev_chains, 2)
    tids = [tid for tid, _, _ in transfers]

    await ticks_until(submitter, "SELECT count(*) = 2 FROM relay_txs")
    lost = await relayer.pool.fetchval("SELECT tx_hash FROM relay_txs ORDER BY nonce LIMIT 1")
    # The node forgets the first transaction; the second waits behind the gap.
    rpc(target, "anvil_dropTransaction", lost)
    assert rpc(target, "eth_getTransactionByHash", lost)["result"] is None
    await ticks_until(submitter, "SELECT true")  # a round with the gap in sight
    rpc(target, "evm_mine")

    assert set((await drive(submitter, tids, resume=False)).values()) == {"RELEASED"}
    assert await release_nonces(relayer.pool) == [nonce_before, nonce_before + 1]
    assert account_nonce(target, relayer.submitter.address) == nonce_before + 2
    assert releases_on_chain(dev_chains, transfers[0][2]) == [lost]
    assert all(len(releases_on_chain(dev_chains, locked)) == 1 for _, _, locked in transfers)


async def test_release_whose_nonce_another_transaction_took_is_dropped_at_a_later_head_and_sent_again(
    dev_chains: DevNetwork, open_relayer: OpenRelayer
) -> None:
    relayer = await open_relayer(batch_size=1)
    _, target = chains(dev_chains)
    [(tid, recipient, locked)], _, submitter = await paused(relayer, dev_chains, 1)

    await ticks_until(submitter, "SELECT count(*) = 1 FROM relay_txs")
    lost, nonce = await relayer.pool.fetchrow("SELECT tx_hash, nonce FROM relay_txs")
    # The node forgets the release and another transaction of the account takes its nonce.
    rpc(target, "anvil_dropTransaction", lost)
    other = target.w3.eth.account.sign_transaction(
        {"type": 2, "chainId": target.chain_id, "nonce": nonce, "to": recipient, "value": 0, "gas": 21_000,
         "maxFeePerGas": 10**11, "maxPriorityFeePerGas": 10**9},
        dev_chains.submitter_key,
    )  # fmt: skip
    target.w3.eth.send_raw_transaction(other.raw_transaction)
    rpc(target, "evm_mine")

    # The first look below the mined count without a receipt could be a node that has not
    # stored the new block's receipts yet (anvil answers the count first): not dropped yet.
    await submitter.confirmer.check()
    assert await relayer.pool.fetchval("SELECT status FROM relay_txs WHERE tx_hash = $1", lost) == "SENT"
    rpc(target, "evm_mine")
    rpc(target, "evm_setAutomine", True)

    assert await drive(submitter, [tid], resume=False) == {tid: "RELEASED"}
    assert await relayer.pool.fetchval("SELECT status FROM relay_txs WHERE tx_hash = $1", lost) == "DROPPED"
    [released] = releases_on_chain(dev_chains, locked)
    assert released != lost
    assert balance(target, recipient) == AMOUNT
    assert (await history(relayer.pool, tid))[-1][1:] == ("RELEASED", released)


async def test_release_reorged_out_of_the_target_chain_is_sent_again_and_released_once(
    dev_chains: DevNetwork, open_relayer: OpenRelayer
) -> None:
    relayer = await open_relayer()
    _, target = chains(dev_chains)
    [(tid, recipient, locked)] = await hand_over(relayer, 1, dev_chains)
    submitter = submitter_for(relayer)
    assert await drive(submitter, [tid]) == {tid: "RELEASED"}
    mined = await relayer.pool.fetchrow("SELECT tx_hash, block_hash, nonce FROM relay_txs")

    # The block holding the release is replaced by one without it.
    rpc(target, "anvil_reorg", 1, [])
    assert releases_on_chain(dev_chains, locked) == []

    await ticks_until(submitter, "SELECT status = 'SENT' FROM relay_txs")
    assert (await statuses(relayer.pool, [tid]))[tid] in ("CONFIRMED", "RELEASED")
    assert await drive(submitter, [tid], resume=False) == {tid: "RELEASED"}

    again = await relayer.pool.fetchrow("SELECT tx_hash, block_hash, nonce, status FROM relay_txs")
    assert (again["tx_hash"], again["nonce"]) == (mined["tx_hash"], mined["nonce"]), "re-sent unchanged"
    assert again["block_hash"] != mined["block_hash"]
    assert releases_on_chain(dev_chains, locked) == [mined["tx_hash"]]
    assert balance(target, recipient) == AMOUNT
    assert [h[:2] for h in await history(relayer.pool, tid)][-3:] == [
        ("SUBMITTED", "RELEASED"),
        ("RELEASED", "CONFIRMED"),
        ("CONFIRMED", "RELEASED"),
    ]


async def test_a_broadcast_batch_judges_each_transaction_alone(
    dev_chains: DevNetwork, open_relayer: OpenRelayer
) -> None:
    relayer = await open_relayer(batch_size=1)
    _, target = chains(dev_chains)
    transfers, _, submitter = await paused(relayer, dev_chains, 2)
    tids = [tid for tid, _, _ in transfers]
    await ticks_until(submitter, "SELECT count(*) = 2 FROM relay_txs")
    sent = sorted(submitter.open.values(), key=lambda tx: tx.nonce)

    # A garbage transaction between the two does not hide their answers.
    calls = [("eth_sendRawTransaction", ["0x" + tx.raw_tx.hex()]) for tx in sent]
    answers = await submitter.rpc.batch_results(
        [calls[0], ("eth_sendRawTransaction", ["0xdeadbeef"]), calls[1]]
    )
    assert len(answers) == 3
    assert isinstance(answers[1], RpcError)
    for tx, answer in zip(sent, [answers[0], answers[2]], strict=True):
        assert answer == tx.tx_hash or (
            isinstance(answer, RpcError) and judge_refusal(answer) is Broadcast.ALREADY_KNOWN
        ), answer
    # Sending them again as the storer does is harmless: each "already known" alone.
    await submitter.transmit_all(sent, "rebroadcast")
    rpc(target, "evm_mine")

    assert set((await drive(submitter, tids, resume=False)).values()) == {"RELEASED"}
    assert all(len(releases_on_chain(dev_chains, locked)) == 1 for _, _, locked in transfers)
