"""Exactly once under faults: 500 transfers while workers die, Redis forgets and PostgreSQL restarts.

Real processes (one indexer, two relayer workers) run against two anvil chains
mining a block a second, a PostgreSQL of this test's own (embedded, so the
machine's shared server is never restarted) and this test's own Redis queue.
While 250 locks each way are processed, a controller SIGKILLs relayer workers at
random moments (and starts them again, as a supervisor would), deletes every
Redis key of this test's queue once, and restarts PostgreSQL once.

The verdict comes from the chains, not only the database: every lock has exactly
one ``TransferReleased`` on its target bridge, no release exists for a lock that
was not made, and per route the amount released equals the amount locked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis.asyncio as redis_asyncio
import yaml
from eth_account import Account
from web3 import Web3

from ferry.contracts import TOKENS_LOCKED_TOPIC, TRANSFER_RELEASED_TOPIC
from ferry.deploy import bridge_contract, send_transaction, token_contract
from ferry.devchain import free_port
from ferry.devstack import DevChain, DevNetwork, ProcessGroup, start_dev_network
from ferry.migrate import upgrade
from ferry.services import Embedded, ensure_postgres

pytestmark = pytest.mark.e2e

LOCKS_PER_DIRECTION = 250
WAIT_LIMIT = 150.0
RECIPIENT = "0x000000000000000000000000000000000000bEEF"


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Embedded, Path]]:
    workdir = tmp_path_factory.mktemp("faults-pg")
    server = ensure_postgres("postgresql://postgres@127.0.0.1:1/postgres", workdir, force_embedded=True)
    yield server, workdir / "pgdata"
    server.stop()
    # NOTE: after the test's restart the postmaster is not the one pgserver started, and its
    # cleanup leaves it running: stop it through pg_ctl so no server outlives the test.
    with contextlib.suppress(Exception):
        stop_postgres(workdir / "pgdata")


def stop_postgres(pgdata: Path) -> None:
    import pgserver

    options: dict[str, Any] = {"user": "pgserver"} if os.geteuid() == 0 else {}
    pgserver.pg_ctl(["-m", "fast", "-w", "stop"], pgdata=pgdata, **options)


def restart_postgres(pgdata: Path) -> None:
    """Stop the embedded server (fast) and start it again with the options it ran with.

    Stop and start are separate steps, each waited for with a generous timeout, and the
    new postmaster logs to a file, so a start that fails says why (a loaded machine
    once made ``pg_ctl restart`` fail without a word).
    """
    import pgserver  # NOTE: the embedded server's own pg_ctl; it runs as "pgserver" under root

    options: dict[str, Any] = {"user": "pgserver"} if os.geteuid() == 0 else {}
    # postmaster.opts: the binary, then each argument quoted; pg_ctl start takes them back in -o
    arguments = (pgdata / "postmaster.opts").read_text().split(" ", 1)[1].strip()
    pgserver.pg_ctl(["-m", "fast", "-w", "-t", "120", "stop"], pgdata=pgdata, **options)
    log = pgdata / "restart.log"
    for attempt in range(3):
        try:
            pgserver.pg_ctl(
                ["-w", "-t", "120", "-l", str(log), "-o", arguments, "start"], pgdata=pgdata, **options
            )
            return
        except Exception:
            if attempt == 2:
                raise AssertionError(f"PostgreSQL did not start again: {log.read_text()[-2000:]}") from None


def lock_burst(chain: DevChain, user_key: str, target_chain_id: int, amounts: list[int]) -> None:
    """Sign ``lockTokens`` calls locally and send them in JSON-RPC batches (fast, like a load generator)."""
    w3 = chain.w3
    account = Account.from_key(user_key)
    token = token_contract(w3, chain.token)
    send_transaction(
        w3, user_key, token.functions.approve(chain.bridge, sum(amounts)), "approving the bridge"
    )
    bridge = bridge_contract(w3, chain.bridge)
    nonce = w3.eth.get_transaction_count(account.address, "pending")
    raw = []
    for index, amount in enumerate(amounts):
        data = bridge.encode_abi("lockTokens", args=[amount, RECIPIENT, target_chain_id])
        tx = {
            "type": 2, "chainId": chain.chain_id, "nonce": nonce + index, "to": chain.bridge, "value": 0,
            "data": data, "gas": 200_000, "maxFeePerGas": 50 * 10**9, "maxPriorityFeePerGas": 10**9,
        }  # fmt: skip
        raw.append("0x" + bytes(account.sign_transaction(tx).raw_transaction).hex())
    for start in range(0, len(raw), 100):
        body = [
            {"jsonrpc": "2.0", "id": i, "method": "eth_sendRawTransaction", "params": [r]}
            for i, r in enumerate(raw[start : start + 100])
        ]
        answers = httpx.post(chain.url, json=body, timeout=30).json()
        assert all("error" not in a for a in answers), answers[:3]


def chain_logs(chain: DevChain, topic: str) -> list[dict[str, Any]]:
    logs = chain.w3.eth.get_logs(
        {
            "address": Web3.to_checksum_address(chain.bridge),
            "topics": [topic],
            "fromBlock": chain.deploy_block,
            "toBlock": "latest",
        }
    )
    return [dict(log) for log in logs]


def locked(source: DevChain, target_chain_id: int) -> dict[int, int]:
    """Lock nonce -> amount of every lock on ``source`` towards ``target_chain_id``."""
    found = {}
    for log in chain_logs(source, TOKENS_LOCKED_TOPIC):
        data = bytes(log["data"])
        if int.from_bytes(data[64:96], "big") == target_chain_id:
            found[int.from_bytes(log["topics"][2], "big")] = int.from_bytes(data[:32], "big")
    return found


def released(target: DevChain, source_chain_id: int) -> list[tuple[int, int]]:
    """(lock nonce, amount) of every release on ``target`` of a lock made on ``source_chain_id``."""
    found = []
    for log in chain_logs(target, TRANSFER_RELEASED_TOPIC):
        if int.from_bytes(log["topics"][1], "big") == source_chain_id:
            found.append(
                (int.from_bytes(log["topics"][2], "big"), int.from_bytes(bytes(log["data"])[:32], "big"))
            )
    return found


async def flush_our_redis(redis_url: str, queue_name: str) -> int:
    """Delete every Redis key of this test's queue (its jobs, retries, results), nothing else."""
    client = redis_asyncio.Redis.from_url(redis_url)
    try:
        keys = [queue_name, f"{queue_name}:health-check"]
        async for key in client.scan_iter(match=f"arq:*:{queue_name}:*", count=1000):
            keys.append(key)
        return int(await client.delete(*keys))
    finally:
        await client.aclose()


async def count_finished(database_url: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url, connect_timeout=5) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM transfers WHERE status IN ('RELEASED', 'FINALIZED')"
        )
        row = await cursor.fetchone()
        return int(row[0]) if row else 0


async def finished_or_none(database_url: str) -> int | None:
    try:
        return await count_finished(database_url)
    except psycopg.Error:
        return None  # NOTE: PostgreSQL is restarting


def diagnose(database_url: str) -> str:
    """What is left, for the failure message."""
    with psycopg.connect(database_url) as conn:
        statuses = conn.execute("SELECT status, count(*) FROM transfers GROUP BY status").fetchall()
        txs = conn.execute(
            "SELECT chain_id, nonce, status, replacements FROM relay_txs WHERE status <> 'FINAL'"
        ).fetchall()
        stuck = conn.execute(
            "SELECT t.id, t.status, t.last_error, n.vetted_at, n.retry_at FROM transfers t"
            " LEFT JOIN relay_notes n ON n.transfer_id = t.id"
            " WHERE t.status NOT IN ('RELEASED', 'FINALIZED') LIMIT 3"
        ).fetchall()
    return f"statuses {statuses}, open txs {txs}, e.g. {stuck}"


class Chaos:
    """Kills relayer workers at random moments, flushes Redis once, restarts PostgreSQL once."""

    def __init__(self, group: ProcessGroup, pgdata: Path, redis_url: str, queue_name: str) -> None:
        self.group, self.pgdata, self.redis_url, self.queue_name = group, pgdata, redis_url, queue_name
        self.kills = 0
        self.flushed = 0
        self.restarted = False
        self.random = random.Random(4)

    async def run(self, database_url: str) -> None:
        workers = ["relayer-1", "relayer-2"]
        events = ["kill", "kill", "kill", "postgres", "kill", "kill"]
        for event in events:
            await asyncio.sleep(self.random.uniform(1.0, 4.0))
            if event == "kill":
                victim = self.random.choice(workers)
                self.group.kill(victim, signal.SIGKILL)
                self.kills += 1
                self.group.start(victim, "relayer")
            else:
                await asyncio.to_thread(restart_postgres, self.pgdata)
                self.restarted = True
            self.revive()

    async def flush_when_busy(self) -> None:
        """Once jobs wait in this test's queue, delete every key of it (Redis loses the queue)."""
        client = redis_asyncio.Redis.from_url(self.redis_url)
        try:
            while True:
                if await client.zcard(self.queue_name):
                    break
                await asyncio.sleep(0.02)
        finally:
            await client.aclose()
        self.flushed = await flush_our_redis(self.redis_url, self.queue_name)

    def revive(self) -> None:
        """A supervisor's job: start again any process that exited (e.g. on a database outage)."""
        for name, process in list(self.group.processes.items()):
            if process.poll() is not None:
                self.group.start(name, "indexer" if name == "indexer" else "relayer")


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevNetwork]:
    started = start_dev_network(tmp_path_factory.mktemp("faults-chains"), block_time=1)
    yield started
    started.stop()


async def test_every_lock_is_released_exactly_once_through_kills_flush_and_restart(
    network: DevNetwork, own_postgres: tuple[Embedded, Path], redis_url: str, tmp_path: Path
) -> None:
    server, pgdata = own_postgres
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE ferry_faults")
    database_url = server.url.replace("/postgres?", "/ferry_faults?")
    await asyncio.to_thread(upgrade, database_url)
    chains_file = tmp_path / "chains.yaml"
    document = yaml.safe_load(network.chains_file.read_text())
    for route in document["routes"]:
        route["sender_hourly_limit"] = 10_000
    chains_file.write_text(yaml.safe_dump(document, sort_keys=False))
    queue_name = f"ferry:faults:{free_port()}"
    env = {
        **network.env(),
        "FERRY_CHAINS_FILE": str(chains_file),
        "FERRY_DATABASE_URL": database_url,
        "FERRY_REDIS_URL": redis_url,
        "FERRY_QUEUE_NAME": queue_name,
        "FERRY_SWEEP_INTERVAL": "1",
        "FERRY_METRICS_PORT": "0",
        "FERRY_INDEXER_HEALTH_PORT": "0",
        "FERRY_LOG_FORMAT": "text",
    }
    group = ProcessGroup(env, tmp_path / "logs")
    rng = random.Random(7)
    amounts = {
        (31337, 31338): [rng.randint(1, 1_000) * 10**15 for _ in range(LOCKS_PER_DIRECTION)],
        (31338, 31337): [rng.randint(1, 1_000) * 10**15 for _ in range(LOCKS_PER_DIRECTION)],
    }
    chaos = Chaos(group, pgdata, redis_url, queue_name)
    try:
        group.start("indexer", "indexer")
        group.start("relayer-1", "relayer")
        group.start("relayer-2", "relayer")
        chaos_task = asyncio.create_task(chaos.run(database_url))
        flush_task = asyncio.create_task(chaos.flush_when_busy())
        for (source_id, target_id), values in amounts.items():
            await asyncio.to_thread(lock_burst, network.chain(source_id), network.user_key, target_id, values)
        await chaos_task
        await asyncio.wait_for(flush_task, WAIT_LIMIT)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_LIMIT
        while (await finished_or_none(database_url) or 0) < 2 * LOCKS_PER_DIRECTION:
            chaos.revive()
            assert loop.time() < deadline, (
                f"not all released: {diagnose(database_url)}; logs in {tmp_path / 'logs'}"
            )
            await asyncio.sleep(0.5)
    finally:
        group.stop()

    assert chaos.kills >= 4
    assert chaos.flushed > 0, "the Redis flush found this test's queue keys"
    assert chaos.restarted
    for source_id, target_id in amounts:
        source, target = network.chain(source_id), network.chain(target_id)
        made = locked(source, target.chain_id)
        paid = released(target, source.chain_id)
        assert len(made) == LOCKS_PER_DIRECTION
        counts = Counter(nonce for nonce, _ in paid)
        assert set(counts) == set(made), "a release for every lock, none for a lock not made"
        assert max(counts.values()) == 1, f"released twice: {[n for n, c in counts.items() if c > 1]}"
        assert sum(amount for _, amount in paid) == sum(made.values()), "locked = released on the route"
        assert dict(paid) == made
