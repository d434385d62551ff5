"""When a release left out of a block counts as outbid (``relayer.fees.outbid_in``)."""

from __future__ import annotations

import pytest

from relayer.fees import Competition, Fees, competition_in, outbid_in

GWEI = 10**9
OURS = Fees(max_fee_per_gas=10 * GWEI, max_priority_fee_per_gas=GWEI)
GAS = 150_000


@pytest.mark.parametrize(
    ("competition", "outbid"),
    [
        (Competition(7, tip=GWEI, fee_cap=50 * GWEI, gas_left=GAS - 1), True),  # a higher fee cap (anvil)
        (Competition(7, tip=2 * GWEI, fee_cap=10 * GWEI, gas_left=0), True),  # a higher tip (geth)
        (Competition(7, tip=GWEI, fee_cap=50 * GWEI, gas_left=GAS), False),  # room was left: not the price
        (Competition(7, tip=GWEI, fee_cap=10 * GWEI, gas_left=0), False),  # full, but nobody offered more
        (Competition(7, tip=0, fee_cap=0, gas_left=0), False),  # full of our own releases
    ],
)
def test_a_release_is_outbid_only_by_a_full_block_of_better_offers(
    competition: Competition, outbid: bool
) -> None:
    assert outbid_in(OURS, GAS, competition) is outbid


def test_the_competition_leaves_out_our_own_transactions_and_keeps_the_gas_left() -> None:
    own, other = "0x" + "aa" * 20, "0x" + "bb" * 20
    block = {
        "number": "0x7",
        "gasLimit": hex(30_000_000),
        "gasUsed": hex(29_990_000),
        "transactions": [
            {"from": own, "maxFeePerGas": hex(900 * GWEI), "maxPriorityFeePerGas": hex(90 * GWEI)},
            {"from": other, "maxFeePerGas": hex(50 * GWEI), "maxPriorityFeePerGas": hex(GWEI)},
        ],
    }
    expected = Competition(7, tip=GWEI, fee_cap=50 * GWEI, gas_left=10_000, own=1)
    assert competition_in(block, own.upper().replace("0X", "0x")) == expected


def test_a_legacy_competitor_bids_what_it_pays_above_the_base_fee_and_our_transactions_are_counted() -> None:
    own, other = "0x" + "aa" * 20, "0x" + "bb" * 20
    block = {
        "number": "0x8",
        "baseFeePerGas": hex(40 * GWEI),
        "gasLimit": hex(30_000_000),
        "gasUsed": hex(30_000_000),
        "transactions": [
            {"from": own, "maxFeePerGas": hex(900 * GWEI), "maxPriorityFeePerGas": hex(90 * GWEI)},
            {"from": other, "gasPrice": hex(41 * GWEI)},  # NOTE: legacy: 1 gwei above the base fee
        ],
    }
    competition = competition_in(block, own)
    assert competition == Competition(8, tip=GWEI, fee_cap=41 * GWEI, gas_left=0, own=1)
    # Our tip (1 gwei) is not below the legacy sender's effective one: not outbid by the tip.
    assert not outbid_in(Fees(50 * GWEI, GWEI), GAS, competition)
