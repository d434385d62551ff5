"""The hand-written EIP-712 release-order digest and signatures agree with eth_account."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account.messages import encode_typed_data
from eth_keys.datatypes import PrivateKey, Signature
from eth_utils.crypto import keccak

from relayer.eip712 import (
    ReleaseOrder,
    recover_signer,
    release_order_digest,
    sign_release_order,
    signer_address,
)

SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0
BRIDGE = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
KEYS = [keccak(text=f"ferry test signer {i}") for i in range(5)]

ORDERS = [
    ReleaseOrder(
        1, "0x5FbDB2315678afecb367f032d93F642f64180aa3", 1, "0x70997970C51812dc3A010C7d01b50e0d17dc79C8", 1
    ),
    ReleaseOrder(10, "0x" + "ab" * 20, 2**64 + 7, "0x" + "cd" * 20, 10**24),
    ReleaseOrder(2**256 - 1, "0x" + "00" * 19 + "01", 2**256 - 1, "0x" + "ff" * 20, 2**256 - 1),
]


def _eth_account_digest(order: ReleaseOrder, chain_id: int, bridge: str) -> bytes:
    message: dict[str, Any] = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "ReleaseOrder": [
                {"name": "sourceChainId", "type": "uint256"},
                {"name": "sourceBridge", "type": "address"},
                {"name": "nonce", "type": "uint256"},
                {"name": "recipient", "type": "address"},
                {"name": "amount", "type": "uint256"},
            ],
        },
        "primaryType": "ReleaseOrder",
        "domain": {"name": "FerryBridge", "version": "1", "chainId": chain_id, "verifyingContract": bridge},
        "message": {
            "sourceChainId": order.source_chain_id,
            "sourceBridge": order.source_bridge,
            "nonce": order.nonce,
            "recipient": order.recipient,
            "amount": order.amount,
        },
    }
    signable = encode_typed_data(full_message=message)
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("chain_id", [1, 31337, 2**63])
def test_digest_matches_eth_account(order: ReleaseOrder, chain_id: int) -> None:
    assert release_order_digest(order, chain_id, BRIDGE) == _eth_account_digest(order, chain_id, BRIDGE)


def test_digest_binds_chain_bridge_and_every_field() -> None:
    order = ORDERS[1]
    digest = release_order_digest(order, 1, BRIDGE)
    assert release_order_digest(order, 2, BRIDGE) != digest
    assert release_order_digest(order, 1, "0x" + "12" * 20) != digest
    for changed in (
        ReleaseOrder(11, order.source_bridge, order.nonce, order.recipient, order.amount),
        ReleaseOrder(10, "0x" + "ac" * 20, order.nonce, order.recipient, order.amount),
        ReleaseOrder(10, order.source_bridge, order.nonce + 1, order.recipient, order.amount),
        ReleaseOrder(10, order.source_bridge, order.nonce, "0x" + "ce" * 20, order.amount),
        ReleaseOrder(10, order.source_bridge, order.nonce, order.recipient, order.amount + 1),
    ):
        assert release_order_digest(changed, 1, BRIDGE) != digest


def test_addresses_are_normalised_so_equal_orders_compare_equal() -> None:
    lower = ReleaseOrder(1, BRIDGE.lower(), 3, "0x" + "cd" * 20, 5)
    assert lower.source_bridge == BRIDGE
    assert lower == ReleaseOrder(1, BRIDGE, 3, "0x" + "CD" * 20, 5)
    assert lower.as_tuple() == (1, BRIDGE, 3, lower.recipient, 5)


def test_invalid_orders_are_refused() -> None:
    with pytest.raises(ValueError, match="amount"):
        ReleaseOrder(1, BRIDGE, 1, BRIDGE, -1)
    with pytest.raises(ValueError, match="nonce"):
        ReleaseOrder(1, BRIDGE, 2**256, BRIDGE, 1)
    with pytest.raises(ValueError, match="20-byte hex address"):
        ReleaseOrder(1, "0x1234", 1, BRIDGE, 1)
    with pytest.raises(ValueError, match="wrong checksum"):
        ReleaseOrder(1, BRIDGE.replace("e7f", "E7f"), 1, BRIDGE, 1)


def test_signatures_recover_to_signers_in_ascending_order() -> None:
    order, chain_id = ORDERS[0], 31337
    digest = release_order_digest(order, chain_id, BRIDGE)
    signatures = sign_release_order(order, chain_id, BRIDGE, KEYS)

    expected = sorted((signer_address(key) for key in KEYS), key=lambda address: int(address, 16))
    recovered = []
    for signature in signatures:
        assert len(signature) == 65
        assert signature[64] in (27, 28)
        assert int.from_bytes(signature[32:64], "big") <= SECP256K1_HALF_N  # low s, as OZ ECDSA requires
        independent = Signature(signature[:64] + bytes([signature[64] - 27]))
        recovered.append(independent.recover_public_key_from_msg_hash(digest).to_checksum_address())
        assert recover_signer(digest, signature) == recovered[-1]
    assert recovered == expected


def test_signer_address_matches_eth_keys() -> None:
    for key in KEYS:
        assert signer_address(key) == PrivateKey(key).public_key.to_checksum_address()


def test_the_same_key_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        sign_release_order(ORDERS[0], 1, BRIDGE, [KEYS[0], KEYS[1], KEYS[0]])


def test_malformed_signature_is_refused() -> None:
    with pytest.raises(ValueError, match="65 bytes"):
        recover_signer(bytes(32), bytes(64))
