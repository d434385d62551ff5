"""Signing keys from encrypted keystores, and signer rotation while releases flow.

The relayer reads its signer keys from Web3 Secret Storage files with the
passphrase from the environment, and ``ferry keys rotate`` (``relayer.rotation``)
replaces a signer on every bridge while transfers keep arriving: every lock must
still be released exactly once on chain, and the secrets never reach a log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from eth_account import Account

from ferry.deploy import bridge_contract, send_transaction
from ferry.devchain import DEV_ACCOUNTS
from ferry.devstack import DEPLOYER, SIGNERS, DevNetwork
from ferry.settings import ConfigError
from relayer.context import CONTEXT_KEY, open_context
from relayer.jobs import relay_transfer
from relayer.rotation import rotate_signer
from tests.integration.test_relayer import (
    AMOUNT,
    balance,
    chains,
    drive,
    locked_transfer,
    releases_on_chain,
    submitter_for,
)
from tests.integration.test_relayer_limits import limited_chains_file

PASSPHRASE = "correct horse battery staple"
NEW_SIGNER = DEV_ACCOUNTS[7]


def keystore(directory: Path, key: str) -> Path:
    """A Web3 Secret Storage file for ``key`` (cheap KDF: this is a test)."""
    document = Account.encrypt(key, PASSPHRASE, kdf="pbkdf2", iterations=1_000)
    path = directory / f"{Account.from_key(key).address}.json"
    path.write_text(json.dumps(document))
    return path


def signer_sets(network: DevNetwork) -> dict[int, list[str]]:
    return {
        chain.chain_id: list(bridge_contract(chain.w3, chain.bridge).functions.getSigners().call())
        for chain in network.chains
    }


def restore_signers(network: DevNetwork, original: dict[int, list[str]]) -> None:
    for chain in network.chains:
        call = bridge_contract(chain.w3, chain.bridge).functions.setSigners(original[chain.chain_id], 2)
        send_transaction(chain.w3, DEPLOYER[1], call, "restoring the dev signers")


async def test_relayer_reads_keystores_and_refuses_a_wrong_passphrase(
    dev_chains: DevNetwork, clean_db: str, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = ",".join(str(keystore(tmp_path, key)) for _, key in SIGNERS[:2])
    submitter = keystore(tmp_path, dev_chains.submitter_key)
    settings = dev_chains.settings(
        clean_db, redis_url, signer_keys=None, submitter_key=None, metrics_port=0,
        signer_keystores=paths, submitter_keystore=submitter, keystore_password=PASSPHRASE,
    )  # fmt: skip
    caplog.set_level(logging.DEBUG)

    relayer = await open_context(settings)
    try:
        assert sorted(relayer.signers) == sorted(address for address, _ in SIGNERS[:2])
        assert relayer.submitter.address == Account.from_key(dev_chains.submitter_key).address
    finally:
        await relayer.close()
    wrong = dev_chains.settings(
        clean_db, redis_url, signer_keys=None, submitter_key=None, metrics_port=0,
        signer_keystores=paths, submitter_keystore=submitter, keystore_password="not it",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="cannot be decrypted: check FERRY_KEYSTORE_PASSWORD") as refused:
        await open_context(wrong)
    assert "not it" not in str(refused.value)
    everything = caplog.text + str(refused.value)
    assert PASSPHRASE not in everything
    assert all(key.removeprefix("0x") not in everything for _, key in SIGNERS[:2])


async def test_signer_rotation_during_traffic_releases_every_lock_exactly_once(
    dev_chains: DevNetwork, clean_db: str, redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    paths = ",".join(str(keystore(tmp_path, key)) for key in [SIGNERS[0][1], SIGNERS[1][1], NEW_SIGNER[1]])
    settings = dev_chains.settings(
        clean_db, redis_url, queue_name=queue_name, metrics_port=0, batch_linger=0, signer_keys=None,
        chains_file=limited_chains_file(dev_chains, tmp_path, sender_hourly_limit=1_000),
        signer_keystores=paths, keystore_password=PASSPHRASE,
    )  # fmt: skip
    relayer = await open_context(settings)
    original = signer_sets(dev_chains)
    _, target = chains(dev_chains)
    messages: list[str] = []
    transfers = []
    try:
        submitter = submitter_for(relayer)
        submitter.batcher.signer_set_ttl = 0.2  # NOTE: production re-reads every 15 s
        await submitter.resume()
        rotation = asyncio.create_task(
            asyncio.to_thread(
                rotate_signer, dev_chains.config, DEPLOYER[1], SIGNERS[0][0], NEW_SIGNER[0],
                settle=1.0, say=messages.append,
            )
        )  # fmt: skip
        while not rotation.done() or len(transfers) < 16:
            transfers.append(await locked_transfer(dev_chains, relayer.pool))
            assert await relay_transfer({CONTEXT_KEY: relayer}, transfers[-1][0]) == "handed_over"
            await submitter.tick()
        await rotation
        rotated = signer_sets(dev_chains)
        found = await drive(submitter, [tid for tid, _, _ in transfers], ("RELEASED", "FINALIZED"))
    finally:
        restore_signers(dev_chains, original)
        await relayer.close()

    assert set(found.values()) <= {"RELEASED", "FINALIZED"}
    assert any("added signer" in m for m in messages)
    assert any("removed signer" in m for m in messages)
    for chain_id, signers in rotated.items():
        assert NEW_SIGNER[0] in signers, chain_id
        assert SIGNERS[0][0] not in signers, chain_id
    for _, recipient, locked in transfers:
        assert len(releases_on_chain(dev_chains, locked)) == 1
        assert balance(target, recipient) == AMOUNT


def test_keys_rotate_without_owner_key_says_which_variable(dev_chains: DevNetwork) -> None:
    env = {**os.environ, **dev_chains.env()}
    env.pop("FERRY_OWNER_KEY", None)
    result = subprocess.run(
        [sys.executable, "-m", "ferry", "keys", "rotate", "--old", SIGNERS[0][0], "--new", NEW_SIGNER[0]],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "FERRY_OWNER_KEY" in result.stderr


def test_keys_rotate_on_a_websocket_only_target_says_it_needs_http(dev_chains: DevNetwork) -> None:
    chains = dev_chains.config.model_copy(
        update={
            "chains": [
                chain.model_copy(update={"rpc_urls": [chain.rpc_urls[0].replace("http://", "ws://")]})
                for chain in dev_chains.config.chains
            ]
        }
    )
    with pytest.raises(ConfigError, match="needs an http"):
        rotate_signer(chains, DEPLOYER[1], SIGNERS[0][0], NEW_SIGNER[0], settle=0)
