"""Release transactions: nonce ownership, fees, signing, persistence, broadcast.

Objectives, in order:

1. **Never reuse or skip an account nonce.** Nonces of one submitting account on
   one chain are handed out under ``pg_advisory_xact_lock`` on a key derived from
   (chain id, account), so several relayer processes can share an account. The
   next nonce is ``max(node's pending count, highest SENT/MINED/REVERTED attempt
   + 1)``: the database covers transactions signed but not yet seen by the node,
   the node covers transactions sent from elsewhere.
2. **Persist before broadcasting.** The signed raw transaction, its fees and the
   transfer's move to SUBMITTED (its history row carries the hash) commit in one
   transaction *before* ``eth_sendRawTransaction``. A crash after COMMIT leaves a
   SENT attempt that the next run re-broadcasts unchanged, so the nonce stays
   gap-free; a crash before COMMIT leaves nothing at all.
3. **One transaction in flight per transfer.** ``prepare`` refuses (``Superseded``)
   when the transfer already has a SENT attempt or has left CONFIRMED/SUBMITTED,
   so two runs racing on one transfer cannot both sign.

Fees are EIP-1559: the tip is the node's suggestion (``eth_maxPriorityFeePerGas``,
else the median reward of recent blocks) but never below ``MIN_PRIORITY_FEE``;
the fee cap is twice the next block's base fee plus the tip. Gas is
``eth_estimateGas`` plus 20 %. Replacing a stuck transaction with higher fees
(gas bumping) is a later step; it will reuse the attempt's nonce.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import statistics
from dataclasses import dataclass
from typing import Any

import asyncpg
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from ferry.contracts import ContractError
from ferry.domain import TransferStatus
from ferry.rpc import RpcClient, RpcError, RpcGarbage, quantity
from ferry.transitions import Move, move_transfers
from relayer.bridge import is_revert, revert_of
from relayer.store import AttemptRow

log = logging.getLogger(__name__)

GWEI = 10**9
#: Lowest tip offered, whatever the node suggests (anvil and some L2s suggest 0).
MIN_PRIORITY_FEE = GWEI // 10
#: Headroom over ``eth_estimateGas``, in percent.
GAS_HEADROOM_PERCENT = 20
FEE_HISTORY_BLOCKS = 5


class WouldRevert(Exception):
    """``eth_estimateGas`` says the release would revert; ``reason`` says why."""

    def __init__(self, reason: ContractError | str) -> None:
        super().__init__(f"the release would revert: {reason}")
        self.reason = reason


class Superseded(Exception):
    """Another run already has this transfer's release in flight, or it moved on."""


class Broadcast(enum.Enum):
    SENT = "sent"
    ALREADY_KNOWN = "already known"
    NONCE_TOO_LOW = "nonce too low"


@dataclass(frozen=True)
class Fees:
    max_fee_per_gas: int
    max_priority_fee_per_gas: int


@dataclass(frozen=True)
class ReleaseCall:
    """A call to the target bridge that a release transaction will carry."""

    transfer_id: str
    chain_id: int
    bridge: str
    data: str


def nonce_lock_key(chain_id: int, account: str) -> int:
    """A signed 64-bit advisory-lock key for one (chain, submitting account)."""
    digest = keccak(text=f"ferry:nonce:{chain_id}:{account.lower()}")
    return int.from_bytes(digest[:8], "big", signed=True)


class Submitter:
    """Signs and sends release transactions from one submitting account."""

    def __init__(self, private_key: bytes) -> None:
        self._account: LocalAccount = Account.from_key(private_key)
        self.address: str = self._account.address

    def __repr__(self) -> str:
        return f"Submitter({self.address})"

    async def prepare(self, pool: asyncpg.Pool, rpc: RpcClient, call: ReleaseCall) -> AttemptRow:
        """Estimate, sign and persist a release transaction (and the move to SUBMITTED)."""
        gas = await self.estimate_gas(rpc, call)
        fees = await suggest_fees(rpc)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1)", nonce_lock_key(call.chain_id, self.address)
            )
            status = await _lock_transfer(conn, call.transfer_id)
            nonce = await self._next_nonce(conn, rpc, call.chain_id)
            tx_hash, raw = self._sign(call, nonce, gas, fees)
            attempt_id: int = await conn.fetchval(
                """
                INSERT INTO release_attempts (transfer_id, chain_id, account, account_nonce, tx_hash, raw_tx,
                                              max_fee_per_gas, max_priority_fee_per_gas, status)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'SENT') RETURNING id
                """,
                call.transfer_id, call.chain_id, self.address, nonce, tx_hash, raw,
                fees.max_fee_per_gas, fees.max_priority_fee_per_gas,
            )  # fmt: skip
            await conn.execute("UPDATE transfers SET attempts = attempts + 1 WHERE id = $1", call.transfer_id)
            if status is TransferStatus.CONFIRMED:
                move = Move(call.transfer_id, TransferStatus.SUBMITTED, tx_hash=tx_hash)
                await move_transfers(conn, [move])
        return AttemptRow(
            attempt_id, call.transfer_id, call.chain_id, self.address, nonce, tx_hash, raw, "SENT"
        )

    async def estimate_gas(self, rpc: RpcClient, call: ReleaseCall) -> int:
        request = {"from": self.address, "to": call.bridge, "data": call.data}
        try:
            estimate = quantity(await rpc.call("eth_estimateGas", request), "eth_estimateGas")
        except RpcError as exc:
            if is_revert(exc):
                raise WouldRevert(revert_of(exc) or exc.message) from None
            raise
        return estimate * (100 + GAS_HEADROOM_PERCENT) // 100

    async def _next_nonce(self, conn: asyncpg.Connection, rpc: RpcClient, chain_id: int) -> int:
        pending = quantity(
            await rpc.call("eth_getTransactionCount", self.address, "pending"), "eth_getTransactionCount"
        )
        highest: int | None = await conn.fetchval(
            """
            SELECT max(account_nonce) FROM release_attempts
             WHERE chain_id = $1 AND account = $2 AND status IN ('SENT', 'MINED', 'REVERTED')
            """,
            chain_id,
            self.address,
        )
        return pending if highest is None else max(pending, highest + 1)

    def _sign(self, call: ReleaseCall, nonce: int, gas: int, fees: Fees) -> tuple[str, bytes]:
        transaction: dict[str, Any] = {
            "type": 2,
            "chainId": call.chain_id,
            "nonce": nonce,
            "to": call.bridge,
            "value": 0,
            "data": call.data,
            "gas": gas,
            "maxFeePerGas": fees.max_fee_per_gas,
            "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
        }
        signed = self._account.sign_transaction(transaction)
        return signed.hash.to_0x_hex(), bytes(signed.raw_transaction)


async def _lock_transfer(conn: asyncpg.Connection, transfer_id: str) -> TransferStatus:
    """Lock the transfer row; refuse when it moved on or already has a release in flight."""
    status: str | None = await conn.fetchval(
        "SELECT status FROM transfers WHERE id = $1 FOR UPDATE", transfer_id
    )
    if status not in (TransferStatus.CONFIRMED, TransferStatus.SUBMITTED):
        raise Superseded(f"transfer {transfer_id} is {status}, no release is owed")
    in_flight = await conn.fetchval(
        "SELECT tx_hash FROM release_attempts WHERE transfer_id = $1 AND status = 'SENT' LIMIT 1",
        transfer_id,
    )
    if in_flight is not None:
        raise Superseded(f"transfer {transfer_id} already has release {in_flight} in flight")
    return TransferStatus(status)


async def broadcast(rpc: RpcClient, raw_tx: bytes) -> Broadcast:
    """Send a signed transaction; "already known" is fine, "nonce too low" is reported."""
    try:
        await rpc.call("eth_sendRawTransaction", "0x" + raw_tx.hex())
    except RpcError as exc:
        message = exc.message.lower()
        if "already known" in message or "already imported" in message or "known transaction" in message:
            return Broadcast.ALREADY_KNOWN
        if "nonce too low" in message or "nonce is too low" in message:
            return Broadcast.NONCE_TOO_LOW
        raise
    return Broadcast.SENT


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
