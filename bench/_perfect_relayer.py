"""The relay benchmark's fair baseline: a perfect relayer under the same lock traffic.

Ferry's releases share their blocks with the locks that cause them, so a baseline
that sends pre-signed releases to empty chains (``baseline_empty_chains``) measures
another workload: one that runs at the block gas limit from its first send. This
one measures what a relayer that adds no delay of its own would reach here:

- fresh chains, started and deployed by the same code (``start_dev_network``, 1 s
  blocks, anvil's default gas limit), and the same lock burst sent the same way
  (``relay.sign_locks`` / ``relay.send_bursts``);
- no database, no indexer, no relayer process: this script polls
  ``eth_blockNumber`` every ``POLL_SECONDS`` on both chains and reads new blocks'
  transaction hashes; a lock is confirmed when its block has the route's
  confirmations (``head - lock_block + 1 >= confirmations``, as the indexer);
- at that moment it sends the lock's release order (signed before the burst) in
  ``releaseBatch`` transactions of the same batch size, priced by the relayer's own
  ``FeePricer`` (capped by the default ``max_fee_per_gas``), with the relayer's gas
  rule (one order's ``eth_estimateGas`` times the orders), from the relayer's
  submitting account, all of one confirmation in one JSON-RPC batch;
- a release transaction still unmined a second after it was sent is sent again
  unchanged (anvil sometimes drops one of a burst and queues the later nonces
  behind the gap; the relayer repairs gaps too);
- a release is mined when this script sees the head whose block holds it.

``figure_of`` computes the figure from (confirmed, release mined) pairs: the
benchmark's figure and this baseline both go through it.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_utils.crypto import keccak

from ferry.devstack import DevChain, DevNetwork
from ferry.rpc import RpcClient, quantity
from ferry.settings import Settings
from relayer.bridge import encode_release_batch
from relayer.eip712 import ReleaseOrder, sign_release_order
from relayer.fees import FeePricer, capped
from relayer.submitter import TxSigner

#: Seconds between two ``eth_blockNumber`` polls of one chain.
POLL_SECONDS = 0.02
BLOCKS_PER_REQUEST = 8
MAX_FEE_PER_GAS: int = Settings.model_fields["max_fee_per_gas"].default
TRANSFER_RELEASED = "0x" + keccak(text="TransferReleased(uint256,uint256,address,uint256,address)").hex()


def figure_of(pairs: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """Throughput from the first confirmation to the last release mined, and p50/p99 of the lags.

    ``pairs`` are (confirmed, release mined) in seconds since the epoch, one per transfer.
    """
    if not pairs:
        return {"seconds": None, "releases_per_second": None, "p50_confirmed_to_release_mined_s": None,
                "p99_confirmed_to_release_mined_s": None}  # fmt: skip
    latencies = sorted(released - confirmed for confirmed, released in pairs)
    seconds = max(released for _, released in pairs) - min(confirmed for confirmed, _ in pairs)
    return {
        "seconds": round(seconds, 2),
        "releases_per_second": round(len(pairs) / seconds, 1) if seconds else None,
        "p50_confirmed_to_release_mined_s": round(statistics.median(latencies), 3),
        "p99_confirmed_to_release_mined_s": round(latencies[int(0.99 * (len(latencies) - 1))], 3),
    }


@dataclass
class Lock:
    """One lock of the burst: its transaction, its release order and what happened to it."""

    tx_hash: str
    order: ReleaseOrder
    signatures: list[bytes]
    block: int | None = None
    confirmed: float | None = None
    released: float | None = None


@dataclass
class Side:
    """One chain as a perfect relayer sees it: the locks sent on it, the releases sent to it."""

    chain: DevChain
    rpc: RpcClient
    signer: TxSigner
    pricer: FeePricer
    gas_per_order: int = 0
    next_nonce: int = 0
    head: int = 0
    locks: dict[str, Lock] = field(default_factory=dict)  # lock tx hash -> lock
    releases: dict[str, list[Lock]] = field(default_factory=dict)  # release tx hash -> its locks
    sent: list[str] = field(default_factory=list)  # every release tx hash sent to this chain
    unmined: dict[int, tuple[str, float]] = field(default_factory=dict)  # nonce -> (raw tx, last sent)
    waiting: list[Lock] = field(default_factory=list)  # mined locks, not yet confirmed


def sign_orders(source: DevChain, target: DevChain, raw_locks: list[str], keys: list[bytes], first_nonce: int,
                recipient: str) -> dict[str, Lock]:  # fmt: skip
    """The release order of each lock of the burst (lock nonces follow the sender's nonces)."""
    locks = {}
    for index, raw in enumerate(raw_locks):
        order = ReleaseOrder(source.chain_id, source.bridge, first_nonce + index, recipient, 10**15 + index)
        signatures = sign_release_order(order, target.chain_id, target.bridge, keys)
        tx_hash = "0x" + keccak(bytes.fromhex(raw.removeprefix("0x"))).hex()
        locks[tx_hash] = Lock(tx_hash, order, signatures)
    return locks


async def run_perfect_relayer(
    network: DevNetwork,
    raw_locks: dict[int, list[str]],
    send_burst: Callable[[], None],
    recipient: str,
    batch_size: int,
    limit: float = 300,
) -> dict[str, Any]:
    """Send the burst, relay it perfectly; the figure, with (confirmed, mined) of every lock."""
    keys = [bytes.fromhex(k.removeprefix("0x")) for k in network.signer_keys]
    signer = TxSigner(bytes.fromhex(network.submitter_key.removeprefix("0x")))
    a, b = network.chains
    sides = {c.chain_id: _side(c, signer) for c in (a, b)}
    try:
        for source, target in ((a, b), (b, a)):
            side = sides[source.chain_id]
            first = int(await side.rpc.call("eth_call", _lock_nonce_call(source.bridge), "latest"), 16) + 1
            side.locks = sign_orders(source, target, raw_locks[source.chain_id], keys, first, recipient)
        for side in sides.values():
            await _prepare(side, keys, recipient)
        before = {chain_id: side.head for chain_id, side in sides.items()}
        total = sum(len(s.locks) for s in sides.values())
        watchers = [
            asyncio.create_task(_watch(side, sides, network.confirmations, batch_size))
            for side in sides.values()
        ]
        await asyncio.to_thread(send_burst)
        deadline = time.time() + limit
        while sum(len([x for x in s.locks.values() if x.released]) for s in sides.values()) < total:
            if time.time() > deadline or any(w.done() for w in watchers):
                break
            await asyncio.sleep(0.1)
        errors = [w.exception() for w in watchers if w.done() and not w.cancelled()]
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        if any(errors):
            raise RuntimeError(f"the perfect relayer failed: {errors}")
        paid = sum([await _paid(side) for side in sides.values()])
        pairs = [(x.confirmed, x.released) for s in sides.values() for x in s.locks.values()
                 if x.confirmed is not None and x.released is not None]  # fmt: skip
        unmined = sum(len(s.releases) for s in sides.values())
        fill = {str(c): await block_fill(side.rpc, before[c]) for c, side in sides.items()}
        return {"released": len(pairs), "paid_on_chain": paid, "release_txs_unmined": unmined,
                **figure_of(pairs), "block_gas_m_per_txs": fill}  # fmt: skip
    finally:
        for side in sides.values():
            await side.rpc.close()


async def block_fill(rpc: RpcClient, after: int) -> list[str]:
    """ "gas used in millions/transactions" of each block after ``after`` up to the head, but
    the empty blocks at the end: where a run left block space unused."""
    blocks = await _blocks(rpc, after, quantity(await rpc.call("eth_blockNumber")))
    while blocks and not blocks[-1]["transactions"]:
        blocks.pop()
    return [f"{quantity(b['gasUsed']) / 1e6:.1f}/{len(b['transactions'])}" for b in blocks]


async def _blocks(rpc: RpcClient, after: int, head: int) -> list[Any]:
    """Blocks ``after`` + 1 to ``head`` (transaction hashes only), ``BLOCKS_PER_REQUEST`` a request."""
    blocks: list[Any] = []
    for low in range(after + 1, head + 1, BLOCKS_PER_REQUEST):
        numbers = range(low, min(low + BLOCKS_PER_REQUEST, head + 1))
        blocks += await rpc.batch([("eth_getBlockByNumber", (hex(n), False)) for n in numbers])
    return blocks


def _side(chain: DevChain, signer: TxSigner) -> Side:
    rpc = RpcClient(chain.url, timeout=60)
    return Side(chain, rpc, signer, FeePricer(rpc, signer.address))


def _lock_nonce_call(bridge: str) -> dict[str, str]:
    return {"to": bridge, "data": "0x" + keccak(text="lockNonce()")[:4].hex()}


async def _prepare(side: Side, keys: list[bytes], recipient: str) -> None:
    """The relayer's gas rule (one order's estimate, no headroom) and the account's next nonce."""
    order = ReleaseOrder(999, "0x00000000000000000000000000000000000B0A7D", 1, recipient, 1)
    signatures = sign_release_order(order, side.chain.chain_id, side.chain.bridge, keys)
    data = encode_release_batch([order.as_tuple()], [signatures])
    request = {"from": side.signer.address, "to": side.chain.bridge, "data": data}
    side.gas_per_order = quantity(await side.rpc.call("eth_estimateGas", request))
    side.next_nonce = quantity(await side.rpc.call("eth_getTransactionCount", side.signer.address, "pending"))
    side.head = quantity(await side.rpc.call("eth_blockNumber"))


async def _watch(side: Side, sides: dict[int, Side], confirmations: int, batch_size: int) -> None:
    """Poll the head; note locks and releases in new blocks; release the locks just confirmed."""
    target = next(s for s in sides.values() if s is not side)
    while True:
        head = quantity(await side.rpc.call("eth_blockNumber"))
        if head <= side.head:
            await asyncio.sleep(POLL_SECONDS)
            continue
        seen = time.time()
        blocks = await _blocks(side.rpc, side.head, head)
        side.head = head
        for block in blocks:
            number = quantity(block["number"])
            for tx_hash in block["transactions"]:
                if (lock := side.locks.get(tx_hash)) is not None:
                    lock.block = number
                    side.waiting.append(lock)
                for released in side.releases.pop(tx_hash, []):
                    released.released = seen
        if side.unmined:
            await _repair_gaps(side, seen)
        due = [x for x in side.waiting if x.block is not None and head - x.block + 1 >= confirmations]
        if due:
            side.waiting = [x for x in side.waiting if x not in due]
            for lock in due:
                lock.confirmed = seen
            await _release(target, due, batch_size)


async def _release(target: Side, locks: list[Lock], batch_size: int) -> None:
    """``releaseBatch`` transactions of ``batch_size`` orders, priced like the relayer's, in one request."""
    fees = capped(await target.pricer.fees(), MAX_FEE_PER_GAS)
    calls = []
    for start in range(0, len(locks), batch_size):
        batch = locks[start : start + batch_size]
        data = encode_release_batch([x.order.as_tuple() for x in batch], [x.signatures for x in batch])
        tx_hash, raw = target.signer.sign(
            target.chain.chain_id, target.next_nonce, target.chain.bridge, bytes.fromhex(data[2:]),
            target.gas_per_order * len(batch), fees,
        )  # fmt: skip
        target.next_nonce += 1
        target.releases[tx_hash] = batch
        target.sent.append(tx_hash)
        target.unmined[target.next_nonce - 1] = ("0x" + raw.hex(), time.time())
        calls.append(("eth_sendRawTransaction", ["0x" + raw.hex()]))
    for answer in await target.rpc.batch_results(calls):
        if isinstance(answer, Exception):
            raise answer


async def _repair_gaps(side: Side, now: float) -> None:
    """Re-send, unchanged, release transactions still unmined a second after they were sent.

    NOTE: anvil 1.7.1 sometimes drops a transaction of a burst and queues the later nonces
    behind the gap (ARCHITECTURE.md); the relayer repairs gaps the same way (every 2 s).
    """
    mined = quantity(await side.rpc.call("eth_getTransactionCount", side.signer.address, "latest"))
    for nonce in [n for n in side.unmined if n < mined]:
        del side.unmined[nonce]
    stale = sorted(n for n, (_, sent) in side.unmined.items() if now - sent > 1.0)
    if stale:
        for nonce in stale:
            side.unmined[nonce] = (side.unmined[nonce][0], now)
        # NOTE: "already known" answers are expected (a transaction merely waiting for room)
        await side.rpc.batch_results([("eth_sendRawTransaction", [side.unmined[n][0]]) for n in stale])


async def _paid(side: Side) -> int:
    """Orders paid on this chain by the perfect relayer's transactions (TransferReleased logs)."""
    receipts = await side.rpc.batch([("eth_getTransactionReceipt", (h,)) for h in side.sent])
    return sum(
        1
        for receipt in receipts
        if receipt is not None
        for entry in receipt["logs"]
        if entry["topics"][0] == TRANSFER_RELEASED and entry["address"].lower() == side.chain.bridge.lower()
    )
