"""Ethereum's 2048-bit logs bloom: could a block hold a log from these addresses and topics?

Used to check *empty* ``eth_getLogs`` answers: a node that answers "no logs" for
a block whose bloom says our bridge logged one of our events there is suspect.
A bloom can say "maybe" falsely, never "no" falsely, so only a "no" is certain;
the caller re-asks once (another endpoint when there is one) on a "maybe".
"""

from __future__ import annotations

from collections.abc import Iterable

from eth_utils.crypto import keccak

BLOOM_BYTES = 256


def _bits(item: bytes) -> tuple[int, int, int]:
    digest = keccak(item)
    return tuple((((digest[i] << 8) | digest[i + 1]) & 2047) for i in (0, 2, 4))  # type: ignore[return-value]


def _has(bloom: bytes, item: bytes) -> bool:
    return all(bloom[BLOOM_BYTES - 1 - bit // 8] & (1 << (bit % 8)) for bit in _bits(item))


def may_contain(bloom_hex: str | None, addresses: Iterable[str], topics: Iterable[str]) -> bool:
    """True when the bloom admits a log from one of ``addresses`` with one of ``topics``.

    A missing or malformed bloom admits everything (nothing can be ruled out).
    """
    if not isinstance(bloom_hex, str) or len(bloom_hex) != 2 + 2 * BLOOM_BYTES:
        return True
    try:
        bloom = bytes.fromhex(bloom_hex[2:])
    except ValueError:
        return True
    return any(_has(bloom, bytes.fromhex(a[2:])) for a in addresses) and any(
        _has(bloom, bytes.fromhex(t[2:])) for t in topics
    )
