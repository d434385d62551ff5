"""The committed contract build matches the Solidity sources, and the ABI matches Python."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from eth_utils.abi import abi_to_signature

from ferry.contracts import (
    TOKENS_LOCKED_TOPIC,
    TRANSFER_RELEASED_TOPIC,
    decode_contract_error,
    error_selector,
    event_topic,
    load_artifact,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_committed_build_matches_sources() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("`node` is not installed, so contracts/compile.mjs cannot run")
    result = subprocess.run(
        [node, "contracts/compile.mjs", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, (
        "contracts/build is stale; run `node contracts/compile.mjs` and commit the result:\n" + result.stderr
    )


def test_event_topics_match_the_abi() -> None:
    events = {entry["name"]: entry for entry in load_artifact("FerryBridge").abi if entry["type"] == "event"}
    assert event_topic(abi_to_signature(events["TokensLocked"])) == TOKENS_LOCKED_TOPIC  # type: ignore[arg-type]
    assert event_topic(abi_to_signature(events["TransferReleased"])) == TRANSFER_RELEASED_TOPIC  # type: ignore[arg-type]
    assert TOKENS_LOCKED_TOPIC == "0xc65d896fc2ca9fd58f5384f9b647c3ceb103fd3029e659645afa90f0a1520ef9"


def test_tokens_locked_keeps_the_original_event_shape() -> None:
    event = next(e for e in load_artifact("FerryBridge").abi if e.get("name") == "TokensLocked")
    shape = [(i["name"], i["type"], i["indexed"]) for i in event["inputs"]]
    assert shape == [
        ("user", "address", True),
        ("amount", "uint256", False),
        ("nonce", "uint256", True),
        ("targetAddress", "address", False),
        ("targetChainId", "uint256", False),
    ]


def test_custom_errors_decode_by_name() -> None:
    data = (
        error_selector("NotEnoughSignatures(uint256,uint256)")
        + (1).to_bytes(32).hex()
        + (2).to_bytes(32).hex()
    )
    decoded = decode_contract_error(data)
    assert decoded is not None
    assert (decoded.name, decoded.args) == ("NotEnoughSignatures", (1, 2))
    assert decode_contract_error("0xdeadbeef") is None
    assert decode_contract_error(None) is None


def test_missing_artifact_says_how_to_build() -> None:
    with pytest.raises(FileNotFoundError, match=r"node contracts/compile\.mjs"):
        load_artifact("NoSuchContract")
