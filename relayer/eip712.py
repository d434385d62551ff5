"""EIP-712 release orders for FerryBridge, hashed and signed in pure Python.

The relayer signs one `ReleaseOrder` per confirmed lock. The digest is computed
by hand from keccak (domain separator + struct hash), because web3's generic
`encode_typed_data` is far too slow for the hot path; a unit test checks that
both agree, and an integration test checks the contract's `hashOrder` too.

Signatures are 65 bytes, r || s || v with v in {27, 28}, low-s (libsecp256k1
always normalises s), and are returned in strictly ascending signer-address
order, which is the order `FerryBridge.release` requires.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from typing import Final

from coincurve import PrivateKey, PublicKey
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

DOMAIN_NAME: Final = "FerryBridge"
DOMAIN_VERSION: Final = "1"
DOMAIN_TYPE: Final = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
RELEASE_ORDER_TYPE: Final = (
    "ReleaseOrder(uint256 sourceChainId,address sourceBridge,uint256 nonce,address recipient,uint256 amount)"
)

_DOMAIN_TYPEHASH: Final = keccak(text=DOMAIN_TYPE)
_RELEASE_ORDER_TYPEHASH: Final = keccak(text=RELEASE_ORDER_TYPE)
_NAME_HASH: Final = keccak(text=DOMAIN_NAME)
_VERSION_HASH: Final = keccak(text=DOMAIN_VERSION)
_UINT256_LIMIT: Final = 1 << 256
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")


def _uint256(value: int, field: str) -> bytes:
    if not 0 <= value < _UINT256_LIMIT:
        raise ValueError(f"{field} must be a uint256, got {value}")
    return value.to_bytes(32, "big")


@lru_cache(maxsize=16_384)  # NOTE: bridges and recipients repeat; checksumming is a keccak each
def _checksummed(address: str, field: str) -> str:
    """Validate a 0x-prefixed hex address and return it in checksum form.

    Mixed-case input must carry a valid checksum: a wrong one is most likely a typo.
    """
    body = address[2:] if address[:2] in ("0x", "0X") else ""
    if len(body) != 40 or any(char not in _HEX_DIGITS for char in body):
        raise ValueError(f"{field} must be a 0x-prefixed 20-byte hex address, got {address!r}")
    checksummed = to_checksum_address("0x" + body)
    if body not in (body.lower(), body.upper()) and checksummed[2:] != body:
        raise ValueError(
            f"{field} {address!r} has a wrong checksum (mixed-case letters): check it for a typo"
        )
    return checksummed


def _address_word(address: str) -> bytes:
    """ABI-encode a 0x-prefixed hex address as a 32-byte word."""
    return bytes(12) + bytes.fromhex(address[2:])


@dataclass(frozen=True, slots=True)
class ReleaseOrder:
    """Pay `amount` to `recipient` for lock `nonce` of `source_bridge` on `source_chain_id`.

    Addresses are validated and stored in checksum form, so equal orders compare equal.
    """

    source_chain_id: int
    source_bridge: str
    nonce: int
    recipient: str
    amount: int

    def __post_init__(self) -> None:
        # NOTE: frozen dataclass: normalise through object.__setattr__.
        object.__setattr__(self, "source_bridge", _checksummed(self.source_bridge, "source_bridge"))
        object.__setattr__(self, "recipient", _checksummed(self.recipient, "recipient"))
        for field in ("source_chain_id", "nonce", "amount"):
            _uint256(getattr(self, field), field)

    def as_tuple(self) -> tuple[int, str, int, str, int]:
        """The order as the contract's `ReleaseOrder` struct argument."""
        return (self.source_chain_id, self.source_bridge, self.nonce, self.recipient, self.amount)

    def struct_hash(self) -> bytes:
        return keccak(
            _RELEASE_ORDER_TYPEHASH
            + _uint256(self.source_chain_id, "source_chain_id")
            + _address_word(self.source_bridge)
            + _uint256(self.nonce, "nonce")
            + _address_word(self.recipient)
            + _uint256(self.amount, "amount")
        )


@lru_cache(maxsize=256)
def domain_separator(chain_id: int, bridge: str) -> bytes:
    """The EIP-712 domain separator of the FerryBridge at `bridge` on `chain_id`."""
    return keccak(
        _DOMAIN_TYPEHASH
        + _NAME_HASH
        + _VERSION_HASH
        + _uint256(chain_id, "chain_id")
        + _address_word(_checksummed(bridge, "bridge"))
    )


def release_order_digest(order: ReleaseOrder, chain_id: int, bridge: str) -> bytes:
    """The 32-byte digest signers sign for `order`, released by `bridge` on `chain_id`."""
    return keccak(b"\x19\x01" + domain_separator(chain_id, bridge) + order.struct_hash())


def _address_of(public_key: PublicKey) -> str:
    return to_checksum_address(keccak(public_key.format(compressed=False)[1:])[-20:])


def signer_address(private_key: bytes) -> str:
    """The checksum address of a 32-byte private key."""
    return _address_of(PrivateKey(private_key).public_key)


def recover_signer(digest: bytes, signature: bytes) -> str:
    """The checksum address that produced a 65-byte r||s||v signature of `digest`."""
    if len(signature) != 65 or signature[64] not in (27, 28):
        raise ValueError("a release signature is 65 bytes, r || s || v with v 27 or 28")
    recoverable = signature[:64] + bytes([signature[64] - 27])
    return _address_of(PublicKey.from_signature_and_message(recoverable, digest, hasher=None))


@lru_cache(maxsize=64)
def _signing_key(private_key: bytes) -> tuple[PrivateKey, bytes]:
    """The key object and its 20-byte address (deriving the public key costs more than a signature)."""
    if len(private_key) != 32:
        raise ValueError("a signer private key is 32 bytes")
    key = PrivateKey(private_key)
    return key, keccak(key.public_key.format(compressed=False)[1:])[-20:]


def sign_release_order(
    order: ReleaseOrder, chain_id: int, bridge: str, private_keys: list[bytes]
) -> list[bytes]:
    """Sign `order` with every key; signatures sorted by ascending signer address."""
    digest = release_order_digest(order, chain_id, bridge)
    signed: list[tuple[bytes, bytes]] = []
    for private_key in private_keys:
        key, address = _signing_key(private_key)
        raw = key.sign_recoverable(digest, hasher=None)
        signed.append((address, raw[:64] + bytes([raw[64] + 27])))
    signed.sort(key=lambda pair: pair[0])
    for (first, _), (second, _) in pairwise(signed):
        if first == second:
            raise ValueError(f"the same signer key was given twice ({to_checksum_address(first)})")
    return [signature for _, signature in signed]
