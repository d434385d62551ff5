"""From ready transfers to signed ``releaseBatch`` calls: grouping, signing, estimating, sorting out.

For one target chain the batcher groups ready transfers by target bridge, cuts
groups into batches of at most ``batch_size``, signs each order with as many of
the bridge's current signers as its threshold needs (M-of-N, from the keys this
relayer holds) and asks the node to check the batch (``eth_call``; its gas is one
order's estimate times its orders). ``build_round`` does this for a whole round in
one JSON-RPC request. ``releaseBatch`` skips orders already processed, so a batch
never fails because of a replay.

When a batch would revert, each order is estimated alone to find the culprits
(``classify_revert``): permanent refusals (bad signatures, zero amount...) are
FAILED, a bridge short of liquidity waits with back-off until ``liquidity_wait``
has passed and is then FAILED, anything else is retried with back-off until it
has had ``MAX_RELEASE_TRIES`` tries. The other orders go out without them.
Fewer keys than the threshold is an operator's problem: the transfers are HELD.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from ferry.contracts import ContractError
from ferry.domain import TransferStatus
from ferry.metrics import RELEASE_FAILURES
from ferry.rpc import RpcClient, RpcError, quantity
from ferry.settings import ChainConfig, Settings
from relayer import legacy, txstore
from relayer.bridge import SignerSet, TargetBridge, encode_release_batch, is_revert, revert_of
from relayer.eip712 import ReleaseOrder, sign_release_order
from relayer.plan import Verdict, classify_revert
from relayer.store import short_of_liquidity_for
from relayer.txstore import ReadyTransfer

log = logging.getLogger(__name__)

#: Headroom over ``eth_estimateGas``, in percent.
GAS_HEADROOM_PERCENT = 20
#: Least gas counted per order of a batch (one FerryBridge release costs about 83k alone).
ORDER_GAS_FLOOR = 80_000
#: Seconds a bridge's signer set is trusted before it is read again.
SIGNER_SET_TTL = 15.0
MAX_BACKOFF = 60.0


@dataclass
class Batch:
    """One ``releaseBatch`` call ready to be signed as a transaction."""

    bridge: str
    transfers: list[ReadyTransfer]
    call_data: str
    gas: int


class WouldRevert(Exception):
    def __init__(self, reason: ContractError | str) -> None:
        super().__init__(f"the release would revert: {reason}")
        self.reason = reason


@dataclass
class _CachedSignerSet:
    value: SignerSet
    read_at: float


@dataclass
class Batcher:
    """Builds release batches for one target chain."""

    chain: ChainConfig
    rpc: RpcClient
    pool: asyncpg.Pool
    settings: Settings
    account: str
    signers: dict[str, bytes] = field(repr=False)
    #: Legacy bridges on this chain (``relayer.legacy``) and the address of each one's signer.
    legacy: dict[str, str] = field(default_factory=dict)
    signer_set_ttl: float = SIGNER_SET_TTL
    _signer_sets: dict[str, _CachedSignerSet] = field(default_factory=dict, repr=False)

    def bridge_of(self, transfer: ReadyTransfer) -> str:
        return self.chain.bridges[transfer.token].bridge

    async def build(self, transfers: Sequence[ReadyTransfer]) -> Batch | None:
        """A batch of ``transfers`` (one bridge) that estimates cleanly, or None when none can go."""
        bridge = self.bridge_of(transfers[0])
        if bridge in self.legacy:
            return await self.build_legacy(bridge, transfers[0])
        keys = await self.signing_keys(bridge, list(transfers))
        if keys is None:
            return None
        try:
            return await self._estimated(bridge, list(transfers), keys)
        except WouldRevert:
            self._signer_sets.pop(bridge, None)  # NOTE: a rotation may have changed the signers
        good = await self._sort_out(bridge, list(transfers))
        if not good:
            return None
        keys = await self.signing_keys(bridge, good)
        return None if keys is None else await self._estimated(bridge, good, keys)

    async def build_round(
        self, chunks: Sequence[Sequence[ReadyTransfer]]
    ) -> list[Batch | BaseException | None]:
        """``build`` of every chunk at once, with one JSON-RPC request for the whole round.

        Each batch of several orders is signed (in worker threads, side by side) and checked by
        its own ``eth_call``; its gas is one order's ``eth_estimateGas`` times its orders, one
        estimate per bridge and round (the first batch's first order: any one order's estimate
        counts the transaction's base cost, an upper bound per order). All the round's calls go
        in one request. A batch that would revert, and every batch of a bridge whose estimate
        would revert, takes ``build``'s path (culprits sorted out order by order); legacy
        releases and single orders take ``build`` too. Answers in ``chunks``' order: a batch,
        None (nothing of that chunk can go) or the error that stopped it.
        """
        results: list[Batch | BaseException | None] = [None] * len(chunks)
        slow: list[int] = []
        fast: list[tuple[int, str, list[ReadyTransfer], list[bytes]]] = []
        for index, chunk in enumerate(chunks):
            bridge = self.bridge_of(chunk[0])
            if bridge in self.legacy or len(chunk) == 1:
                slow.append(index)
                continue
            keys = await self.signing_keys(bridge, list(chunk))
            if keys is not None:
                fast.append((index, bridge, list(chunk), keys))
        # NOTE: signing is the round's largest piece of CPU work: in threads, off the event loop.
        datas = await asyncio.gather(*(asyncio.to_thread(self.call_data, b, c, k) for _, b, c, k in fast))
        samples: dict[str, str] = {}
        for _, bridge, chunk, keys in fast:
            samples.setdefault(bridge, self.call_data(bridge, chunk[:1], keys))
        calls: list[tuple[str, list[Any]]] = [
            ("eth_call", [{"from": self.account, "to": bridge, "data": data}, "latest"])
            for (_, bridge, _, _), data in zip(fast, datas, strict=True)
        ]
        calls += [
            ("eth_estimateGas", [{"from": self.account, "to": bridge, "data": sample}])
            for bridge, sample in samples.items()
        ]
        answers = await self.rpc.batch_results(calls) if calls else []
        gas_one = dict(zip(samples, answers[len(fast) :], strict=True))
        for (index, bridge, chunk, _), data, checked in zip(fast, datas, answers, strict=False):
            estimate = gas_one[bridge]
            failure = next((a for a in (checked, estimate) if isinstance(a, RpcError)), None)
            if failure is None:
                gas = quantity(estimate, "eth_estimateGas") * len(chunk)
                results[index] = Batch(bridge, chunk, data, gas)
            elif is_revert(failure):
                if checked is failure:
                    self._signer_sets.pop(bridge, None)  # NOTE: a rotation may have changed the signers
                slow.append(index)
            else:
                results[index] = failure
        built = await asyncio.gather(*(self.build(chunks[i]) for i in slow), return_exceptions=True)
        for index, batch in zip(slow, built, strict=True):
            results[index] = batch
        return results

    async def build_legacy(self, bridge: str, transfer: ReadyTransfer) -> Batch | None:
        """``releaseTokens`` for one transfer, paying its sender, signed by the bridge's one signer."""
        key = self.signers.get(self.legacy[bridge])
        if key is None:
            reason = (
                f"the legacy bridge on chain {self.chain.id} is signed for by {self.legacy[bridge]}, "
                "whose key this relayer does not hold: configure it, then approve the transfer"
            )
            await self._stop([transfer], TransferStatus.HELD, reason, "keys")
            return None
        amount, nonce = int(transfer.amount), int(transfer.nonce)
        signature = legacy.sign_release(key, self.chain.id, bridge, transfer.sender, amount, nonce)
        data = legacy.encode_release(transfer.sender, amount, nonce, signature)
        try:
            return Batch(bridge, [transfer], data, await self.estimate(bridge, data))
        except WouldRevert as refused:
            name = refused.reason.name if isinstance(refused.reason, ContractError) else None
            if name == legacy.ALREADY_RELEASED_ERROR:
                await self.already_released_legacy(bridge, transfer)
            else:
                await self.refused(transfer, refused.reason)
            return None

    async def already_released_legacy(self, bridge: str, transfer: ReadyTransfer) -> None:
        start = min((d.start_block for d in self.chain.bridges.values()), default=0)
        found = await legacy.find_release(self.rpc, bridge, int(transfer.nonce), start, self.chain.log_range)
        released = txstore.Released(
            transfer.id, found.tx_hash if found else None, found.block_number if found else None, None
        )
        await txstore.record_released(self.pool, [released])

    async def signing_keys(self, bridge: str, transfers: list[ReadyTransfer]) -> list[bytes] | None:
        """``threshold`` keys of current signers, or None (the transfers are HELD)."""
        signer_set = await self.signer_set(bridge)
        # NOTE: newest signers first: after `ferry keys rotate` adds a signer, signing moves to
        # it before the old one is removed, so few releases in flight carry the old signature.
        keys = [self.signers[address] for address in reversed(signer_set.ordered) if address in self.signers]
        if len(keys) >= signer_set.threshold:
            return keys[: signer_set.threshold]
        reason = (
            f"the bridge on chain {self.chain.id} needs {signer_set.threshold} signatures, but this relayer "
            f"holds keys of only {len(keys)} of its current signers: configure current signer keys, then "
            "approve the transfer"
        )
        await self._stop(transfers, TransferStatus.HELD, reason, "keys")
        return None

    async def signer_set(self, bridge: str) -> SignerSet:
        cached = self._signer_sets.get(bridge)
        now = time.monotonic()
        if cached is None or now - cached.read_at > self.signer_set_ttl:
            value = await TargetBridge(self.rpc, self.chain.id, bridge).signer_set()
            cached = _CachedSignerSet(value, now)
            self._signer_sets[bridge] = cached
        return cached.value

    def call_data(self, bridge: str, transfers: Sequence[ReadyTransfer], keys: list[bytes]) -> str:
        orders = [order_of(t) for t in transfers]
        signatures = [sign_release_order(order, self.chain.id, bridge, keys) for order in orders]
        return encode_release_batch([order.as_tuple() for order in orders], signatures)

    async def _estimated(self, bridge: str, transfers: list[ReadyTransfer], keys: list[bytes]) -> Batch:
        """The batch, checked with one ``eth_call``; its gas from an estimate of its first order alone.

        NOTE: ``eth_estimateGas`` of a whole batch runs it a dozen times or more (a binary
        search), the dearest call a round makes. One order alone estimates cheaply, and that
        figure times the number of orders is an upper bound: each order is counted with the
        transaction's base cost, far more than a batch adds per order.
        """
        # NOTE: signing a batch's orders is the round's largest piece of CPU work; in a thread it
        # no longer holds up the event loop (the follower settling receipts, the other chain).
        data = await asyncio.to_thread(self.call_data, bridge, transfers, keys)
        if len(transfers) == 1:
            return Batch(bridge, transfers, data, await self.estimate(bridge, data))
        sample = self.call_data(bridge, transfers[:1], keys)
        _, gas_one = await asyncio.gather(
            self.check(bridge, data), self.estimate(bridge, sample, headroom=False)
        )
        return Batch(bridge, transfers, data, gas_one * len(transfers))

    async def check(self, bridge: str, data: str) -> None:
        """Raise ``WouldRevert`` when the call would revert now."""
        try:
            await self.rpc.call("eth_call", {"from": self.account, "to": bridge, "data": data}, "latest")
        except RpcError as exc:
            if is_revert(exc):
                raise WouldRevert(revert_of(exc) or exc.message) from None
            raise

    async def estimate(self, bridge: str, data: str, *, headroom: bool = True) -> int:
        request = {"from": self.account, "to": bridge, "data": data}
        try:
            estimate = quantity(await self.rpc.call("eth_estimateGas", request), "eth_estimateGas")
        except RpcError as exc:
            if is_revert(exc):
                raise WouldRevert(revert_of(exc) or exc.message) from None
            raise
        return estimate * (100 + GAS_HEADROOM_PERCENT) // 100 if headroom else estimate

    async def _sort_out(self, bridge: str, transfers: list[ReadyTransfer]) -> list[ReadyTransfer]:
        """Estimate each order alone; deal with the refused ones; return the others."""
        keys = await self.signing_keys(bridge, transfers)
        if keys is None:
            return []
        good: list[ReadyTransfer] = []
        for transfer in transfers:
            try:
                await self.estimate(bridge, self.call_data(bridge, [transfer], keys))
            except WouldRevert as refused:
                await self.refused(transfer, refused.reason)
            else:
                good.append(transfer)
        return good

    async def refused(self, transfer: ReadyTransfer, reason: ContractError | str) -> None:
        """The bridge refuses this order now: FAILED for good, or back-off and try again."""
        tries = transfer.attempts + 1
        await txstore.count_try(self.pool, transfer.id, f"the bridge refuses the release: {reason}")
        verdict = classify_revert(reason, tries)
        if verdict is Verdict.PERMANENT:
            await self._stop(
                [transfer], TransferStatus.FAILED, f"the bridge refuses the release: {reason}", "revert"
            )
            return
        if isinstance(reason, ContractError) and reason.name == "InsufficientLiquidity":
            waited = await short_of_liquidity_for(self.pool, transfer.id)
            if waited >= self.settings.liquidity_wait:
                text = (
                    f"the target bridge on chain {self.chain.id} lacked the liquidity to pay it for "
                    f"{waited:.0f} s (liquidity_wait is {self.settings.liquidity_wait:g} s): {reason}; "
                    "add liquidity, then retry"
                )
                await self._stop([transfer], TransferStatus.FAILED, text, "liquidity")
                return
        delay = backoff(tries)
        log.warning(
            "release refused for now, again in %.1f s: %s", delay, reason, extra={"transfer_id": transfer.id}
        )
        await txstore.defer_transfers(
            self.pool,
            [transfer.id],
            f"the bridge refuses the release for now: {reason}",
            delay,
        )

    async def _stop(
        self, transfers: Sequence[ReadyTransfer], status: TransferStatus, reason: str, kind: str
    ) -> None:
        changes = await txstore.stop_transfers(self.pool, [t.id for t in transfers], status, reason)
        routes = {t.id: t.route_id for t in transfers}
        for change in changes:
            if status is TransferStatus.FAILED:
                RELEASE_FAILURES.labels(routes[change.transfer_id], kind).inc()
        log.error("%s: %s", status.value, reason, extra={"chain_id": self.chain.id})


def order_of(transfer: ReadyTransfer) -> ReleaseOrder:
    return ReleaseOrder(
        transfer.source_chain_id,
        transfer.source_bridge,
        int(transfer.nonce),
        transfer.recipient,
        int(transfer.amount),
    )


def backoff(tries: int) -> float:
    """Exponential back-off with full jitter, capped at ``MAX_BACKOFF`` seconds."""
    ceiling = min(MAX_BACKOFF, 0.5 * 2.0 ** min(tries, 10))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 -- jitter, not cryptography
