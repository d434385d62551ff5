"""RPC faults through a fault-injecting proxy in front of anvil, with a healthy endpoint behind it.

For every fault (drop, delay, 429, malformed JSON, wrong chain id, lagging head)
the follower is given ``[proxy, anvil]``: it must keep indexing on the healthy
endpoint (or, for a rate limit, slow down and stay), count the fault against the
proxy's endpoint index, never take the fault for a reorg, and end with exactly
the locks the chain has.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from prometheus_client import REGISTRY

from ferry.devstack import DevChain, DevNetwork
from ferry.rpc import RpcClient
from indexer import service
from indexer.endpoints import Endpoints
from indexer.follower import Follower
from tests.support.indexing import lock, locks_on_chain
from tests.support.rpc_proxy import RpcProxy

ONE = 10**18


@pytest.fixture
async def proxy(dev_chains: DevNetwork) -> AsyncIterator[RpcProxy]:
    started = await RpcProxy(dev_chains.chains[0].url).start()
    yield started
    await started.stop()


def errors(chain: str, endpoint: str, kind: str) -> float:
    labels = {"chain": chain, "endpoint": endpoint, "kind": kind}
    return REGISTRY.get_sample_value("ferry_rpc_errors_total", labels) or 0.0


async def follow_until_caught_up(follower: Follower, pool: asyncpg.Pool, chain: DevChain) -> None:
    task = asyncio.create_task(follower.run())
    try:
        head = int(chain.w3.eth.block_number)
        for _ in range(900):
            if await pool.fetchval(
                "SELECT indexed_block >= $1 FROM chains WHERE chain_id = $2", head, chain.chain_id
            ):
                return
            assert not task.done(), "the follower stopped"
            await asyncio.sleep(0.1)
        raise AssertionError("the follower did not catch up with the chain")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        ("drop", "unavailable"),
        ("delay", "unavailable"),
        ("rate_limit", "rate_limited"),
        ("malformed", "garbage"),
        ("wrong_chain", "garbage"),
        ("lagging", "garbage"),
    ],
)
async def test_a_faulty_endpoint_never_stops_indexing_or_corrupts_data(
    dev_chains: DevNetwork, pool: asyncpg.Pool, proxy: RpcProxy, mode: str, kind: str
) -> None:
    source = dev_chains.chains[0]
    config = dev_chains.config
    chain = config.chain_by_id[source.chain_id]
    await service.prepare_database(pool, config)
    if mode == "lagging":  # the indexer is already at the head when the lagging node comes first
        direct = Follower(chain, config, pool)
        try:
            await follow_until_caught_up(direct, pool, source)
        finally:
            await direct.close()
    before = errors(chain.name, "0", kind)
    # NOTE: three 429s are enough to throttle (0.25, 0.5, 1 s); five doubled it to 4 s and took 36 s
    proxy.mode, proxy.budget, proxy.lag = mode, 3 if mode == "rate_limit" else 5, 6
    endpoints = Endpoints(chain, [RpcClient(proxy.url, timeout=1.0), RpcClient(source.url)])
    follower = Follower(chain, config, pool, endpoints)
    try:
        new = [lock(dev_chains, (300 + i) * ONE) for i in range(3)]
        await follow_until_caught_up(follower, pool, source)
    finally:
        await follower.close()

    assert errors(chain.name, "0", kind) > before, f"the {mode} fault was not counted against endpoint 0"
    if mode == "rate_limit":
        assert endpoints.current.index == 0, "a rate limit slows down; it does not switch endpoints"
    rows = await pool.fetch("SELECT id, amount FROM transfers WHERE source_chain_id = $1", source.chain_id)
    assert {(r["id"], int(r["amount"])) for r in rows} == await locks_on_chain(source)
    assert set(new) <= {r["id"] for r in rows}
    assert await pool.fetchval("SELECT count(*) FROM reorgs") == 0
