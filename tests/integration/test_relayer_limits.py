"""Route limits, HELD transfers, operator actions and dead letters, on real chains and PostgreSQL.

Each test gives the relayer a chains file whose routes carry limits, locks real
tokens on chain A, inserts the CONFIRMED transfer as the indexer would, and runs
the relay job; operator actions go through ``operator_requests`` as the gateway
and the CLI write them, and are applied by ``relayer.operator``. What is checked
is what users and operators notice: balances on chain B, statuses and reasons,
the audit record's outcome, and the dead-letter list.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from eth_account import Account
from prometheus_client import REGISTRY

from ferry.deploy import mint
from ferry.devchain import DEV_ACCOUNTS
from ferry.devstack import DevNetwork, ProcessGroup
from ferry.domain import TransferStatus, transfer_id
from ferry.transitions import record_new
from relayer.admin import dead_letters, request_action, wait_for_outcome
from relayer.context import CONTEXT_KEY, RelayerContext, open_context
from relayer.jobs import relay_transfer
from relayer.operator import process_requests
from relayer.vetting import vet_route
from tests.integration.test_relayer import (
    AMOUNT,
    balance,
    chains,
    history,
    insert_confirmed,
    lock,
    locked_transfer,
    new_recipient,
    release,
    releases_on_chain,
    wait_for_status,
)

ROUTE_AB = "FTT:31337-31338"
OpenRelayer = Callable[..., Any]


def limited_chains_file(network: DevNetwork, directory: Path, **limits: Any) -> Path:
    """The dev chains file with ``limits`` set on the route from chain A to chain B."""
    document = yaml.safe_load(network.chains_file.read_text())
    for route in document["routes"]:
        if (route["source"], route["target"]) == (31337, 31338):
            route.update(limits)
    path = directory / "chains-limited.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture
async def open_relayer(
    dev_chains: DevNetwork, clean_db: str, redis_url: str, queue_name: str, tmp_path: Path
) -> AsyncIterator[OpenRelayer]:
    """Opens a relayer context whose A->B route has the given limits (and settings)."""
    opened: list[RelayerContext] = []

    async def open_with(settings: dict[str, Any] | None = None, **limits: Any) -> RelayerContext:
        chains_file = limited_chains_file(dev_chains, tmp_path, **limits)
        context = await open_context(
            dev_chains.settings(
                clean_db, redis_url, queue_name=queue_name, metrics_port=0, chains_file=chains_file,
                **{"batch_linger": 0, **(settings or {})},
            )
        )  # fmt: skip
        opened.append(context)
        return context

    yield open_with
    for context in opened:
        await context.close()


async def act(relayer: RelayerContext, action: str, tid: str) -> str:
    """An operator request as the gateway writes it, applied by the relayer; its outcome."""
    request_id = await request_action(relayer.pool, action, tid, actor="test-operator")
    assert await process_requests(relayer.pool) == 1
    outcome = await wait_for_outcome(relayer.pool, request_id, 0)
    assert outcome is not None
    return outcome


async def status_and_reason(relayer: RelayerContext, tid: str) -> tuple[str, str | None]:
    row = await relayer.pool.fetchrow("SELECT status, last_error FROM transfers WHERE id = $1", tid)
    return row["status"], row["last_error"]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_transfer_over_the_amount_limit_is_held_until_approved(
    dev_chains: DevNetwork, open_relayer: OpenRelayer
) -> None:
    relayer = await open_relayer(max_amount=AMOUNT - 1)
    _, target = chains(dev_chains)
    tid, recipient, locked = await locked_transfer(dev_chains, relayer.pool)
    ctx = {CONTEXT_KEY: relayer}
    holds_before = metric("ferry_relayer_limit_holds_total", route=ROUTE_AB, limit="max_amount")

    assert await relay_transfer(ctx, tid) == "held"
    status, reason = await status_and_reason(relayer, tid)
    assert status == "HELD"
    assert reason is not None
    assert f"per-transfer limit of {AMOUNT - 1}" in reason
    assert balance(target, recipient) == 0
    assert metric("ferry_relayer_limit_holds_total", route=ROUTE_AB, limit="max_amount") == holds_before + 1
    # A held transfer is not owed: another delivery of the job leaves it alone.
    assert await relay_transfer(ctx, tid) == "noop"

    assert await act(relayer, "APPROVE", tid) == "approved: released despite its hold"
    assert await release(relayer, tid) == {tid: "RELEASED"}

    assert balance(target, recipient) == AMOUNT
    assert len(releases_on_chain(dev_chains, locked)) == 1
    assert [h[:2] for h in await history(relayer.pool, tid)] == [
        (None, "CONFIRMED"),
        ("CONFIRMED", "HELD"),
        ("HELD", "CONFIRMED"),
        ("CONFIRMED", "SUBMITTED"),
        ("SUBMITTED", "RELEASED"),
    ]
    audit = await relayer.pool.fetchrow("SELECT * FROM operator_requests WHERE transfer_id = $1", tid)
    assert (audit["action"], audit["actor"], audit["actor_role"]) == ("APPROVE", "test-operator", "admin")
    assert audit["processed_at"] is not None


async def test_sender_over_the_hourly_rate_is_held_and_a_rejected_transfer_is_never_released(
    dev_chains: DevNetwork, open_relayer: OpenRelayer
) -> None:
    relayer = await open_relayer(sender_hourly_limit=2)
    _, target = chains(dev_chains)
    ctx = {CONTEXT_KEY: relayer}
    transfers = [await locked_transfer(dev_chains, relayer.pool) for _ in range(3)]

    found = await release(relayer, *(tid for tid, _, _ in transfers))

    assert list(found.values()) == ["RELEASED", "RELEASED", "HELD"]
    tid, recipient, locked = transfers[2]
    status, reason = await status_and_reason(relayer, tid)
    assert status == "HELD"
    assert reason is not None
    assert "already made 2 transfers" in reason
    assert "limit is 2 an hour" in reason

    assert await act(relayer, "REJECT", tid) == "rejected: FAILED, never released"
    assert await status_and_reason(relayer, tid) == ("FAILED", "rejected by operator")
    assert (await act(relayer, "RETRY", tid)).startswith("refused: an operator rejected or cancelled")
    assert await relay_transfer(ctx, tid) == "noop"
    assert balance(target, recipient) == 0
    assert releases_on_chain(dev_chains, locked) == []
    assert [letter.transfer_id for letter in await dead_letters(relayer.pool)] == [tid]


async def test_daily_cap_holds_the_transfer_that_would_pass_it_and_cancel_closes_it(
    dev_chains: DevNetwork, open_relayer: OpenRelayer
) -> None:
    relayer = await open_relayer(daily_cap=2 * AMOUNT - 1)
    ctx = {CONTEXT_KEY: relayer}
    first, _, _ = await locked_transfer(dev_chains, relayer.pool)
    second, recipient, locked = await locked_transfer(dev_chains, relayer.pool)

    assert await release(relayer, first) == {first: "RELEASED"}
    assert await relay_transfer(ctx, second) == "held"
    _, reason = await status_and_reason(relayer, second)
    assert reason is not None
    assert f"daily cap of {2 * AMOUNT - 1}" in reason
    # Approving is refused for what is not HELD; cancelling closes the held one for good.
    assert (await act(relayer, "APPROVE", first)).startswith("refused: the transfer is RELEASED")
    assert await act(relayer, "CANCEL", second) == "cancelled: FAILED, never released"
    assert await status_and_reason(relayer, second) == ("FAILED", "cancelled by operator")
    assert (await act(relayer, "APPROVE", second)).startswith("refused: the transfer is FAILED")
    assert balance(chains(dev_chains)[1], recipient) == 0
    assert releases_on_chain(dev_chains, locked) == []


async def test_paused_route_holds_back_every_transfer_until_resumed(
    dev_chains: DevNetwork, open_relayer: OpenRelayer
) -> None:
    relayer = await open_relayer()
    _, target = chains(dev_chains)
    await relayer.pool.execute(
        """
        INSERT INTO routes (route_id, token, source_chain_id, target_chain_id, paused, paused_reason)
        VALUES ($1, 'FTT', 31337, 31338, true, 'incident')
        """,
        ROUTE_AB,
    )
    tid, recipient, _ = await locked_transfer(dev_chains, relayer.pool)
    ctx = {CONTEXT_KEY: relayer}

    assert await relay_transfer(ctx, tid) == "paused"
    assert (await status_and_reason(relayer, tid))[0] == "CONFIRMED"
    assert balance(target, recipient) == 0

    await relayer.pool.execute("UPDATE routes SET paused = false WHERE route_id = $1", ROUTE_AB)
    assert await release(relayer, tid) == {tid: "RELEASED"}
    assert balance(target, recipient) == AMOUNT


def ferry(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferry", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


async def test_release_the_bridge_cannot_pay_becomes_a_dead_letter_and_retry_releases_it(
    dev_chains: DevNetwork, open_relayer: OpenRelayer, clean_db: str
) -> None:
    relayer = await open_relayer({"liquidity_wait": 0})
    source, target = chains(dev_chains)
    recipient = new_recipient()
    locked = lock(dev_chains, source, target, recipient)
    tid = await insert_confirmed(relayer.pool, dev_chains, source, locked, recipient, target.chain_id)
    shortfall = 10**30  # more than the target bridge holds: as if its liquidity had been drained
    await relayer.pool.execute("UPDATE transfers SET amount = $2 WHERE id = $1", tid, shortfall)
    failures_before = metric("ferry_relayer_release_failures_total", route=ROUTE_AB, reason="liquidity")

    assert await release(relayer, tid) == {tid: "FAILED"}

    status, reason = await status_and_reason(relayer, tid)
    assert status == "FAILED"
    assert reason is not None
    assert "lacked the liquidity" in reason
    assert "InsufficientLiquidity" in reason
    assert metric("ferry_relayer_release_failures_total", route=ROUTE_AB, reason="liquidity") == (
        failures_before + 1
    )
    env = {**os.environ, **dev_chains.env(), "FERRY_DATABASE_URL": clean_db, "FERRY_METRICS_PORT": "0"}
    listed = ferry("transfers", "dead-letters", env=env)
    assert listed.returncode == 0, listed.stderr
    assert tid in listed.stdout
    assert "lacked the liquidity" in listed.stdout

    # The operator adds liquidity and retries from the CLI; no relayer runs yet, so it is queued.
    mint(target.w3, DEV_ACCOUNTS[0][1], target.token, target.bridge, shortfall)
    queued = ferry("transfers", "retry", tid, "--reason", "liquidity added", "--wait", "0", env=env)
    assert queued.returncode == 3, queued.stdout + queued.stderr
    assert "is queued" in queued.stdout
    assert await process_requests(relayer.pool) == 1
    assert (await status_and_reason(relayer, tid))[0] == "CONFIRMED"
    assert await release(relayer, tid) == {tid: "RELEASED"}

    assert balance(target, recipient) == shortfall
    assert len(releases_on_chain(dev_chains, locked)) == 1
    row = await relayer.pool.fetchrow("SELECT attempts, status FROM transfers WHERE id = $1", tid)
    assert row["status"] == "RELEASED"
    assert row["attempts"] == 2, "the try that failed is kept, plus the one that released"
    audit = await relayer.pool.fetchrow(
        "SELECT actor, reason, outcome FROM operator_requests WHERE transfer_id = $1", tid
    )
    assert audit["actor"].startswith("cli:")
    assert audit["reason"] == "liquidity added"
    assert audit["outcome"] == "retried: CONFIRMED again"


async def test_running_relayer_holds_and_applies_an_approval_from_the_cli(
    dev_chains: DevNetwork, clean_db: str, redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    from ferry.db import create_pool

    chains_file = limited_chains_file(dev_chains, tmp_path, max_amount=AMOUNT - 1)
    env = {
        **os.environ,
        **dev_chains.env(),
        "FERRY_CHAINS_FILE": str(chains_file),
        "FERRY_DATABASE_URL": clean_db,
        "FERRY_REDIS_URL": redis_url,
        "FERRY_QUEUE_NAME": queue_name,
        "FERRY_METRICS_PORT": "0",
        "FERRY_SWEEP_INTERVAL": "30",  # NOTE: long, so LISTEN/NOTIFY is what must wake the relayer
        "FERRY_LOG_FORMAT": "text",
    }
    pool = await create_pool(clean_db)
    group = ProcessGroup(env, logdir=tmp_path)
    try:
        worker = group.start("relayer", "relayer")
        _, target = chains(dev_chains)
        tid, recipient, _ = await locked_transfer(dev_chains, pool)
        await wait_for_status(pool, tid, "HELD", worker)

        approved = await asyncio.to_thread(ferry, "transfers", "approve", tid, "--wait", "60", env=env)
        assert approved.returncode == 0, approved.stdout + approved.stderr
        assert "approved: released despite its hold" in approved.stdout
        await wait_for_status(pool, tid, "RELEASED", worker)
        assert balance(target, recipient) == AMOUNT
    finally:
        group.stop()
        await pool.close()


async def test_unprocessable_requests_are_refused_with_a_reason(
    dev_chains: DevNetwork, open_relayer: OpenRelayer
) -> None:
    relayer = await open_relayer()
    tid, _, _ = await locked_transfer(dev_chains, relayer.pool)
    assert (await act(relayer, "RETRY", tid)).startswith("refused: the transfer is CONFIRMED")
    assert (await act(relayer, "CANCEL", tid)).startswith("refused: the transfer is CONFIRMED")
    request_id = await relayer.pool.fetchval(
        "INSERT INTO operator_requests (action, actor, actor_role)"
        " VALUES ('APPROVE', 'x', 'admin') RETURNING id"
    )
    assert await process_requests(relayer.pool) == 1
    assert await wait_for_outcome(relayer.pool, request_id, 0) == "refused: APPROVE needs a transfer id"
    assert await release(relayer, tid) == {tid: "RELEASED"}


async def insert_synthetic(
    relayer: RelayerContext,
    network: DevNetwork,
    nonce: int,
    sender: str,
    amount: int,
    at: datetime,
    status: str,
) -> str:
    """A transfer row on route A->B as the indexer writes it (no lock on chain: vetting reads no chain)."""
    source, _ = chains(network)
    tid = transfer_id(source.chain_id, source.bridge, nonce)
    async with relayer.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """
            INSERT INTO transfers (id, route_id, token, source_chain_id, source_bridge, nonce,
                                   target_chain_id, sender, recipient, amount, status,
                                   confirmations_required, lock_tx_hash, lock_log_index,
                                   lock_block_number, lock_block_hash, lock_block_time)
            VALUES ($1, $2, 'FTT', 31337, $3, $4, 31338, $5, $5, $6, $7, 2, $8, 0, $9, $8, $10)
            """,
            tid, ROUTE_AB, source.bridge.lower(), nonce, sender, amount, status,
            "0x" + f"{nonce:064x}", nonce, at,
        )  # fmt: skip
        await record_new(conn, [(tid, TransferStatus(status))])
    return tid


async def test_one_round_vets_many_transfers_as_checking_them_one_by_one_in_lock_order_would(
    dev_chains: DevNetwork, open_relayer: OpenRelayer
) -> None:
    unit = 10**18
    relayer = await open_relayer(sender_hourly_limit=3, daily_cap=11 * unit)
    alice, bob = (Account.create().address for _ in range(2))
    noon = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    # Counted already: released earlier the same UTC day, but more than an hour before noon.
    await insert_synthetic(
        relayer, dev_chains, 1_000, alice, 1 * unit, noon - timedelta(minutes=61), "RELEASED"
    )
    plan = [  # (sender, amount in units, expected outcome and why)
        (alice, 2, "handed_over"),  # day 3, alice 1 in the hour
        (alice, 9, "HELD"),  # day 3 + 9 > 11: daily_cap; held, so it counts for nobody after it
        (alice, 3, "handed_over"),  # day 6, alice 2 in the hour
        (bob, 4, "handed_over"),  # day 10
        (alice, 1, "handed_over"),  # day 11 (= the cap), alice 3 in the hour
        (alice, 1, "HELD"),  # alice already made 3 in the hour: sender_rate
        (bob, 1, "HELD"),  # day 11 + 1 > 11: daily_cap
    ]
    tids = [
        await insert_synthetic(
            relayer, dev_chains, 1_001 + i, sender, units * unit, noon + timedelta(seconds=i), "CONFIRMED"
        )
        for i, (sender, units, _) in enumerate(plan)
    ]

    decided = await vet_route(relayer, ROUTE_AB)

    assert decided.handed_over == [
        tid for tid, (_, _, want) in zip(tids, plan, strict=True) if want != "HELD"
    ]
    assert decided.held == [tid for tid, (_, _, want) in zip(tids, plan, strict=True) if want == "HELD"]
    reasons = [(await status_and_reason(relayer, tids[i]))[1] or "" for i in (1, 5, 6)]
    assert "daily cap" in reasons[0]
    assert "already made 3 transfers" in reasons[1]
    assert "already carried 11000000000000000000" in reasons[2]
    # Handed over once: the next round finds nothing owed, and the submitter sees them ready.
    assert (await vet_route(relayer, ROUTE_AB)).decided == 0
    vetted = await relayer.pool.fetchval("SELECT count(*) FROM relay_notes WHERE vetted_at IS NOT NULL")
    assert vetted == len(decided.handed_over)
