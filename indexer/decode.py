"""Decoding FerryBridge logs from raw JSON-RPC log objects, by slicing hex.

This is the indexer's hot path, so it reads the fixed-size ABI words straight out
of the hex strings instead of going through eth_abi. The two events:

- ``TokensLocked(address indexed user, uint256 amount, uint256 indexed nonce,
  address targetAddress, uint256 targetChainId)``: topics [sig, user, nonce],
  data [amount, targetAddress, targetChainId].
- ``TransferReleased(uint256 indexed sourceChainId, uint256 indexed nonce,
  address indexed recipient, uint256 amount, address sourceBridge)``: topics
  [sig, sourceChainId, nonce, recipient], data [amount, sourceBridge].

Address casing (what the database stores):

- bridge addresses (``bridge``, ``source_bridge``) are **lowercase**, like the
  transfer id they are part of (``ferry.domain.transfer_id``);
- people's addresses (``user``, ``target_address``, ``recipient``) are
  **checksummed**, ready to hand to web3.py and to show in a wallet;
- hashes are lowercase 0x hex.

A log whose topic0 is one of ours but whose shape is wrong (topic count, data
length, an address word with high bits set, missing or non-hex fields) raises
``MalformedLog``: the contract cannot emit it, so the node answered garbage.

Speed: a well-formed log (lowercase hex, as nodes answer) is checked and cut into
its fields by ONE regular expression over its fields joined by ``|``
(``_LOCK_SHAPE``, ``_RELEASE_SHAPE``): a single C call instead of one per field.
Anything that does not match that strict shape (uppercase hex, a missing field, a
wrong length...) goes through the field-by-field path, which lowercases what may
be lowercased and raises ``MalformedLog`` with a precise message; both paths give
the same event for the same log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from eth_utils.address import to_checksum_address

from ferry.contracts import TOKENS_LOCKED_TOPIC, TRANSFER_RELEASED_TOPIC
from ferry.domain import transfer_id

_WORD = 64
_ADDRESS_PADDING = "0" * 24
# NOTE: one regex per field checks prefix, length and digits in a single C call.
_FIXED = {size: re.compile(rf"0x[0-9a-fA-F]{{{2 * size}}}") for size in (20, 32)}
_DATA = {count: re.compile(rf"0x[0-9a-fA-F]{{{_WORD * count}}}") for count in (2, 3)}
_QUANTITY = re.compile(r"0x[0-9a-fA-F]{1,16}")
# NOTE: the fast shapes accept lowercase hex only (what nodes answer); the rest takes the slow path.
_POSITION = r"0x([0-9a-f]{40})\|(0x[0-9a-f]{64})\|0x([0-9a-f]{1,16})\|0x([0-9a-f]{1,16})\|(0x[0-9a-f]{64})"
_ADDRESS = r"0{24}([0-9a-f]{40})"
_UINT = r"([0-9a-f]{64})"
_LOCK_SHAPE = re.compile(rf"{_POSITION}\|0x{_ADDRESS}\|0x{_UINT}\|0x{_UINT}{_ADDRESS}{_UINT}")
_RELEASE_SHAPE = re.compile(rf"{_POSITION}\|0x{_UINT}\|0x{_UINT}\|0x{_ADDRESS}\|0x{_UINT}{_ADDRESS}")


class MalformedLog(Exception):
    """A log with a FerryBridge event topic that the contract could not have emitted."""


@dataclass(frozen=True, slots=True)
class LockEvent:
    """A ``TokensLocked`` log: tokens locked on ``chain_id`` for ``target_chain_id``."""

    chain_id: int
    bridge: str
    tx_hash: str
    log_index: int
    block_number: int
    block_hash: str
    user: str
    amount: int
    nonce: int
    target_address: str
    target_chain_id: int

    @property
    def transfer_id(self) -> str:
        return transfer_id(self.chain_id, self.bridge, self.nonce)


@dataclass(frozen=True, slots=True)
class ReleaseEvent:
    """A ``TransferReleased`` log: the release on ``chain_id`` of a lock made elsewhere."""

    chain_id: int
    bridge: str
    tx_hash: str
    log_index: int
    block_number: int
    block_hash: str
    source_chain_id: int
    nonce: int
    recipient: str
    amount: int
    source_bridge: str

    @property
    def transfer_id(self) -> str:
        return transfer_id(self.source_chain_id, self.source_bridge, self.nonce)


BridgeEvent = LockEvent | ReleaseEvent


def decode_log(chain_id: int, log: dict[str, Any]) -> BridgeEvent | None:
    """Decode one log from ``eth_getLogs``; None when topic0 is not a FerryBridge transfer event."""
    topics = log.get("topics")
    if not isinstance(topics, list) or not topics:
        raise MalformedLog("log has no topics")
    topic0 = topics[0]
    if topic0 == TOKENS_LOCKED_TOPIC:
        return _fast_lock(chain_id, log, topics) or _decode_lock(chain_id, log, topics)
    if topic0 == TRANSFER_RELEASED_TOPIC:
        return _fast_release(chain_id, log, topics) or _decode_release(chain_id, log, topics)
    topic0 = _hex(topic0, "topics[0]", 32).lower()
    if topic0 == TOKENS_LOCKED_TOPIC:
        return _decode_lock(chain_id, log, topics)
    if topic0 == TRANSFER_RELEASED_TOPIC:
        return _decode_release(chain_id, log, topics)
    return None


def _fields(log: dict[str, Any], topics: list[Any], count: int) -> str | None:
    """The log's fields joined by ``|`` for the fast shapes; None when one is not a string."""
    if len(topics) != count:
        return None
    fields: tuple[Any, ...] = (
        log.get("address"),
        log.get("transactionHash"),
        log.get("logIndex"),
        log.get("blockNumber"),
        log.get("blockHash"),
        *topics[1:],
        log.get("data"),
    )
    try:
        return "|".join(fields)
    except TypeError:  # a field is missing or not a string: the slow path says which
        return None


def _fast_lock(chain_id: int, log: dict[str, Any], topics: list[Any]) -> LockEvent | None:
    joined = _fields(log, topics, 3)
    match = _LOCK_SHAPE.fullmatch(joined) if joined is not None else None
    if match is None:
        return None
    bridge, tx_hash, log_index, block, block_hash, user, nonce, amount, target, target_chain = match.groups()
    return LockEvent(
        chain_id,
        "0x" + bridge,
        tx_hash,
        int(log_index, 16),
        int(block, 16),
        block_hash,
        _checksummed(user),
        int(amount, 16),
        int(nonce, 16),
        _checksummed(target),
        int(target_chain, 16),
    )


def _fast_release(chain_id: int, log: dict[str, Any], topics: list[Any]) -> ReleaseEvent | None:
    joined = _fields(log, topics, 4)
    match = _RELEASE_SHAPE.fullmatch(joined) if joined is not None else None
    if match is None:
        return None
    bridge, tx_hash, log_index, block, block_hash, source_chain, nonce, recipient, amount, source = (
        match.groups()
    )
    return ReleaseEvent(
        chain_id,
        "0x" + bridge,
        tx_hash,
        int(log_index, 16),
        int(block, 16),
        block_hash,
        int(source_chain, 16),
        int(nonce, 16),
        _checksummed(recipient),
        int(amount, 16),
        "0x" + source,
    )


def _decode_lock(chain_id: int, log: dict[str, Any], topics: list[Any]) -> LockEvent:
    if len(topics) != 3:
        raise MalformedLog(f"TokensLocked log has {len(topics)} topics, expected 3")
    data = _data_words(log, 3, "TokensLocked")
    return LockEvent(
        chain_id,
        *_position(log),
        user=_address_word(_hex(topics[1], "topics[1]", 32)[2:], "user"),
        amount=int(data[0], 16),
        nonce=int(_hex(topics[2], "topics[2]", 32), 16),
        target_address=_address_word(data[1], "targetAddress"),
        target_chain_id=int(data[2], 16),
    )


def _decode_release(chain_id: int, log: dict[str, Any], topics: list[Any]) -> ReleaseEvent:
    if len(topics) != 4:
        raise MalformedLog(f"TransferReleased log has {len(topics)} topics, expected 4")
    data = _data_words(log, 2, "TransferReleased")
    return ReleaseEvent(
        chain_id,
        *_position(log),
        source_chain_id=int(_hex(topics[1], "topics[1]", 32), 16),
        nonce=int(_hex(topics[2], "topics[2]", 32), 16),
        recipient=_address_word(_hex(topics[3], "topics[3]", 32)[2:], "recipient"),
        amount=int(data[0], 16),
        source_bridge=_address_word(data[1], "sourceBridge").lower(),
    )


def _position(log: dict[str, Any]) -> tuple[str, str, int, int, str]:
    """(bridge, tx_hash, log_index, block_number, block_hash) of a log, validated."""
    return (
        _hex(log.get("address"), "address", 20).lower(),
        _hex(log.get("transactionHash"), "transactionHash", 32).lower(),
        _quantity(log.get("logIndex"), "logIndex"),
        _quantity(log.get("blockNumber"), "blockNumber"),
        _hex(log.get("blockHash"), "blockHash", 32).lower(),
    )


def _data_words(log: dict[str, Any], count: int, event: str) -> list[str]:
    data = log.get("data")
    if not isinstance(data, str) or _DATA[count].fullmatch(data) is None:
        raise MalformedLog(f"{event} log data is not {count} ABI words of 0x hex")
    return [data[2 + i * _WORD : 2 + (i + 1) * _WORD] for i in range(count)]


def _address_word(word: str, field: str) -> str:
    if not word.startswith(_ADDRESS_PADDING):
        raise MalformedLog(f"{field} is not an ABI-encoded address (high bytes set)")
    return _checksummed(word[24:].lower())


@lru_cache(maxsize=4_096)
def _checksummed(hex40: str) -> str:
    # NOTE: cached because the same users and bridges recur; checksumming is a keccak. Small: a
    # full cache of distinct addresses costs ~300 bytes an entry (65,536 entries were ~20 MB).
    return to_checksum_address("0x" + hex40)


def _hex(value: Any, field: str, size: int) -> str:
    if not isinstance(value, str) or _FIXED[size].fullmatch(value) is None:
        raise MalformedLog(f"log field {field} is not {size} bytes of 0x hex")
    return value


def _quantity(value: Any, field: str) -> int:
    if not isinstance(value, str) or _QUANTITY.fullmatch(value) is None:
        raise MalformedLog(f"log field {field} is not a hex quantity")
    return int(value, 16)
