"""Custom scalars, and the decision on integers wider than GraphQL's ``Int``.

GraphQL ``Int`` is 32-bit; chain ids and block numbers are not. They are
``BigInt``: a signed 64-bit integer (the database's bigint), sent as a plain
JSON number. JSON numbers are exact up to 2^53 - 1 in JavaScript, which covers
every block number in use and every chain id a wallet accepts (wallets cap chain
ids there too); clients that need more can parse numbers as big integers.
Inputs take a number or a decimal string.

uint256 values (amounts, on-chain nonces) exceed even that and are ``String``
fields holding exact decimal integers, never floats.
"""

from __future__ import annotations

import re
from typing import NewType

import strawberry
from strawberry.types.scalar import ScalarDefinition

from gateway.errors import UserError

BigInt = NewType("BigInt", int)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_DECIMAL = re.compile(r"-?[0-9]{1,19}")


def _serialize_big_int(value: int) -> int:
    return int(value)


def parse_big_int(value: object) -> BigInt:
    """A 64-bit integer from a JSON number or decimal string; UserError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DECIMAL.fullmatch(value):
        number = int(value)
    else:
        raise UserError("BigInt takes an integer, as a number or a decimal string")
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise UserError("BigInt takes a signed 64-bit integer")
    return BigInt(number)


SCALARS: dict[object, ScalarDefinition] = {
    BigInt: strawberry.scalar(
        name="BigInt",
        description=(
            "A signed 64-bit integer (chain ids, block numbers), sent as a JSON number; "
            "inputs also take a decimal string."
        ),
        serialize=_serialize_big_int,
        parse_value=parse_big_int,
    ),
}
