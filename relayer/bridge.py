"""Reading a target-chain FerryBridge over JSON-RPC: replay state, signer set, past releases.

Calls are ABI-encoded with web3's contract encoding from the committed artifact
(``ferry.contracts.load_artifact('FerryBridge')``) and sent through
``ferry.rpc.RpcClient``, so the relayer speaks to any JSON-RPC node without
web3's provider stack. Reads use the ``latest`` block: "already processed" at
latest is what decides whether a release is still owed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol, cast

from eth_abi.abi import decode as abi_decode
from eth_typing import ABIFunction
from eth_utils.abi import get_abi_output_types
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract

from ferry.contracts import TRANSFER_RELEASED_TOPIC, ContractError, decode_contract_error, load_artifact
from ferry.rpc import RpcClient, RpcError, RpcGarbage, quantity


@cache
def _abi_contract() -> type[Contract]:
    return Web3().eth.contract(abi=load_artifact("FerryBridge").abi)


def encode_call(function: str, *args: Any) -> str:
    """0x-hex call data for ``function(*args)`` of FerryBridge."""
    return str(_abi_contract().encode_abi(function, args=list(args)))


RELEASE_BATCH_SELECTOR = keccak(text="releaseBatch((uint256,address,uint256,address,uint256)[],bytes[][])")[
    :4
]
_SIGNATURE_WORDS = 3  # NOTE: 65 bytes padded to 96


def _uint(value: int) -> bytes:
    return value.to_bytes(32, "big")


def encode_release_batch(
    orders: Sequence[tuple[int, str, int, str, int]], signatures: Sequence[Sequence[bytes]]
) -> str:
    """0x-hex call data of ``releaseBatch(orders, signatures)``, ABI-encoded by hand.

    The hot path of the submitter: web3's generic encoder takes ~10 ms per order, this
    a few microseconds. Every signature is 65 bytes (``relayer.eip712``). A test checks
    that it equals eth_abi's encoding.
    """
    if len(orders) != len(signatures):
        raise ValueError("releaseBatch takes one signature list per order")
    parts = [RELEASE_BATCH_SELECTOR, _uint(64), _uint(64 + 32 + 160 * len(orders)), _uint(len(orders))]
    for source_chain_id, source_bridge, nonce, recipient, amount in orders:
        parts += [
            _uint(source_chain_id),
            bytes(12) + bytes.fromhex(source_bridge[2:]),
            _uint(nonce),
            bytes(12) + bytes.fromhex(recipient[2:]),
            _uint(amount),
        ]
    parts.append(_uint(len(signatures)))
    offset = 32 * len(signatures)
    for inner in signatures:
        parts.append(_uint(offset))
        offset += 32 + 32 * len(inner) + 32 * (1 + _SIGNATURE_WORDS) * len(inner)
    for inner in signatures:
        parts.append(_uint(len(inner)))
        parts += [_uint(32 * len(inner) + 32 * (1 + _SIGNATURE_WORDS) * i) for i in range(len(inner))]
        for signature in inner:
            if len(signature) != 65:
                raise ValueError("a release signature is 65 bytes")
            parts += [_uint(65), signature + bytes(32 * _SIGNATURE_WORDS - 65)]
    return "0x" + b"".join(parts).hex()


def decode_result(function: str, data: Any) -> tuple[Any, ...]:
    if not isinstance(data, str) or not data.startswith("0x"):
        raise RpcGarbage(f"eth_call of {function} answered {data!r}, not hex data")
    abi = cast(ABIFunction, _abi_contract().get_function_by_name(function).abi)
    return tuple(abi_decode(get_abi_output_types(abi), bytes.fromhex(data[2:])))


def _word(value: int) -> str:
    return "0x" + value.to_bytes(32, "big").hex()


class OrderKey(Protocol):
    """What identifies a release order on chain (a ``ReleaseOrder`` is one)."""

    @property
    def source_chain_id(self) -> int: ...
    @property
    def source_bridge(self) -> str: ...
    @property
    def nonce(self) -> int: ...


@dataclass(frozen=True)
class LockKey:
    """An order's identity alone: (source chain, source bridge, lock nonce)."""

    source_chain_id: int
    source_bridge: str
    nonce: int


@dataclass(frozen=True)
class SignerSet:
    threshold: int
    signers: frozenset[str]
    #: The signers in the bridge's order: ``setSigners`` appends a new signer last.
    ordered: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReleaseLog:
    """A ``TransferReleased`` event for one order: the transaction that paid it."""

    tx_hash: str
    block_number: int


@functools.lru_cache(maxsize=4096)
def checksummed(address: str) -> str:
    """EIP-55 spelling of ``address``, remembered: bridges and their addresses repeat on the hot path."""
    return to_checksum_address(address)


class TargetBridge:
    """The FerryBridge a transfer is released from, on its target chain."""

    def __init__(self, rpc: RpcClient, chain_id: int, address: str) -> None:
        self.rpc = rpc
        self.chain_id = chain_id
        self.address = checksummed(address)

    async def _call(self, function: str, *args: Any) -> tuple[Any, ...]:
        data = encode_call(function, *args)
        answer = await self.rpc.call("eth_call", {"to": self.address, "data": data}, "latest")
        return decode_result(function, answer)

    async def is_processed(self, order: OrderKey) -> bool:
        (processed,) = await self._call(
            "isProcessed", order.source_chain_id, order.source_bridge, order.nonce
        )
        return bool(processed)

    async def signer_set(self) -> SignerSet:
        (threshold,) = await self._call("threshold")
        (signers,) = await self._call("getSigners")
        ordered = tuple(to_checksum_address(s) for s in signers)
        return SignerSet(int(threshold), frozenset(ordered), ordered)

    async def revert_reason(self, sender: str, data: str) -> ContractError | str | None:
        """Why ``data`` from ``sender`` would revert now (None: it would succeed now)."""
        try:
            await self.rpc.call("eth_call", {"from": sender, "to": self.address, "data": data}, "latest")
        except RpcError as exc:
            return revert_of(exc) or exc.message
        return None

    async def find_release(self, order: OrderKey, start_block: int, log_range: int) -> ReleaseLog | None:
        """The transaction that released ``order``, searching back from the head to ``start_block``."""
        topics = [TRANSFER_RELEASED_TOPIC, _word(order.source_chain_id), _word(order.nonce)]
        high = await self.rpc.block_number()
        while high >= start_block:
            low = max(start_block, high - log_range + 1)
            logs = await self.rpc.get_logs([self.address], topics, low, high)
            found = _matching(logs, order)
            if found is not None:
                return found
            high = low - 1
        return None


def _matching(logs: Sequence[dict[str, Any]], order: OrderKey) -> ReleaseLog | None:
    for log in reversed(logs):
        if log.get("removed"):
            continue
        data = str(log.get("data", "0x"))
        amount_and_bridge = bytes.fromhex(data.removeprefix("0x"))
        if len(amount_and_bridge) != 64:
            continue
        source_bridge = to_checksum_address(amount_and_bridge[44:64])
        if source_bridge.lower() == order.source_bridge.lower():
            return ReleaseLog(str(log["transactionHash"]), quantity(log["blockNumber"], "log blockNumber"))
    return None


def revert_of(error: RpcError) -> ContractError | None:
    """The contract's custom error inside a node's "execution reverted" answer, if any."""
    data = error.data
    if isinstance(data, dict):  # some nodes nest it: {"data": "0x..."}
        data = data.get("data")
    return decode_contract_error(data) if isinstance(data, str) and data.startswith("0x") else None


def is_revert(error: RpcError) -> bool:
    return error.code == 3 or "revert" in error.message.lower()
