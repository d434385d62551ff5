"""Realtime benchmark: from a lock's block being mined to its transfer row being committed.

    .venv/bin/python bench/realtime.py [locks] [poll_interval]   (default 1000, 0.05)

A fresh anvil (automine) and a scratch database; the indexer's follower runs with
``poll_interval`` (head polling: the WebSocket ``newHeads`` path is not built yet).
One lock at a time is sent; the send returns once anvil has mined its block; the
latency is measured until the ``NOTIFY`` of the committed PENDING row arrives.

Baseline, same run, same locks: a bare loop polling ``eth_getLogs`` at the same
interval, no database: the floor that polling alone imposes.

Prints one JSON object: {figure (p50 ms), baseline (p50 ms), ratio, p99, ...}.
Not measured: latency to a GraphQL subscriber (run the gateway and subscribe).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import time
from typing import Any

import asyncpg
import httpx
import yaml
from _indexer_setup import KEY, RECIPIENT, SOURCE, TARGET, emitter_chain, scratch_database
from eth_account import Account

from ferry.contracts import TOKENS_LOCKED_TOPIC, load_artifact
from ferry.domain import CHANGES_CHANNEL
from ferry.settings import load_chains
from indexer import service
from indexer.follower import Follower


class Locker:
    """Sends one ``emitLocks(1, ...)`` transaction at a time over raw JSON-RPC."""

    def __init__(self, url: str, emitter: str, http: httpx.AsyncClient) -> None:
        from web3 import Web3

        self.url, self.http = url, http
        self.account = Account.from_key(KEY)
        contract = Web3().eth.contract(
            address=Web3.to_checksum_address(emitter), abi=load_artifact("TestEmitter").abi
        )
        self.data = contract.encode_abi("emitLocks", [1, 10**18, RECIPIENT, TARGET])
        self.emitter = emitter
        self.nonce = -1

    async def call(self, method: str, *params: Any) -> Any:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
        return (await self.http.post(self.url, json=body)).json()["result"]

    async def lock(self) -> float:
        """Send a lock; returns the monotonic time its block was mined (the send returned)."""
        if self.nonce < 0:
            self.nonce = int(await self.call("eth_getTransactionCount", self.account.address, "pending"), 16)
        tx = {"to": self.emitter, "data": self.data, "gas": 200_000, "nonce": self.nonce, "chainId": SOURCE,
              "maxFeePerGas": 50 * 10**9, "maxPriorityFeePerGas": 10**9}  # fmt: skip
        raw = self.account.sign_transaction(tx).raw_transaction.to_0x_hex()
        self.nonce += 1
        await self.call("eth_sendRawTransaction", raw)
        return time.monotonic()


async def indexer_latencies(locker: Locker, url: str, chains_file: Any, count: int) -> list[float]:
    config = load_chains(chains_file)
    pool = await asyncpg.create_pool(url, min_size=2, max_size=4)
    await service.prepare_database(pool, config)
    follower = Follower(config.chain_by_id[SOURCE], config, pool)
    running = asyncio.create_task(follower.run())
    listener = await asyncpg.connect(url)
    arrived: asyncio.Queue[float] = asyncio.Queue()
    await listener.add_listener(CHANGES_CHANNEL, lambda *_: arrived.put_nowait(time.monotonic()))
    latencies = []
    try:
        await asyncio.sleep(1)  # the first step registers the chain
        for _ in range(count):
            await asyncio.sleep(random.uniform(0, 0.2))  # NOTE: no phase lock with the polling
            while not arrived.empty():
                arrived.get_nowait()
            mined = await locker.lock()
            latencies.append(await asyncio.wait_for(arrived.get(), timeout=30) - mined)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await follower.close()
        await listener.close()
        await pool.close()
    return latencies


async def polling_latencies(locker: Locker, poll: float, count: int) -> list[float]:
    """A bare poller, independent of the sender like the indexer is: eth_getLogs every ``poll`` s."""
    seen: asyncio.Queue[float] = asyncio.Queue()
    next_block = int(await locker.call("eth_blockNumber"), 16) + 1

    async def poller() -> None:
        nonlocal next_block
        while True:
            head = int(await locker.call("eth_blockNumber"), 16)
            if head >= next_block:
                logs = await locker.call(
                    "eth_getLogs",
                    {"address": locker.emitter, "topics": [TOKENS_LOCKED_TOPIC],
                     "fromBlock": hex(next_block), "toBlock": hex(head)},
                )  # fmt: skip
                for _ in logs:
                    seen.put_nowait(time.monotonic())
                next_block = head + 1
            await asyncio.sleep(poll)

    polling = asyncio.create_task(poller())
    latencies = []
    try:
        for _ in range(count):
            await asyncio.sleep(random.uniform(0, 0.2))  # NOTE: no phase lock with the polling
            mined = await locker.lock()
            latencies.append(await asyncio.wait_for(seen.get(), timeout=30) - mined)
    finally:
        polling.cancel()
        await asyncio.gather(polling, return_exceptions=True)
    return latencies


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
    }


async def main(count: int, poll: float) -> dict[str, Any]:
    with emitter_chain(0) as chain, scratch_database() as url:
        document = yaml.safe_load(chain.chains_file.read_text())
        document["chains"][0]["poll_interval"] = poll
        chain.chains_file.write_text(yaml.safe_dump(document))
        async with httpx.AsyncClient(timeout=30) as http:
            locker = Locker(chain.anvil.url, chain.emitter, http)
            ferry = summary(await indexer_latencies(locker, url, chain.chains_file, count))
            bare = summary(await polling_latencies(locker, poll, count))
    return {
        "benchmark": "realtime_lock_to_row",
        "figure": ferry["p50_ms"],
        "unit": "ms p50, lock mined -> transfer row committed (NOTIFY received)",
        "baseline": bare["p50_ms"],
        "ratio": round(ferry["p50_ms"] / bare["p50_ms"], 2) if bare["p50_ms"] else None,
        "p99_ms": ferry["p99_ms"],
        "baseline_p99_ms": bare["p99_ms"],
        "locks": count,
        "poll_interval_s": poll,
        "head_source": "polling (no WebSocket newHeads yet)",
        "targets": {"p50_ms": 50, "p99_ms": 150},
    }


if __name__ == "__main__":
    locks = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    interval = float(sys.argv[2]) if len(sys.argv) > 2 else 0.05
    print(json.dumps(asyncio.run(main(locks, interval))))
