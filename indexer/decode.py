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
    topic0 = _hex(topics[0], "topics[0]", 32).lower()
    if topic0 == TOKENS_LOCKED_TOPIC:
        return _decode_lock(chain_id, log, topics)
    if topic0 == TRANSFER_RELEASED_TOPIC:
        return _decode_release(chain_id, log, topics)
    return None


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


@lru_cache(maxsize=65_536)
def _checksummed(hex40: str) -> str:
    # NOTE: cached because the same users and bridges recur; checksumming is a keccak.
    return to_checksum_address("0x" + hex40)


def _hex(value: Any, field: str, size: int) -> str:
    if not isinstance(value, str) or _FIXED[size].fullmatch(value) is None:
        raise MalformedLog(f"log field {field} is not {size} bytes of 0x hex")
    return value


def _quantity(value: Any, field: str) -> int:
    if not isinstance(value, str) or _QUANTITY.fullmatch(value) is None:
        raise MalformedLog(f"log field {field} is not a hex quantity")
    return int(value, 16)
