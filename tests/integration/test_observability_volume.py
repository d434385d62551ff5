"""Token decimals in the database, the analytics views that apply them, and the volume metric.

- The indexer registers each configured token with its decimals (and updates them
  when the chains file changes them).
- ``analytics.transfers.amount_tokens`` and ``analytics.daily_volume.volume_tokens``
  divide by the source token's real decimals, exactly; an unknown token gives NULL.
- ``ferry_transfer_volume_tokens_total{route, status}`` grows by each change's
  amount in token units, once per change that happened (an illegal move counts
  nothing), with routes that are not configured labelled ``unrouted``.
- ``ferry_transfer_transitions_total{route, status}`` is counted in the same place:
  every change once (a transfer of an unknown token too), none for an illegal move.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest
from prometheus_client import REGISTRY

from ferry.domain import TransferStatus
from ferry.settings import BridgeDeployment, ChainConfig, ChainsConfig, RouteConfig
from ferry.transitions import Move, move_transfers, record_new
from indexer.store import register_chains

SOURCE, TARGET = 910_001, 910_002
USDX_ROUTE = f"USDX:{SOURCE}-{TARGET}"
VOLUME = "ferry_transfer_volume_tokens_total"
TRANSITIONS = "ferry_transfer_transitions_total"


def _deployment(n: int, decimals: int) -> BridgeDeployment:
    return BridgeDeployment(bridge=f"0x{n:040x}", token=f"0x{n + 1:040x}", decimals=decimals)


def _chains(usdx_decimals: int = 6) -> ChainsConfig:
    def chain(chain_id: int, offset: int) -> ChainConfig:
        return ChainConfig(
            id=chain_id,
            name=f"volume-{chain_id}",
            rpc_urls=["http://127.0.0.1:9"],
            bridges={"USDX": _deployment(offset, usdx_decimals), "WETH": _deployment(offset + 2, 18)},
        )

    return ChainsConfig(
        chains=[chain(SOURCE, 0x100), chain(TARGET, 0x200)],
        routes=[RouteConfig(token="USDX", source=SOURCE, target=TARGET)],
    )


#: (transfer id, token, base units): USDX has 6 decimals, WETH 18 (route not configured),
#: GHOST is no configured token at all.
TRANSFERS = [
    (f"{SOURCE}:0xb:1", "USDX", 1_500_000),
    (f"{SOURCE}:0xb:2", "WETH", 2 * 10**18 + 1),
    (f"{SOURCE}:0xb:3", "GHOST", 7),
]


@pytest.fixture
async def conn(clean_db: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(clean_db)
    async with connection.transaction():
        await register_chains(connection, _chains().chains)
        await connection.execute(
            "INSERT INTO routes (route_id, token, source_chain_id, target_chain_id)"
            " VALUES ($1, 'USDX', $2, $3)",
            USDX_ROUTE,
            SOURCE,
            TARGET,
        )
        for index, (transfer_id, token, amount) in enumerate(TRANSFERS):
            await connection.execute(
                """
                INSERT INTO transfers (id, route_id, token, source_chain_id, source_bridge, nonce,
                       target_chain_id, sender, recipient, amount, status, confirmations_required,
                       lock_tx_hash, lock_log_index, lock_block_number, lock_block_hash, lock_block_time)
                VALUES ($1, $2, $3, $4, '0xb', $5, $6, '0xs', '0xr', $7, 'PENDING', 1,
                        $8, 0, 10, '0xh', $9)
                """,
                transfer_id,
                f"{token}:{SOURCE}-{TARGET}",
                token,
                SOURCE,
                index + 1,
                TARGET,
                amount,
                f"0x{index:064x}",
                datetime.now(UTC),
            )
    try:
        yield connection
    finally:
        await connection.close()


def _volume(route: str, status: str) -> float:
    return REGISTRY.get_sample_value(VOLUME, {"route": route, "status": status}) or 0.0


def _moved(route: str, status: str) -> float:
    return REGISTRY.get_sample_value(TRANSITIONS, {"route": route, "status": status}) or 0.0


def _total_volume() -> float:
    return sum(
        sample.value for metric in REGISTRY.collect() for sample in metric.samples if sample.name == VOLUME
    )


async def test_tokens_are_registered_with_their_decimals_and_updated(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch("SELECT chain_id, symbol, token_address, decimals FROM tokens ORDER BY 1, 2")
    assert [(r["chain_id"], r["symbol"], r["decimals"]) for r in rows] == [
        (SOURCE, "USDX", 6),
        (SOURCE, "WETH", 18),
        (TARGET, "USDX", 6),
        (TARGET, "WETH", 18),
    ]
    assert rows[0]["token_address"] == f"0x{0x101:040x}"
    await register_chains(conn, _chains(usdx_decimals=8).chains)
    changed = await conn.fetchval(
        "SELECT decimals FROM tokens WHERE chain_id = $1 AND symbol = 'USDX'", SOURCE
    )
    assert changed == 8


async def test_analytics_views_apply_each_tokens_decimals_exactly(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch("SELECT id, amount_tokens, decimals FROM analytics.transfers ORDER BY id")
    assert [(r["amount_tokens"], r["decimals"]) for r in rows] == [
        (Decimal("1.5"), 6),
        (Decimal("2.000000000000000001"), 18),
        (None, None),
    ]
    daily = await conn.fetch("SELECT token, volume, volume_tokens FROM analytics.daily_volume ORDER BY token")
    assert [(r["token"], r["volume_tokens"]) for r in daily] == [
        ("GHOST", None),
        ("USDX", Decimal("1.5")),
        ("WETH", Decimal("2.000000000000000001")),
    ]
    tokens = await conn.fetch(
        "SELECT chain, symbol, decimals FROM analytics.tokens WHERE chain_id = $1", SOURCE
    )
    assert {(r["chain"], r["symbol"], r["decimals"]) for r in tokens} == {
        (f"volume-{SOURCE}", "USDX", 6),
        (f"volume-{SOURCE}", "WETH", 18),
    }


async def test_volume_counts_each_change_once_in_token_units(conn: asyncpg.Connection) -> None:
    pending_usdx, pending_unrouted, total = (
        _volume(USDX_ROUTE, "PENDING"),
        _volume("unrouted", "PENDING"),
        _total_volume(),
    )
    moved_usdx, moved_unrouted = _moved(USDX_ROUTE, "PENDING"), _moved("unrouted", "PENDING")
    async with conn.transaction():
        await record_new(conn, [(t[0], TransferStatus.PENDING) for t in TRANSFERS])
    assert _moved(USDX_ROUTE, "PENDING") - moved_usdx == 1
    assert _moved("unrouted", "PENDING") - moved_unrouted == 2  # WETH and GHOST: counted, no volume
    assert _volume(USDX_ROUTE, "PENDING") - pending_usdx == pytest.approx(1.5)
    # NOTE: WETH's route is not configured: labelled unrouted; GHOST has no decimals: not counted.
    assert _volume("unrouted", "PENDING") - pending_unrouted == pytest.approx(2.0)
    assert _total_volume() - total == pytest.approx(3.5)

    confirmed, moved_confirmed = _volume(USDX_ROUTE, "CONFIRMED"), _moved(USDX_ROUTE, "CONFIRMED")
    confirm = Move(TRANSFERS[0][0], TransferStatus.CONFIRMED)
    async with conn.transaction():
        assert await move_transfers(conn, [confirm])
    async with conn.transaction():
        # NOTE: CONFIRMED -> CONFIRMED is not a legal move: nothing happens, nothing is counted.
        assert await move_transfers(conn, [confirm]) == []
    assert _volume(USDX_ROUTE, "CONFIRMED") - confirmed == pytest.approx(1.5)
    assert _moved(USDX_ROUTE, "CONFIRMED") - moved_confirmed == 1
    assert _total_volume() - total == pytest.approx(5.0)
