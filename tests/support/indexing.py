"""Helpers the indexer tests share: lock on the first dev chain, read its locks, wait for a probe,
run a follower for the length of a block."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from ferry.contracts import TOKENS_LOCKED_TOPIC
from ferry.deploy import lock_tokens
from ferry.devstack import DevChain, DevNetwork
from ferry.domain import transfer_id
from ferry.rpc import RpcClient
from indexer.decode import LockEvent, decode_log
from indexer.follower import Follower

T = TypeVar("T")


def lock(network: DevNetwork, amount: int) -> str:
    """Lock ``amount`` on the network's first chain for its second; the transfer's id."""
    source, target = network.chains
    receipt = lock_tokens(
        source.w3,
        network.user_key,
        source.token,
        source.bridge,
        amount,
        network.recipient_address,
        target.chain_id,
    )
    return transfer_id(source.chain_id, source.bridge, receipt.nonce)


async def locks_on_chain(chain: DevChain) -> set[tuple[str, int]]:
    """(transfer id, amount) of every lock the chain holds now: the truth indexed rows must equal."""
    rpc = RpcClient(chain.url)
    try:
        logs = await rpc.get_logs([chain.bridge], [TOKENS_LOCKED_TOPIC], 0, await rpc.block_number())
    finally:
        await rpc.close()
    events = [decode_log(chain.chain_id, log) for log in logs]
    return {(e.transfer_id, e.amount) for e in events if isinstance(e, LockEvent)}


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, seconds: float = 30) -> T:
    """Poll ``probe`` until it returns something truthy-or-value; bounded so a broken indexer fails."""
    for _ in range(int(seconds * 10)):
        value = await probe()
        if value is not None and value is not False:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


@contextlib.asynccontextmanager
async def following(follower: Follower) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``follower`` in a task for the block; then cancel it, wait for it and close it."""
    task = asyncio.create_task(follower.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await follower.close()
