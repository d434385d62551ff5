"""The compose deployment's chain set-up job, on two real anvil chains.

``scripts/compose_chains.py`` deploys a token and a bridge per chain and writes the
chains file every process of the compose deployment reads. The file must load
with Ferry's own validation, name bridges that exist on chain, route both ways,
and a second run (a restarted deployment) must deploy nothing new.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from web3 import HTTPProvider, Web3

from ferry.devchain import AnvilProcess, free_port
from ferry.settings import load_chains
from scripts import compose_chains


@pytest.fixture
def two_chains() -> Iterator[list[AnvilProcess]]:
    chains = [AnvilProcess.start(31337, free_port()), AnvilProcess.start(31338, free_port())]
    yield chains
    for chain in chains:
        chain.stop()


def test_compose_chains_job_writes_a_valid_chains_file_once(
    two_chains: list[AnvilProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config" / "chains.yaml"
    monkeypatch.setenv("FERRY_CHAINS_FILE", str(path))
    monkeypatch.setenv("FERRY_COMPOSE_CHAINS", ",".join(f"{c.chain_id}={c.url}" for c in two_chains))
    compose_chains.main()
    config = load_chains(path)
    assert {c.id for c in config.chains} == {31337, 31338}
    assert {(r.source, r.target) for r in config.routes} == {(31337, 31338), (31338, 31337)}
    for chain in config.chains:
        w3 = Web3(HTTPProvider(chain.rpc_urls[0]))
        assert w3.eth.get_code(chain.bridges["FTT"].bridge)
    first = path.read_text()
    blocks = [Web3(HTTPProvider(c.url)).eth.block_number for c in two_chains]
    compose_chains.main()
    assert path.read_text() == first
    assert [Web3(HTTPProvider(c.url)).eth.block_number for c in two_chains] == blocks
