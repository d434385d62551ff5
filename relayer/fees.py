"""EIP-1559 fees for release transactions: from the node's fee history, bumped when stuck.

- ``suggest_fees``: the tip is the median 50th-percentile reward of recent blocks
  (or ``eth_maxPriorityFeePerGas`` when the node has it and it is higher), never
  below ``MIN_PRIORITY_FEE``; the fee cap is twice the next block's base fee plus
  the tip, so a release survives a few full blocks of base-fee growth.
- ``replacement_fees``: a transaction not mined in time is re-signed with the same
  nonce and fees at least ``bump_percent`` (12.5 % or more, what nodes require)
  above the last ones, never below them, and at least today's suggestion; capped
  by the configured ``max_fee_per_gas``. When the cap leaves no room for a valid
  bump the answer is None: the transaction stays as it is and an alert fires.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from dataclasses import dataclass

from ferry.rpc import RpcClient, RpcError, RpcGarbage, quantity

GWEI = 10**9
#: Lowest tip offered, whatever the node suggests (anvil and some L2s suggest 0).
MIN_PRIORITY_FEE = GWEI // 10
FEE_HISTORY_BLOCKS = 5


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
