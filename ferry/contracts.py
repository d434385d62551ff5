"""Compiled contract artifacts and event topics, loaded from the committed build.

`contracts/compile.mjs` writes one JSON file per contract to `contracts/build/`;
this module is the only place Python reads them. Artifacts are cached: they never
change while a process runs. The event topics are derived from the canonical
event signatures, so they always match what the contracts emit.

`decode_contract_error` turns revert data into the custom error's name and
arguments (e.g. `AlreadyProcessed`), for any error declared in any artifact, so
callers can branch on what the contract said rather than on message text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_typing import ABIError
from eth_utils.abi import abi_to_signature, get_abi_input_types
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

BUILD_DIR = Path(__file__).resolve().parent.parent / "contracts" / "build"

TOKENS_LOCKED_SIGNATURE = "TokensLocked(address,uint256,uint256,address,uint256)"
TRANSFER_RELEASED_SIGNATURE = "TransferReleased(uint256,uint256,address,uint256,address)"
SIGNERS_UPDATED_SIGNATURE = "SignersUpdated(address[],uint256)"


def event_topic(signature: str) -> str:
    """Return topic0 of an event: 0x-prefixed lowercase hex keccak of its signature."""
    return "0x" + keccak(text=signature).hex()


TOKENS_LOCKED_TOPIC = event_topic(TOKENS_LOCKED_SIGNATURE)
TRANSFER_RELEASED_TOPIC = event_topic(TRANSFER_RELEASED_SIGNATURE)
SIGNERS_UPDATED_TOPIC = event_topic(SIGNERS_UPDATED_SIGNATURE)


@dataclass(frozen=True)
class Artifact:
    """A compiled contract: its name, ABI and creation bytecode (0x-prefixed hex)."""

    name: str
    abi: tuple[dict[str, Any], ...]
    bytecode: str


@cache
def load_artifact(name: str) -> Artifact:
    """Load `contracts/build/<name>.json`; raise a clear error when it is missing."""
    path = BUILD_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in BUILD_DIR.glob("*.json"))
        raise FileNotFoundError(
            f"no compiled contract named {name!r} in {BUILD_DIR} (known: {', '.join(known) or 'none'}); "
            "run `node contracts/compile.mjs` to build the contracts"
        )
    raw = json.loads(path.read_text(encoding="utf-8"))
    return Artifact(name=raw["contractName"], abi=tuple(raw["abi"]), bytecode=raw["bytecode"])


@dataclass(frozen=True)
class ContractError:
    """A decoded custom error: `name` and its arguments in ABI order."""

    name: str
    args: tuple[Any, ...]

    def __str__(self) -> str:
        return f"{self.name}({', '.join(str(arg) for arg in self.args)})"


@cache
def _error_abis() -> dict[bytes, dict[str, Any]]:
    """Every custom error declared in the committed artifacts, by 4-byte selector."""
    errors: dict[bytes, dict[str, Any]] = {}
    for path in sorted(BUILD_DIR.glob("*.json")):
        for entry in load_artifact(path.stem).abi:
            if entry["type"] == "error":
                errors[keccak(text=abi_to_signature(cast(ABIError, entry)))[:4]] = entry
    return errors


def error_selector(signature: str) -> str:
    """The 0x-prefixed 4-byte selector of an error signature such as `ZeroAmount()`."""
    return "0x" + keccak(text=signature)[:4].hex()


def decode_contract_error(data: bytes | str | None) -> ContractError | None:
    """Decode revert data into a known custom error; None when it is not one."""
    if data is None:
        return None
    raw = bytes.fromhex(data.removeprefix("0x")) if isinstance(data, str) else data
    entry = _error_abis().get(raw[:4]) if len(raw) >= 4 else None
    if entry is None:
        return None
    types = get_abi_input_types(cast(ABIError, entry))
    try:
        values = abi_decode(types, raw[4:])
    except DecodingError:
        return None
    # NOTE: eth_abi returns lowercase addresses; checksum them like web3 does everywhere else.
    args = tuple(
        to_checksum_address(value) if kind == "address" else value
        for kind, value in zip(types, values, strict=True)
    )
    return ContractError(name=entry["name"], args=args)
