"""A route to a bridge of the original design (``adapter: legacy``), through the real processes.

Chain A has a FerryBridge; on chain B the FTT "bridge" is a ``LegacyBridge``
(``releaseTokens`` with one signer, EIP-712 "CrossChainBridge"). The indexer and
the relayer run as subprocesses on chains mining a block a second. A lock whose
target address is its sender is released through ``releaseTokens``; a lock that
names someone else is HELD with the reason (the legacy bridge can only pay the
sender) until an operator approves paying the sender from the CLI.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import yaml
from web3 import Web3

from ferry.deploy import deploy_contract, lock_tokens, mint, token_contract
from ferry.devchain import free_port
from ferry.devstack import DEPLOYER, ONE, SIGNERS, DevNetwork, ProcessGroup, start_dev_network
from ferry.domain import transfer_id
from relayer.legacy import TOKENS_RELEASED_TOPIC
from tests.support.databases import migrated_database

pytestmark = pytest.mark.e2e

AMOUNT = 3 * ONE
WAIT_LIMIT = 90.0


@dataclass
class LegacyStack:
    network: DevNetwork
    legacy_bridge: str
    env: dict[str, str]
    group: ProcessGroup
    logdir: Path


@pytest.fixture(scope="module")
def legacy_database(services: tuple[str, str]) -> Iterator[str]:
    """A database of this module's own: transfer ids repeat across fresh anvils, so no leftovers."""
    with migrated_database(services[0], "ferry_legacy") as url:
        yield url


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, legacy_database: str, redis_url: str
) -> Iterator[LegacyStack]:
    database_url = legacy_database
    workdir = tmp_path_factory.mktemp("legacy")
    network = start_dev_network(workdir / "chains", block_time=1)
    group = ProcessGroup({}, workdir / "logs")
    try:
        a, b = network.chain(31337), network.chain(31338)
        legacy_bridge = deploy_contract(b.w3, DEPLOYER[1], "LegacyBridge", b.token, SIGNERS[0][0])
        mint(b.w3, DEPLOYER[1], b.token, legacy_bridge, 1_000 * ONE)
        chains_file = workdir / "legacy-chains.yaml"
        document = yaml.safe_load(network.chains_file.read_text())
        document["chains"][1]["bridges"]["FTT"]["bridge"] = legacy_bridge
        document["routes"] = [
            {"token": "FTT", "source": a.chain_id, "target": b.chain_id, "adapter": "legacy",
             "legacy_signer": SIGNERS[0][0]},
        ]  # fmt: skip
        chains_file.write_text(yaml.safe_dump(document, sort_keys=False))
        env = {
            **os.environ,
            **network.env(),
            "FERRY_CHAINS_FILE": str(chains_file),
            "FERRY_DATABASE_URL": database_url,
            "FERRY_REDIS_URL": redis_url,
            "FERRY_QUEUE_NAME": f"ferry:legacy:{free_port()}",
            "FERRY_SWEEP_INTERVAL": "1",
            "FERRY_LOG_FORMAT": "text",
            "FERRY_METRICS_PORT": "0",
            "FERRY_INDEXER_HEALTH_PORT": "0",
        }
        group = ProcessGroup(env, workdir / "logs")
        group.start("indexer", "indexer")
        group.start("relayer", "relayer")
        yield LegacyStack(network, legacy_bridge, env, group, workdir / "logs")
    finally:
        group.stop()
        network.stop()


async def wait_for(pool: asyncpg.Pool, tid: str, statuses: set[str], stack: LegacyStack) -> asyncpg.Record:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT
    while True:
        row = await pool.fetchrow(
            "SELECT status, last_error, release_tx_hash FROM transfers WHERE id = $1", tid
        )
        if row is not None and row["status"] in statuses:
            return row
        assert not stack.group.failed(), f"{stack.group.failed()} exited; logs in {stack.logdir}"
        assert loop.time() < deadline, f"{tid} never reached {statuses} (now {row}); logs in {stack.logdir}"
        await asyncio.sleep(0.2)


def legacy_releases(stack: LegacyStack, nonce: int) -> list[str]:
    b = stack.network.chain(31338)
    logs = b.w3.eth.get_logs(
        {
            "address": Web3.to_checksum_address(stack.legacy_bridge),
            "topics": [TOKENS_RELEASED_TOPIC, None, "0x" + nonce.to_bytes(32, "big").hex()],
            "fromBlock": 0,
            "toBlock": "latest",
        }
    )
    return [log["transactionHash"].to_0x_hex() for log in logs]


def balance_on_b(stack: LegacyStack, holder: str) -> int:
    b = stack.network.chain(31338)
    return int(token_contract(b.w3, b.token).functions.balanceOf(holder).call())


async def test_legacy_route_pays_the_sender_and_holds_a_transfer_naming_someone_else(
    stack: LegacyStack, legacy_database: str
) -> None:
    database_url = legacy_database
    a = stack.network.chain(31337)
    user = stack.network.user_address
    before = balance_on_b(stack, user)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        own = await asyncio.to_thread(
            lock_tokens, a.w3, stack.network.user_key, a.token, a.bridge, AMOUNT, user, 31338
        )
        other = await asyncio.to_thread(
            lock_tokens, a.w3, stack.network.user_key, a.token, a.bridge, AMOUNT,
            stack.network.recipient_address, 31338,
        )  # fmt: skip
        own_id, other_id = (transfer_id(31337, a.bridge, lock.nonce) for lock in (own, other))

        released = await wait_for(pool, own_id, {"RELEASED", "FINALIZED"}, stack)
        held = await wait_for(pool, other_id, {"HELD"}, stack)

        assert legacy_releases(stack, own.nonce) == [released["release_tx_hash"]]
        assert balance_on_b(stack, user) - before == AMOUNT
        assert "legacy bridge that pays the sender" in held["last_error"]
        assert legacy_releases(stack, other.nonce) == []

        approve = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "ferry", "transfers", "approve", other_id, "--wait", "60"],
            capture_output=True, text=True, timeout=120, env=stack.env, check=False,
        )  # fmt: skip
        assert approve.returncode == 0, approve.stdout + approve.stderr
        approved = await wait_for(pool, other_id, {"RELEASED", "FINALIZED"}, stack)
    finally:
        await pool.close()

    assert legacy_releases(stack, other.nonce) == [approved["release_tx_hash"]]
    assert balance_on_b(stack, user) - before == 2 * AMOUNT, "the approved release paid the sender"
    assert balance_on_b(stack, stack.network.recipient_address) == 0
