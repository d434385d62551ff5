"""Deploy a test token and a bridge on each local chain of the compose deployment.

Writes the chains file the Ferry processes read (``FERRY_CHAINS_FILE``), with
routes both ways. Chains come from ``FERRY_COMPOSE_CHAINS``:
``<chain id>=<rpc url>,<chain id>=<rpc url>``. Keys are anvil's public dev keys:
this is for a local demo deployment only; with real chains, mount your own chains
file instead and skip this job.

Idempotent: when the chains file exists and its bridges have code, nothing is
deployed again.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import yaml
from web3 import HTTPProvider, Web3

from ferry.deploy import deploy_bridge, deploy_test_token, mint
from ferry.devstack import BRIDGE_LIQUIDITY, DEPLOYER, SIGNERS, TOKEN, USER, USER_FUNDS


def _wait_for(w3: Web3, url: str) -> None:
    deadline = time.monotonic() + 120
    while not w3.is_connected():
        if time.monotonic() > deadline:
            raise SystemExit(f"no chain answers at {url}")
        time.sleep(1)


def _deployed(path: Path) -> bool:
    if not path.exists():
        return False
    for chain in yaml.safe_load(path.read_text())["chains"]:
        w3 = Web3(HTTPProvider(chain["rpc_urls"][0]))
        _wait_for(w3, chain["rpc_urls"][0])
        if not w3.eth.get_code(chain["bridges"][TOKEN]["bridge"]):
            return False
    return True


def _deploy(chain_id: int, url: str) -> dict[str, object]:
    w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": 30}))
    _wait_for(w3, url)
    key = DEPLOYER[1]
    token = deploy_test_token(w3, key, "Ferry Test Token", TOKEN)
    bridge = deploy_bridge(w3, key, token, DEPLOYER[0], [a for a, _ in SIGNERS], 2)
    mint(w3, key, token, bridge.bridge, BRIDGE_LIQUIDITY)
    mint(w3, key, token, USER[0], USER_FUNDS)
    return {
        "id": chain_id,
        "name": f"local-{chain_id}",
        "rpc_urls": [url],
        "confirmations": 2,
        "bridges": {TOKEN: {"bridge": bridge.bridge, "token": token, "start_block": bridge.deploy_block}},
    }


def main() -> None:
    path = Path(os.environ.get("FERRY_CHAINS_FILE", "chains.yaml"))
    if _deployed(path):
        print(f"{path} is up to date")
        return
    chains = {}
    for entry in os.environ["FERRY_COMPOSE_CHAINS"].split(","):
        chain_id, url = entry.split("=", 1)
        chains[int(chain_id)] = _deploy(int(chain_id), url)
    routes = [{"token": TOKEN, "source": a, "target": b} for a in chains for b in chains if a != b]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"chains": list(chains.values()), "routes": routes}, sort_keys=False))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
