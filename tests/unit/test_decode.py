"""Decoding FerryBridge logs: real ABI-encoded values in, the bridge's own words out."""

from __future__ import annotations

from typing import Any

import pytest
from eth_abi.abi import encode
from eth_utils.address import to_checksum_address

from ferry.contracts import SIGNERS_UPDATED_TOPIC, TOKENS_LOCKED_TOPIC, TRANSFER_RELEASED_TOPIC
from ferry.rpc import RpcGarbage
from indexer import decode
from indexer.chain import parse_header
from indexer.decode import LockEvent, MalformedLog, ReleaseEvent, decode_log

BRIDGE = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
OTHER_BRIDGE = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
USER = "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc"
RECIPIENT = "0x976EA74026E726554dB657fA54763abd0C3a0aa9"
TX_HASH = "0x" + "ab" * 32
BLOCK_HASH = "0x" + "CD" * 32
BIG = 2**256 - 1


def _topic(abi_type: str, value: Any) -> str:
    return "0x" + encode([abi_type], [value]).hex()


def _log(topics: list[str], data: bytes, **fields: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "address": BRIDGE.lower(),
        "topics": topics,
        "data": "0x" + data.hex(),
        "blockNumber": "0x1b4",
        "blockHash": BLOCK_HASH,
        "transactionHash": TX_HASH,
        "transactionIndex": "0x0",
        "logIndex": "0x3",
        "removed": False,
    }
    raw.update(fields)
    return raw


def lock_log(
    amount: int = 25 * 10**18, nonce: int = 7, target_chain_id: int = 31338, **fields: Any
) -> dict[str, Any]:
    return _log(
        [TOKENS_LOCKED_TOPIC, _topic("address", USER), _topic("uint256", nonce)],
        encode(["uint256", "address", "uint256"], [amount, RECIPIENT, target_chain_id]),
        **fields,
    )


def release_log(amount: int = 25 * 10**18, nonce: int = 7, **fields: Any) -> dict[str, Any]:
    return _log(
        [
            TRANSFER_RELEASED_TOPIC,
            _topic("uint256", 31337),
            _topic("uint256", nonce),
            _topic("address", RECIPIENT),
        ],
        encode(["uint256", "address"], [amount, OTHER_BRIDGE]),
        **fields,
    )


def test_a_lock_decodes_to_the_values_that_were_locked() -> None:
    event = decode_log(31337, lock_log())

    assert event == LockEvent(
        chain_id=31337,
        bridge=BRIDGE.lower(),
        tx_hash=TX_HASH,
        log_index=3,
        block_number=436,
        block_hash=BLOCK_HASH.lower(),
        user=USER,
        amount=25 * 10**18,
        nonce=7,
        target_address=RECIPIENT,
        target_chain_id=31338,
    )
    assert event.transfer_id == f"31337:{BRIDGE.lower()}:7"


def test_a_release_decodes_and_names_the_transfer_it_releases() -> None:
    event = decode_log(31338, release_log())

    assert isinstance(event, ReleaseEvent)
    assert (event.source_chain_id, event.nonce, event.amount) == (31337, 7, 25 * 10**18)
    assert event.recipient == RECIPIENT
    assert event.source_bridge == OTHER_BRIDGE.lower()
    assert event.bridge == BRIDGE.lower()
    assert event.transfer_id == f"31337:{OTHER_BRIDGE.lower()}:7"


def test_addresses_are_lowercase_for_bridges_and_checksummed_for_people() -> None:
    event = decode_log(1, lock_log(address=BRIDGE.upper().replace("0X", "0x")))

    assert isinstance(event, LockEvent)
    assert event.bridge == BRIDGE.lower()
    assert event.user == to_checksum_address(USER)
    assert event.target_address == to_checksum_address(RECIPIENT)


def test_uint256_extremes_survive() -> None:
    event = decode_log(1, lock_log(amount=BIG, nonce=BIG, target_chain_id=BIG))

    assert isinstance(event, LockEvent)
    assert (event.amount, event.nonce, event.target_chain_id) == (BIG, BIG, BIG)


def lowercase(log: dict[str, Any]) -> dict[str, Any]:
    """The log as nodes answer it: every hex string lowercase (the decoder's fast path)."""
    return {
        key: [t.lower() for t in value]
        if key == "topics"
        else value.lower()
        if isinstance(value, str)
        else value
        for key, value in log.items()
    }


@pytest.mark.parametrize("make", [lock_log, release_log])
def test_mixed_case_and_lowercase_answers_decode_to_the_same_event(make: Any) -> None:
    mixed = make(address=BRIDGE, transactionHash="0x" + "aB" * 32, amount=BIG, nonce=2**64 + 1)

    assert decode_log(5, mixed) == decode_log(5, lowercase(mixed))
    # NOTE: the point is comparing the two paths: the lowercase answer must take the fast one.
    fast = decode._fast_lock if make is lock_log else decode._fast_release
    assert fast(5, lowercase(mixed), lowercase(mixed)["topics"]) is not None
    assert fast(5, mixed, mixed["topics"]) is None


def test_other_events_of_the_bridge_are_not_transfer_events() -> None:
    assert decode_log(1, _log([SIGNERS_UPDATED_TOPIC], encode(["uint256"], [1]))) is None


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (lambda log: log.update(topics=log["topics"][:2]), "2 topics, expected 3"),
        (lambda log: log.update(data=log["data"][:-64]), "not 3 ABI words of 0x hex"),
        (lambda log: log.update(data=log["data"] + "00"), "not 3 ABI words of 0x hex"),
        (lambda log: log.update(data="0x" + "f" * 64 * 3), "high bytes set"),
        (lambda log: log.update(blockHash="0x1234"), "blockHash is not 32 bytes"),
        (lambda log: log.update(transactionHash="0x" + "zz" * 32), "transactionHash is not 32 bytes"),
        (lambda log: log.update(logIndex=None), "logIndex is not a hex quantity"),
        (lambda log: log.update(blockNumber="0x1_0"), "blockNumber is not a hex quantity"),
        (lambda log: log.pop("address"), "address is not 20 bytes"),
        (lambda log: log.update(topics=[]), "no topics"),
    ],
)
@pytest.mark.parametrize("case", ["as given", "lowercase"])
def test_a_lock_of_the_wrong_shape_is_malformed(broken: Any, message: str, case: str) -> None:
    log = lock_log() if case == "as given" else lowercase(lock_log())
    broken(log)

    with pytest.raises(MalformedLog, match=message):
        decode_log(1, log)


def test_a_release_with_a_missing_topic_is_malformed() -> None:
    log = release_log()
    log["topics"] = log["topics"][:3]

    with pytest.raises(MalformedLog, match="3 topics, expected 4"):
        decode_log(1, log)


# Logs bloom (indexer.bloom): checking empty eth_getLogs answers.


def _bloom_with(*items: bytes) -> str:
    from eth_utils.crypto import keccak

    bloom = bytearray(256)
    for item in items:
        digest = keccak(item)
        for i in (0, 2, 4):
            bit = ((digest[i] << 8) | digest[i + 1]) & 2047
            bloom[255 - bit // 8] |= 1 << (bit % 8)
    return "0x" + bloom.hex()


BRIDGE = "0x" + "ab" * 20
OTHER = "0x" + "cd" * 20


def test_a_bloom_holding_the_bridge_and_its_topic_may_contain_the_event() -> None:
    from indexer.bloom import may_contain

    bloom = _bloom_with(bytes.fromhex(BRIDGE[2:]), bytes.fromhex(TOKENS_LOCKED_TOPIC[2:]))

    assert may_contain(bloom, [BRIDGE], [TOKENS_LOCKED_TOPIC])
    assert not may_contain(bloom, [OTHER], [TOKENS_LOCKED_TOPIC])
    assert not may_contain("0x" + "00" * 256, [BRIDGE], [TOKENS_LOCKED_TOPIC])


def test_a_bloom_with_the_address_but_not_the_topic_rules_the_event_out() -> None:
    from indexer.bloom import may_contain

    bloom = _bloom_with(bytes.fromhex(BRIDGE[2:]))

    assert not may_contain(bloom, [BRIDGE], [TOKENS_LOCKED_TOPIC])


@pytest.mark.parametrize("bloom", [None, "0x12", "0x" + "zz" * 256])
def test_a_missing_or_malformed_bloom_rules_nothing_out(bloom: str | None) -> None:
    from indexer.bloom import may_contain

    assert may_contain(bloom, [BRIDGE], [TOKENS_LOCKED_TOPIC])


# Adaptive eth_getLogs ranges (indexer.backfill) and error classification.


@pytest.mark.parametrize(
    ("message", "range_limit", "rate_limit"),
    [
        ("query returned more than 10000 results", True, False),
        ("block range is too large", True, False),
        ("Log response size exceeded", True, False),
        ("rate limit exceeded, slow down", False, True),
        ("Too Many Requests", False, True),
        ("execution reverted", False, False),
    ],
)
def test_errors_that_ask_for_a_smaller_range_or_a_slower_pace(
    message: str, range_limit: bool, rate_limit: bool
) -> None:
    from ferry.rpc import RpcError
    from indexer.backfill import is_range_limit
    from indexer.endpoints import is_rate_limit

    error = RpcError("http://node:8545", "eth_getLogs", -32005, message)

    assert (is_range_limit(error), is_rate_limit(error)) == (range_limit, rate_limit)


def test_http_429_is_a_rate_limit_not_a_range_limit() -> None:
    from ferry.rpc import RpcUnavailable
    from indexer.backfill import is_range_limit
    from indexer.endpoints import is_rate_limit

    error = RpcUnavailable("http://node:8545", "rate limited (HTTP 429)", rate_limited=True)

    assert is_rate_limit(error)
    assert not is_range_limit(error)


def test_ranges_shrink_on_big_answers_and_grow_back_on_small_ones() -> None:
    from indexer.backfill import FIRST_RANGE, TARGET_LOGS, RangeSizer

    sizer = RangeSizer(limit=2_000)
    assert sizer.size == FIRST_RANGE
    for _ in range(12):
        sizer.observe(sizer.size, 0)
    assert sizer.size == 2_000
    sizer.observe(2_000, 10 * TARGET_LOGS)
    assert sizer.size == 200  # NOTE: to about TARGET_LOGS at the density just seen
    sizer.shrink(200)
    assert sizer.size == 100
    sizer.observe(40, TARGET_LOGS)  # a range shorter than the size says nothing about growing
    assert sizer.size == 100
    for _ in range(20):
        sizer.shrink(sizer.size)
    assert sizer.size == 1


def test_the_backfill_budget_counts_fetches_and_commits() -> None:
    from indexer.backfill import BACKFILL_CONCURRENCY, LOGS_IN_FLIGHT, RangeSizer

    sizer = RangeSizer(limit=2_000)
    assert sizer.may_start(0, 0)  # a lone range always may: nothing else would move
    assert not sizer.may_start(1, 0)  # one range until the density is known
    sizer.observe(sizer.size, 0)
    assert not sizer.may_start(1, 0)  # an empty range does not tell it
    sizer.observe(sizer.size, LOGS_IN_FLIGHT // 4 * sizer.size)  # a quarter of the budget per block
    sizer.size = 1
    assert sizer.expected() == LOGS_IN_FLIGHT // 4
    fits = LOGS_IN_FLIGHT - sizer.expected()
    assert sizer.may_start(BACKFILL_CONCURRENCY - 1, fits)
    assert not sizer.may_start(BACKFILL_CONCURRENCY - 1, fits + 1)  # past the budget: wait for a commit
    assert not sizer.may_start(BACKFILL_CONCURRENCY, 0)
    sizer.observe(1, 0)  # an empty range after dense ones: the density is forgotten by halves only
    assert sizer.logs_per_block == LOGS_IN_FLIGHT // 8


@pytest.mark.parametrize("seconds", [2**64 - 1, 10**12])
def test_a_header_whose_timestamp_is_no_date_is_garbage(seconds: int) -> None:
    """Python's dates end at year 9999: past it (OverflowError or ValueError) is the node's garbage."""
    hashes = {"hash": "0x" + "11" * 32, "parentHash": "0x" + "22" * 32}
    header = {"number": "0x7", **hashes, "timestamp": hex(seconds)}
    with pytest.raises(RpcGarbage, match="block timestamp"):
        parse_header(header, 7)
    assert parse_header({**header, "timestamp": hex(1_700_000_000)}, 7).timestamp.year == 2023
