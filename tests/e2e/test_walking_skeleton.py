"""One transfer each way through the real processes: indexer, relayer worker and gateway.

The three processes run as subprocesses (``python -m ferry …``) against two anvil
chains that mine a block every second, the test's own fresh database and its own
Redis queue. A wallet-like WebSocket client subscribes before the lock and must see
every state in order; the recipient's balance on the other chain must grow by
exactly the amount locked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ferry.deploy import bridge_contract, lock_tokens, token_contract
from ferry.devchain import free_port
from ferry.devstack import ONE, DevChain, DevNetwork, ProcessGroup, start_dev_network
from ferry.domain import transfer_id
from tests.support.databases import migrated_database
from tests.support.graphql import query, subscribe

pytestmark = pytest.mark.e2e

TRANSFER = """
query($id: ID!) { transfer(id: $id) {
  id status amount sender recipient sourceChainId targetChainId lockTxHash releaseTxHash
  history { status }
} }
"""
UPDATES = """
subscription($id: ID!) { transferUpdated(id: $id) { cursor status previousStatus txHash } }
"""


@dataclass
class Stack:
    network: DevNetwork
    graphql: str
    group: ProcessGroup
    logdir: Path


@pytest.fixture(scope="module")
def skeleton_database(services: tuple[str, str]) -> Iterator[str]:
    """A database of this module's own.

    NOTE: not the session's shared ``database_url``: fresh anvil chains repeat bridge
    addresses, nonces and the dev sender, so rows other tests left there count against
    this stack's per-sender limit (the HELD flake) or collide with its transfer ids.
    """
    with migrated_database(services[0], prefix="ferry_skeleton") as url:
        yield url


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, skeleton_database: str, redis_url: str
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("e2e")
    network = start_dev_network(workdir / "chains", block_time=1)
    graphql_port, health_port = free_port(), free_port()
    env = {
        **network.env(),
        "FERRY_DATABASE_URL": skeleton_database,
        "FERRY_REDIS_URL": redis_url,
        "FERRY_QUEUE_NAME": f"ferry:e2e:{graphql_port}",
        "FERRY_GRAPHQL_PORT": str(graphql_port),
        "FERRY_HEALTH_PORT": str(health_port),
        "FERRY_SWEEP_INTERVAL": "2",
    }
    group = ProcessGroup(env, workdir / "logs")
    try:
        for name in ("indexer", "relayer", "gateway"):
            group.start(name, name, {"FERRY_METRICS_PORT": str(free_port())})
        group.wait_ready(f"http://127.0.0.1:{health_port}/ready")
        yield Stack(network, f"http://127.0.0.1:{graphql_port}/graphql", group, workdir / "logs")
    finally:
        group.stop()
        network.stop()


async def _statuses_until_released(graphql: str, transfer: str, seen: list[str]) -> None:
    async for payload in subscribe(graphql, UPDATES, {"id": transfer}):
        assert "errors" not in payload, payload
        seen.append(payload["data"]["transferUpdated"]["status"])
        if seen[-1] in {"RELEASED", "FINALIZED", "FAILED", "HELD"}:
            return


@pytest.mark.parametrize("direction", [(31337, 31338), (31338, 31337)], ids=["a-to-b", "b-to-a"])
async def test_one_transfer_end_to_end(stack: Stack, direction: tuple[int, int]) -> None:
    source, target = (stack.network.chain(chain_id) for chain_id in direction)
    amount = 7 * ONE + 12345
    recipient = stack.network.recipient_address
    balance_before = _balance(target, recipient)
    expected_id = transfer_id(source.chain_id, source.bridge, _next_nonce(source))

    seen: list[str] = []
    watcher = asyncio.create_task(_statuses_until_released(stack.graphql, expected_id, seen))
    await asyncio.sleep(0.5)  # the subscription is registered before the lock exists
    receipt = await asyncio.to_thread(
        lock_tokens, source.w3, stack.network.user_key, source.token, source.bridge,
        amount, recipient, target.chain_id,
    )  # fmt: skip
    await asyncio.wait_for(watcher, timeout=90)

    assert seen == ["PENDING", "CONFIRMED", "SUBMITTED", "RELEASED"], f"{seen}; logs in {stack.logdir}"
    assert _balance(target, recipient) - balance_before == amount

    body = await query(stack.graphql, TRANSFER, {"id": expected_id})
    transfer = body["data"]["transfer"]
    assert transfer["status"] in {"RELEASED", "FINALIZED"}
    assert transfer["amount"] == str(amount)
    assert transfer["lockTxHash"] == receipt.tx_hash
    assert transfer["releaseTxHash"] is not None
    assert int(transfer["sourceChainId"]) == source.chain_id
    assert int(transfer["targetChainId"]) == target.chain_id
    assert [h["status"] for h in transfer["history"]][:4] == ["PENDING", "CONFIRMED", "SUBMITTED", "RELEASED"]
    released = target.w3.eth.get_transaction_receipt(transfer["releaseTxHash"])
    assert released["status"] == 1


def _balance(chain: DevChain, address: str) -> int:
    return int(token_contract(chain.w3, chain.token).functions.balanceOf(address).call())


def _next_nonce(chain: DevChain) -> int:
    return int(bridge_contract(chain.w3, chain.bridge).functions.lockNonce().call()) + 1
