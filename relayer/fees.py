"""EIP-1559 fees for release transactions: from the node's fee history, bumped when stuck.

- ``suggest_fees``: the tip is the median 50th-percentile reward of recent blocks
  (or ``eth_maxPriorityFeePerGas`` when the node has it and it is higher), never
  below ``MIN_PRIORITY_FEE``; the fee cap is twice the next block's base fee plus
  the tip, so a release survives a few full blocks of base-fee growth.
- ``FeePricer`` (new release transactions): that suggestion, raised to outbid the
  competition seen in the latest block: one wei above the
  ``COMPETITION_PERCENTILE``-th percentile of other senders' tips *and* of their
  fee caps there. A release is what a user waits for, and in a burst of locks it
  would otherwise queue behind all of them: geth-like pools order by effective
  tip, and anvil orders by fee cap (measured with anvil 1.7.1: a higher tip alone
  did not move a transaction ahead of a backlog; a higher fee cap did). A higher
  cap costs nothing by itself (a transaction pays base fee plus tip); the
  relayer's own transactions are left out, so its prices do not feed on themselves.
- ``outbid_in``: a release left out of a full block whose other senders offered more
  than it does was outbid; while none of the account's nonces is being mined, the
  follower re-prices it at once (``relayer.confirmer``) rather than after
  ``replace_after``: every later nonce of the account waits behind it.
- ``replacement_fees``: a transaction not mined in time is re-signed with the same
  nonce and fees at least ``bump_percent`` (12.5 % or more, what nodes require)
  above the last ones, never below them, and at least today's suggestion; capped
  by the configured ``max_fee_per_gas``. When the cap leaves no room for a valid
  bump the answer is None: the transaction stays as it is and an alert fires.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
from dataclasses import dataclass
from typing import Any

from ferry.rpc import RpcClient, RpcError, RpcGarbage, quantity

GWEI = 10**9
#: Lowest tip offered, whatever the node suggests (anvil and some L2s suggest 0).
MIN_PRIORITY_FEE = GWEI // 10
FEE_HISTORY_BLOCKS = 5
#: The percentile of other senders' tips and fee caps in the latest block that a release outbids.
COMPETITION_PERCENTILE = 90


@dataclass(frozen=True)
class Fees:
    max_fee_per_gas: int
    max_priority_fee_per_gas: int


async def suggest_fees(rpc: RpcClient) -> Fees:
    """EIP-1559 fees from recent blocks, with the tip floored at ``MIN_PRIORITY_FEE``."""
    history = await rpc.call("eth_feeHistory", hex(FEE_HISTORY_BLOCKS), "latest", [50])
    if not isinstance(history, dict) or not history.get("baseFeePerGas"):
        raise RpcGarbage("eth_feeHistory answered no baseFeePerGas: is the chain EIP-1559?")
    next_base_fee = quantity(history["baseFeePerGas"][-1], "eth_feeHistory baseFeePerGas")
    rewards = [quantity(r[0], "eth_feeHistory reward") for r in history.get("reward") or [] if r]
    tip = statistics.median_low(rewards) if rewards else 0
    # NOTE: not every node implements eth_maxPriorityFeePerGas; the fee history is enough.
    with contextlib.suppress(RpcError):
        tip = max(tip, quantity(await rpc.call("eth_maxPriorityFeePerGas"), "eth_maxPriorityFeePerGas"))
    tip = max(tip, MIN_PRIORITY_FEE)
    return Fees(max_fee_per_gas=2 * next_base_fee + tip, max_priority_fee_per_gas=tip)


@dataclass(frozen=True)
class Competition:
    """Other senders' prices in one block: the ``COMPETITION_PERCENTILE``-th tip and fee cap (0: none).

    ``gas_left``: the block's gas limit minus its gas used (what a left-out transaction needed more
    of); ``own``: how many of the relayer's own transactions the block holds.
    """

    block_number: int
    tip: int
    fee_cap: int
    gas_left: int = 0
    own: int = 0


def competition_in(block: dict[str, Any], own_account: str) -> Competition:
    """The competition in a block read with its transactions, the relayer's own left out (and counted).

    A legacy transaction's tip is what it pays above the block's base fee (its ``gasPrice``
    less the base fee), as nodes rank it; its fee cap is its ``gasPrice``.
    """
    account = own_account.lower()
    base_fee = quantity(block.get("baseFeePerGas") or "0x0", "block baseFeePerGas")
    tips: list[int] = []
    caps: list[int] = []
    own = 0
    for tx in block.get("transactions") or []:
        if not isinstance(tx, dict):
            continue
        if str(tx.get("from", "")).lower() == account:
            own += 1
            continue
        if tx.get("maxFeePerGas") is not None:
            caps.append(quantity(tx["maxFeePerGas"], "transaction maxFeePerGas"))
            tips.append(quantity(tx.get("maxPriorityFeePerGas") or "0x0", "transaction maxPriorityFeePerGas"))
        elif tx.get("gasPrice") is not None:
            price = quantity(tx["gasPrice"], "transaction gasPrice")
            caps.append(price)
            tips.append(max(price - base_fee, 0))
    number = quantity(block.get("number"), "block number")
    gas_limit = quantity(block.get("gasLimit"), "block gasLimit")
    gas_left = gas_limit - quantity(block.get("gasUsed"), "block gasUsed")
    if not caps:
        return Competition(number, 0, 0, gas_left, own)
    return Competition(number, _percentile(tips), _percentile(caps), gas_left, own)


def outbid_in(fees: Fees, gas: int, competition: Competition) -> bool:
    """True when a transaction priced ``fees`` needing ``gas`` did not fit the block for a better offer.

    The block had less than ``gas`` left and its other senders offered a higher fee cap (what
    anvil orders by) or tip (what geth-like pools order by) at the competition percentile.
    """
    if competition.gas_left >= gas:
        return False  # NOTE: room was left: whatever kept it out, it was not the price
    return competition.fee_cap > fees.max_fee_per_gas or competition.tip > fees.max_priority_fee_per_gas


def _percentile(values: list[int]) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, len(ordered) * COMPETITION_PERCENTILE // 100)]


class FeePricer:
    """Fees for new release transactions of one account: ``suggest_fees``, outbidding the latest block.

    The latest block is read with its transactions once per new head (the fee history's
    newest block says when there is one), so a round that finds the same head pays nothing more.
    """

    def __init__(self, rpc: RpcClient, own_account: str) -> None:
        self.rpc = rpc
        self.own_account = own_account
        self.latest: Competition | None = None
        # NOTE: the submitter's price loop and its follower both ask: one read of a block serves both
        self._reading = asyncio.Lock()

    async def fees(self) -> Fees:
        suggested, answer = await asyncio.gather(suggest_fees(self.rpc), self.rpc.call("eth_blockNumber"))
        head = quantity(answer, "eth_blockNumber")
        async with self._reading:
            # NOTE: "<", not "!=": a caller that read the head before another read a newer block
            # must not step the competition back to the older one.
            if self.latest is None or self.latest.block_number < head:
                block = await self.rpc.call("eth_getBlockByNumber", hex(head), True)
                if not isinstance(block, dict):
                    return suggested  # NOTE: the head moved on or back meanwhile; next round reads it
                self.latest = competition_in(block, self.own_account)
        return outbid(suggested, self.latest)


def outbid(suggested: Fees, competition: Competition) -> Fees:
    """``suggested``, with tip and fee cap each one wei above the competition's when it offers more."""
    tip = max(suggested.max_priority_fee_per_gas, competition.tip + 1 if competition.tip else 0)
    cap = max(suggested.max_fee_per_gas, competition.fee_cap + 1 if competition.fee_cap else 0)
    return Fees(max(cap, tip), tip)


def capped(fees: Fees, cap: int) -> Fees:
    """``fees`` with the fee cap (and so the tip) at most ``cap``."""
    top = min(fees.max_fee_per_gas, cap)
    return Fees(top, min(fees.max_priority_fee_per_gas, top))


def replacement_fees(last: Fees, suggested: Fees, bump_percent: float, cap: int) -> Fees | None:
    """Fees for a replacement of a transaction priced ``last``, or None when ``cap`` forbids one."""
    factor = 1 + bump_percent / 100
    tip = max(math.ceil(last.max_priority_fee_per_gas * factor), suggested.max_priority_fee_per_gas)
    top = max(math.ceil(last.max_fee_per_gas * factor), suggested.max_fee_per_gas, tip)
    if top > cap:
        top = cap
        tip = min(tip, cap)
    # NOTE: nodes refuse a replacement unless both fees rise by the bump (geth: 10 %, we use 12.5 %+).
    if top < math.ceil(last.max_fee_per_gas * factor) or tip < math.ceil(
        last.max_priority_fee_per_gas * factor
    ):
        return None
    return Fees(top, tip)
