"""``ferry keys rotate``: replace a release signer on every configured bridge without downtime.

The procedure (docs/relayer.md has the operator's version):

0. Before: give every relayer the new signer's keystore (``FERRY_SIGNER_KEYSTORES``)
   and restart them one by one; they keep signing with current signers only.
1. Add: ``setSigners(current + [new], threshold)`` on each bridge. Relayers read
   signer sets again every ``SIGNER_SET_TTL`` seconds and prefer the newest
   signers, so signing moves to the new key on its own.
2. Settle: wait ``settle`` seconds (default 60) so releases signed with the old
   key are mined.
3. Remove: ``setSigners(current - [old], threshold)``.

Exactly once throughout: a release still carrying the old signature after step 3
reverts (``UnknownSigner``) and its transfers go back to be signed again; the
bridge's replay protection never pays an order twice. Each step is idempotent:
running the command again after a failure picks up where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from eth_utils.address import to_checksum_address
from web3 import HTTPProvider, Web3

from ferry.deploy import bridge_contract, send_transaction
from ferry.settings import ChainsConfig, ConfigError

DEFAULT_SETTLE_SECONDS = 60.0


def _bridges(chains: ChainsConfig) -> Iterator[tuple[int, str, Web3]]:
    targets = {route.target for route in chains.routes}
    for chain in chains.chains:
        if chain.id not in targets:
            continue
        # NOTE: web3's contract calls here are synchronous: they need an http(s) endpoint
        http = next((url for url in chain.rpc_urls if url.startswith(("http://", "https://"))), None)
        if http is None:
            raise ConfigError(f"chain {chain.name}: key rotation needs an http(s):// endpoint in rpc_urls")
        w3 = Web3(HTTPProvider(http, request_kwargs={"timeout": 30}))
        for deployment in chain.bridges.values():
            yield chain.id, deployment.bridge, w3


def rotate_signer(
    chains: ChainsConfig,
    owner_key: str,
    old: str,
    new: str,
    *,
    settle: float = DEFAULT_SETTLE_SECONDS,
    say: Callable[[str], None] = print,
) -> None:
    """Add ``new``, wait ``settle`` seconds, remove ``old``, on every bridge releases go through."""
    old, new = to_checksum_address(old), to_checksum_address(new)
    if old == new:
        raise ConfigError("the old and the new signer are the same address")
    bridges = list(_bridges(chains))
    for chain_id, bridge, w3 in bridges:
        contract = bridge_contract(w3, bridge)
        signers = [to_checksum_address(s) for s in contract.functions.getSigners().call()]
        threshold = int(contract.functions.threshold().call())
        if new in signers:
            say(f"chain {chain_id} bridge {bridge}: {new} is already a signer")
            continue
        call = contract.functions.setSigners([*signers, new], threshold)
        send_transaction(w3, owner_key, call, f"adding signer {new} on chain {chain_id}")
        say(f"chain {chain_id} bridge {bridge}: added signer {new} (threshold {threshold})")
    say(f"waiting {settle:g} s for relayers to sign with the new key and releases in flight to be mined")
    time.sleep(settle)
    for chain_id, bridge, w3 in bridges:
        contract = bridge_contract(w3, bridge)
        signers = [to_checksum_address(s) for s in contract.functions.getSigners().call()]
        threshold = int(contract.functions.threshold().call())
        if old not in signers:
            say(f"chain {chain_id} bridge {bridge}: {old} is not a signer (already removed)")
            continue
        remaining = [s for s in signers if s != old]
        if len(remaining) < threshold:
            raise ConfigError(
                f"removing {old} on chain {chain_id} would leave {len(remaining)} signers for threshold "
                f"{threshold}: add another signer first"
            )
        call = contract.functions.setSigners(remaining, threshold)
        send_transaction(w3, owner_key, call, f"removing signer {old} on chain {chain_id}")
        say(f"chain {chain_id} bridge {bridge}: removed signer {old}")
