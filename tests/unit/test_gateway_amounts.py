"""Amounts shown exactly: plain digits, and with the token's decimals applied without rounding."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.types import format_units, uint_text

UINT256_MAX = 2**256 - 1


@pytest.mark.parametrize(
    ("amount", "decimals", "shown"),
    [
        (Decimal(UINT256_MAX), 18, f"{UINT256_MAX // 10**18}.{UINT256_MAX % 10**18:018d}"),
        (Decimal(UINT256_MAX), 0, str(UINT256_MAX)),
        (Decimal(1_500_000), 6, "1.5"),
        (Decimal(10**18), 18, "1"),
        (Decimal(1), 18, "0.000000000000000001"),
        (Decimal(0), 18, "0"),
        (Decimal("1E+30"), 6, "1" + "0" * 24),  # NOTE: asyncpg may give exponent notation
    ],
)
def test_format_units_is_exact(amount: Decimal, decimals: int, shown: str) -> None:
    assert format_units(amount, decimals) == shown


def test_uint_text_never_uses_exponents() -> None:
    assert uint_text(Decimal("1E+30")) == "1" + "0" * 30
    assert uint_text(Decimal(UINT256_MAX)) == str(UINT256_MAX)
