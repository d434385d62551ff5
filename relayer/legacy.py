"""The ``legacy`` adapter: releases through bridges deployed by the original design.

Those bridges expose ``releaseTokens(address user, uint256 amount, uint256 nonce,
bytes signature)``, verify one signer's EIP-712 signature (domain
"CrossChainBridge", version "1", type ``ReleaseTokens(address user,uint256
amount,uint256 nonce)``), pay ``user`` and emit ``TokensReleased(address indexed
user, uint256 amount, uint256 indexed nonce)``. They have no batch call, so each
release is its own transaction, and they pay the *sender* of the lock: a transfer
that names another recipient is held (``relayer.limits``) unless an operator
approves paying the sender.

Replay: the bridge refuses a nonce it already paid (``NonceAlreadyReleased``);
the relayer treats that as success and records the transaction that paid it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Final

from coincurve import PrivateKey
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract

from ferry.contracts import event_topic, load_artifact
from ferry.rpc import RpcClient, quantity

DOMAIN_TYPE: Final = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
RELEASE_TOKENS_TYPE: Final = "ReleaseTokens(address user,uint256 amount,uint256 nonce)"
TOKENS_RELEASED_TOPIC: Final = event_topic("TokensReleased(address,uint256,uint256)")
ALREADY_RELEASED_ERROR: Final = "NonceAlreadyReleased"


@cache
def _contract() -> type[Contract]:
    return Web3().eth.contract(abi=load_artifact("LegacyBridge").abi)


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _address_word(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(to_checksum_address(address)[2:])


def release_digest(chain_id: int, bridge: str, user: str, amount: int, nonce: int) -> bytes:
    """The EIP-712 digest the legacy bridge's signer signs."""
    domain = keccak(
        keccak(text=DOMAIN_TYPE)
        + keccak(text="CrossChainBridge")
        + keccak(text="1")
        + _word(chain_id)
        + _address_word(bridge)
    )
    struct = keccak(keccak(text=RELEASE_TOKENS_TYPE) + _address_word(user) + _word(amount) + _word(nonce))
    return keccak(b"\x19\x01" + domain + struct)


def sign_release(private_key: bytes, chain_id: int, bridge: str, user: str, amount: int, nonce: int) -> bytes:
    """A 65-byte r || s || v signature (v 27/28) of the release."""
    raw = PrivateKey(private_key).sign_recoverable(
        release_digest(chain_id, bridge, user, amount, nonce), hasher=None
    )
    return raw[:64] + bytes([raw[64] + 27])


def encode_release(user: str, amount: int, nonce: int, signature: bytes) -> str:
    """0x-hex call data of ``releaseTokens``."""
    return str(
        _contract().encode_abi("releaseTokens", args=[to_checksum_address(user), amount, nonce, signature])
    )


@dataclass(frozen=True)
class LegacyRelease:
    tx_hash: str
    block_number: int


def released_nonces(logs: list[dict[str, Any]], bridge: str) -> set[int]:
    """Nonces a ``TokensReleased`` of ``bridge`` in these logs paid."""
    nonces: set[int] = set()
    for entry in logs:
        topics = entry.get("topics") or []
        if (
            str(entry.get("address", "")).lower() != bridge.lower()
            or len(topics) != 3
            or entry.get("removed")
        ):
            continue
        if str(topics[0]).lower() == TOKENS_RELEASED_TOPIC:
            nonces.add(int(str(topics[2]), 16))
    return nonces


async def find_release(
    rpc: RpcClient, bridge: str, nonce: int, start_block: int, log_range: int
) -> LegacyRelease | None:
    """The transaction that paid ``nonce`` on ``bridge``, searching back from the head."""
    topics = [TOKENS_RELEASED_TOPIC, None, "0x" + _word(nonce).hex()]
    high = await rpc.block_number()
    while high >= start_block:
        low = max(start_block, high - log_range + 1)
        logs = [log for log in await rpc.get_logs([bridge], topics, low, high) if not log.get("removed")]
        if logs:
            return LegacyRelease(str(logs[-1]["transactionHash"]), quantity(logs[-1]["blockNumber"]))
        high = low - 1
    return None
