"""A chain whose only endpoints are WebSocket ones: JSON-RPC over the socket, with failover.

Real anvil (which serves WebSocket on its HTTP port) and a real PostgreSQL:

- ``RpcClient`` on a ``ws://`` URL answers calls and batches like over HTTP; a
  connection that drops fails the call as unavailable and the next call opens a
  new one; a message that is not JSON, or that answers no request, is garbage;
- a follower of a chain configured with only ``ws://`` indexes its locks (the
  backfill, then new heads) and the indexed locks equal the chain's;
- when the WebSocket endpoint in use dies, the follower fails over to the next
  WebSocket endpoint, keeps indexing, and the failure counts against the dead one.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import asyncpg
import pytest
from prometheus_client import REGISTRY
from websockets.asyncio.server import ServerConnection, serve

from ferry.devstack import DevChain, DevNetwork
from ferry.rpc import RpcClient, RpcGarbage, RpcUnavailable, redact_url
from ferry.settings import ChainConfig
from indexer import service
from indexer.follower import Follower
from tests.support.indexing import eventually, following, lock, locks_on_chain
from tests.support.ws_relay import TcpRelay

#: Locks on the session's shared chains stay small: other tests lock from the same balance.
SMALL = 10**16


@pytest.fixture
async def ws_pool(pool: asyncpg.Pool, dev_chains: DevNetwork) -> asyncpg.Pool:
    await service.prepare_database(pool, dev_chains.config)
    return pool


def ws_url(chain: DevChain) -> str:
    return chain.url.replace("http://", "ws://", 1)


def only(network: DevNetwork, *urls: str, poll_interval: float) -> ChainConfig:
    chain = network.config.chain_by_id[network.chains[0].chain_id]
    return chain.model_copy(update={"rpc_urls": list(urls), "poll_interval": poll_interval})


def errors(chain: str, endpoint: str, kind: str) -> float:
    labels = {"chain": chain, "endpoint": endpoint, "kind": kind}
    return REGISTRY.get_sample_value("ferry_rpc_errors_total", labels) or 0.0


async def indexed(pool: asyncpg.Pool, transfer: str) -> bool:
    return bool(await pool.fetchval("SELECT count(*) FROM transfers WHERE id = $1", transfer))


async def indexed_locks(pool: asyncpg.Pool, chain: DevChain) -> set[tuple[str, int]]:
    rows = await pool.fetch("SELECT id, amount FROM transfers WHERE source_chain_id = $1", chain.chain_id)
    return {(r["id"], int(r["amount"])) for r in rows}


async def caught_up(pool: asyncpg.Pool, chain: DevChain) -> bool:
    head = int(chain.w3.eth.block_number)
    return bool(
        await pool.fetchval(
            "SELECT indexed_block >= $1 FROM chains WHERE chain_id = $2", head, chain.chain_id
        )
    )


async def test_json_rpc_calls_and_batches_go_over_the_websocket(dev_chains: DevNetwork) -> None:
    source = dev_chains.chains[0]
    rpc = RpcClient(ws_url(source))
    try:
        head = await rpc.block_number()
        assert await rpc.chain_id() == source.chain_id
        blocks = await rpc.batch([("eth_getBlockByNumber", [hex(n), False]) for n in (head, head - 1)])
        assert [int(b["number"], 16) for b in blocks] == [head, head - 1]
        answers = await rpc.batch_results([("eth_blockNumber", []), ("no_such_method", [])])
        assert int(answers[0], 16) >= head
        assert not isinstance(answers[0], Exception)
        assert isinstance(answers[1], Exception)
        numbers = list(range(max(0, head - 5), head + 1))
        many = await asyncio.gather(*(rpc.get_block(n) for n in numbers))  # NOTE: in flight at once
        assert [int(b["number"], 16) for b in many if b] == numbers
    finally:
        await rpc.close()


async def test_a_dropped_websocket_fails_the_call_and_the_next_call_reconnects(
    dev_chains: DevNetwork,
) -> None:
    source = dev_chains.chains[0]
    relay = await TcpRelay(urlsplit(source.url).port or 0).start()
    rpc = RpcClient(relay.ws_url, timeout=5)
    try:
        assert await rpc.chain_id() == source.chain_id
        await relay.cut()
        with pytest.raises(RpcUnavailable):
            await rpc.chain_id()
        await relay.restore()
        assert await rpc.chain_id() == source.chain_id
    finally:
        await rpc.close()
        await relay.cut()


@pytest.mark.parametrize("answer", ["{not json", '{"jsonrpc": "2.0", "id": 999999, "result": "0x1"}'])
async def test_garbage_on_a_json_rpc_websocket_raises_garbage(answer: str) -> None:
    async def reply(socket: ServerConnection) -> None:
        async for message in socket:
            json.loads(message)
            await socket.send(answer)

    async with serve(reply, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        rpc = RpcClient(f"ws://127.0.0.1:{port}", timeout=5)
        try:
            with pytest.raises(RpcGarbage):
                await rpc.chain_id()
        finally:
            await rpc.close()


async def test_a_chain_with_only_a_websocket_endpoint_is_indexed_and_followed(
    dev_chains: DevNetwork, ws_pool: asyncpg.Pool
) -> None:
    source = dev_chains.chains[0]
    # NOTE: poll_interval ten minutes: no polling, heads come over the socket
    chain = only(dev_chains, ws_url(source), poll_interval=600)
    follower = Follower(chain, dev_chains.config, ws_pool)
    assert follower.heads is not None
    async with following(follower) as task:
        await eventually(lambda: caught_up(ws_pool, source), "the backfill over the WebSocket")
        await eventually(lambda: asyncio.sleep(0, follower.heads.subscribed), "the subscription")
        new = [lock(dev_chains, (1100 + i) * SMALL) for i in range(3)]
        for transfer in new:
            await eventually(lambda t=transfer: indexed(ws_pool, t), "a lock woken by a new head", seconds=20)
        assert not task.done(), "the follower stopped"
        assert follower.endpoints.current_name == redact_url(ws_url(source))

    assert follower.reader.hinted_reads > 0, "new blocks were not read by their notified hashes"
    assert await indexed_locks(ws_pool, source) == await locks_on_chain(source)


async def test_a_websocket_endpoint_that_dies_fails_over_to_the_next_one(
    dev_chains: DevNetwork, ws_pool: asyncpg.Pool
) -> None:
    source = dev_chains.chains[0]
    relay = await TcpRelay(urlsplit(source.url).port or 0).start()
    chain = only(dev_chains, relay.ws_url, ws_url(source), poll_interval=0.5)
    unavailable = errors(chain.name, "0", "unavailable")
    follower = Follower(chain, dev_chains.config, ws_pool)
    try:
        async with following(follower) as task:
            before = lock(dev_chains, 1200 * SMALL)
            await eventually(lambda: indexed(ws_pool, before), "a lock over the first WebSocket")
            assert follower.endpoints.current_name == redact_url(relay.ws_url)

            await relay.cut()
            during = [lock(dev_chains, (1201 + i) * SMALL) for i in range(3)]
            for transfer in during:
                await eventually(lambda t=transfer: indexed(ws_pool, t), "a lock over the second WebSocket")
            assert follower.endpoints.current_name == redact_url(ws_url(source))
            assert errors(chain.name, "0", "unavailable") > unavailable
            assert not task.done(), "the follower stopped"
    finally:
        await relay.cut()

    assert await indexed_locks(ws_pool, source) == await locks_on_chain(source)
    assert await ws_pool.fetchval("SELECT count(*) FROM reorgs") == 0
