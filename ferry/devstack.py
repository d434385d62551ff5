"""A complete local bridge network for ``ferry dev`` and the tests.

``start_dev_network`` starts one anvil per chain id, deploys a test token and a
FerryBridge on each (``threshold``-of-``signers`` dev keys), funds every bridge
with liquidity and a demo user with tokens, and writes a chains file with routes
both ways. ``ProcessGroup`` runs the Ferry processes (``ferry indexer`` …) as real
subprocesses and stops every one it started.

Keys here are anvil's public dev keys: never use them anywhere that matters.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import yaml
from web3 import HTTPProvider, Web3

from ferry.deploy import deploy_bridge, deploy_test_token, mint
from ferry.devchain import DEV_ACCOUNTS, AnvilProcess, free_port
from ferry.settings import ChainsConfig, Settings, load_chains

TOKEN = "FTT"  # noqa: S105 -- a token symbol, not a password
ONE = 10**18
BRIDGE_LIQUIDITY = 1_000_000 * ONE
USER_FUNDS = 10_000 * ONE

# Roles among anvil's dev accounts.
DEPLOYER = DEV_ACCOUNTS[0]
SUBMITTER = DEV_ACCOUNTS[1]
SIGNERS = DEV_ACCOUNTS[2:5]
USER = DEV_ACCOUNTS[5]
RECIPIENT = DEV_ACCOUNTS[6]


@dataclass
class DevChain:
    chain_id: int
    name: str
    anvil: AnvilProcess
    token: str
    bridge: str
    deploy_block: int

    @property
    def url(self) -> str:
        return self.anvil.url

    @property
    def w3(self) -> Web3:
        return Web3(HTTPProvider(self.anvil.url, request_kwargs={"timeout": 30}))


@dataclass
class DevNetwork:
    chains: list[DevChain]
    chains_file: Path
    confirmations: int
    signer_keys: list[str] = field(default_factory=lambda: [key for _, key in SIGNERS[:2]])
    submitter_key: str = SUBMITTER[1]
    user_key: str = USER[1]
    user_address: str = USER[0]
    recipient_address: str = RECIPIENT[0]

    @property
    def config(self) -> ChainsConfig:
        return load_chains(self.chains_file)

    def chain(self, chain_id: int) -> DevChain:
        return next(c for c in self.chains if c.chain_id == chain_id)

    def env(self) -> dict[str, str]:
        """Environment variables that point a Ferry process at this network."""
        return {
            "FERRY_CHAINS_FILE": str(self.chains_file),
            "FERRY_SIGNER_KEYS": ",".join(self.signer_keys),
            "FERRY_SUBMITTER_KEY": self.submitter_key,
        }

    def settings(self, database_url: str, redis_url: str, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "redis_url": redis_url,
            "chains_file": self.chains_file,
            "signer_keys": ",".join(self.signer_keys),
            "submitter_key": self.submitter_key,
        }
        values.update(overrides)
        return Settings(**values)

    def stop(self) -> None:
        for chain in self.chains:
            chain.anvil.stop()


def start_dev_network(
    workdir: Path,
    chain_ids: Sequence[int] = (31337, 31338),
    *,
    ports: Sequence[int] | None = None,
    confirmations: int = 2,
    block_time: float | None = None,
    threshold: int = 2,
) -> DevNetwork:
    """Start, deploy and fund the chains; write ``workdir/chains.yaml``. Stops what it started on error."""
    workdir.mkdir(parents=True, exist_ok=True)
    started: list[AnvilProcess] = []
    try:
        chains = []
        for index, chain_id in enumerate(chain_ids):
            port = ports[index] if ports else free_port()
            anvil = AnvilProcess.start(chain_id, port, block_time=block_time)
            started.append(anvil)
            chains.append(_deploy_on(anvil, f"local-{chain_id}", threshold))
        network = DevNetwork(chains, workdir / "chains.yaml", confirmations)
        _write_chains_file(network)
        return network
    except BaseException:
        for anvil in started:
            anvil.stop()
        raise


def _deploy_on(anvil: AnvilProcess, name: str, threshold: int) -> DevChain:
    w3 = Web3(HTTPProvider(anvil.url, request_kwargs={"timeout": 30}))
    deployer_key = DEPLOYER[1]
    token = deploy_test_token(w3, deployer_key, "Ferry Test Token", TOKEN)
    deployed = deploy_bridge(w3, deployer_key, token, DEPLOYER[0], [a for a, _ in SIGNERS], threshold)
    mint(w3, deployer_key, token, deployed.bridge, BRIDGE_LIQUIDITY)
    mint(w3, deployer_key, token, USER[0], USER_FUNDS)
    return DevChain(anvil.chain_id, name, anvil, token, deployed.bridge, deployed.deploy_block)


def _write_chains_file(network: DevNetwork) -> None:
    document = {
        "chains": [
            {
                "id": chain.chain_id,
                "name": chain.name,
                "rpc_urls": [chain.url],
                "confirmations": network.confirmations,
                "poll_interval": 0.2,
                "bridges": {
                    TOKEN: {"bridge": chain.bridge, "token": chain.token, "start_block": chain.deploy_block}
                },
            }
            for chain in network.chains
        ],
        "routes": [
            {"token": TOKEN, "source": a.chain_id, "target": b.chain_id}
            for a in network.chains
            for b in network.chains
            if a is not b
        ],
    }
    network.chains_file.write_text(yaml.safe_dump(document, sort_keys=False))


class StackNotReady(RuntimeError):
    """The processes did not become ready (one exited, or the wait timed out)."""


class ProcessGroup:
    """Ferry processes as subprocesses (``python -m ferry <command>``), stopped together."""

    def __init__(self, env: Mapping[str, str], logdir: Path | None = None) -> None:
        self._env = {**os.environ, **env}
        self._logdir = logdir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def start(
        self, name: str, command: str, extra_env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        env = {**self._env, **(extra_env or {})}
        output: IO[bytes] | None = None
        if self._logdir is not None:
            self._logdir.mkdir(parents=True, exist_ok=True)
            output = (self._logdir / f"{name}.log").open("ab")
            self._logs.append(output)
        process = subprocess.Popen(  # noqa: S603 -- our own interpreter and module
            [sys.executable, "-m", "ferry", command],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
        )
        self.processes[name] = process
        return process

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        process.wait(10)

    def failed(self) -> list[str]:
        return [name for name, p in self.processes.items() if p.poll() is not None]

    def wait_ready(self, url: str, timeout: float = 60.0) -> None:
        """Return once ``url`` answers 200; StackNotReady when a process exits or time runs out."""
        where = f"; logs in {self._logdir}" if self._logdir else ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.failed():
                raise StackNotReady(f"{self.failed()} exited during start-up{where}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            time.sleep(0.25)
        raise StackNotReady(f"{url} was not ready within {timeout:.0f} s{where}")

    def stop(self, timeout: float = 10.0) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self._logs:
            log.close()
