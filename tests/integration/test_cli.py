"""The ``ferry`` command as an operator meets it: clear refusals, working deploys."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ferry.devchain import DEV_ACCOUNTS
from ferry.devstack import DevNetwork


def ferry(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferry", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_bad_chains_file_stops_the_process_with_the_field_named(tmp_path: Path) -> None:
    bad = tmp_path / "chains.yaml"
    bad.write_text("chains:\n  - id: 1\n    name: one\n    rpc_urls: []\n    bridges: {}\n")
    for command in ("indexer", "relayer", "gateway"):
        result = ferry(command, env={"FERRY_CHAINS_FILE": str(bad)})
        assert result.returncode == 2, result.stderr
        assert f"ferry {command}: invalid configuration in {bad}" in result.stderr
        assert "chains.0.rpc_urls" in result.stderr
        assert "Traceback" not in result.stderr


def test_secret_in_bad_environment_is_not_echoed() -> None:
    result = ferry(
        "migrate", env={"FERRY_METRICS_PORT": "not-a-port", "FERRY_SUBMITTER_KEY": "0xdeadbeefcafe"}
    )
    assert result.returncode == 2
    assert "metrics_port" in result.stderr
    assert "deadbeefcafe" not in result.stderr


def test_deploy_prints_a_chains_file_entry(dev_chains: DevNetwork) -> None:
    signers = ",".join(address for address, _ in DEV_ACCOUNTS[2:4])
    result = ferry(
        "deploy", "--rpc-url", dev_chains.chains[0].url, "--signers", signers, "--threshold", "2",
        env={"FERRY_DEPLOYER_KEY": DEV_ACCOUNTS[0][1]},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert 'FTT: {bridge: "0x' in result.stdout
    assert DEV_ACCOUNTS[0][1] not in result.stdout + result.stderr


def test_deploy_without_key_says_which_variable(dev_chains: DevNetwork) -> None:
    result = ferry("deploy", "--rpc-url", dev_chains.chains[0].url, "--signers", DEV_ACCOUNTS[2][0])
    assert result.returncode == 2
    assert "set FERRY_DEPLOYER_KEY" in result.stderr
