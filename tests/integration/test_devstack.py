"""The shared fixtures themselves: a migrated database and two funded bridge chains."""

from __future__ import annotations

import psycopg

from ferry.deploy import token_contract
from ferry.devstack import BRIDGE_LIQUIDITY, USER_FUNDS, DevNetwork


def test_database_is_migrated(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        version = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
    assert version is not None
    assert {"transfers", "transfer_status_history", "relay_txs", "chains", "blocks"} <= tables


def test_dev_chains_are_deployed_and_funded(dev_chains: DevNetwork) -> None:
    config = dev_chains.config
    assert [c.id for c in config.chains] == [31337, 31338]
    assert {r.route_id for r in config.routes} == {"FTT:31337-31338", "FTT:31338-31337"}
    for chain in dev_chains.chains:
        token = token_contract(chain.w3, chain.token)
        assert token.functions.balanceOf(chain.bridge).call() == BRIDGE_LIQUIDITY
        assert token.functions.balanceOf(dev_chains.user_address).call() <= USER_FUNDS
