"""SQL for the catalogue fields (chains, routes) and the statistics, all reads, all parameterised."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import asyncpg


@dataclass(frozen=True, slots=True)
class ChainRow:
    chain_id: int
    name: str
    indexed_block: int
    head_block: int | None
    head_seen_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RouteRow:
    route_id: str
    token: str
    source_chain_id: int
    target_chain_id: int
    paused: bool
    paused_reason: str | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class TransferStats:
    count: int
    settled: int
    released: int
    volumes: dict[str, Decimal]
    latency_percentiles: tuple[float | None, float | None, float | None]


async def chains(pool: asyncpg.Pool, ids: list[int] | None = None) -> dict[int, ChainRow]:
    rows = await pool.fetch(
        "SELECT chain_id, name, indexed_block, head_block, head_seen_at, updated_at FROM chains"
        " WHERE $1::bigint[] IS NULL OR chain_id = ANY($1::bigint[]) ORDER BY chain_id",
        ids,
    )
    return {row["chain_id"]: ChainRow(**dict(row)) for row in rows}


async def routes(pool: asyncpg.Pool, ids: list[str] | None = None) -> dict[str, RouteRow]:
    rows = await pool.fetch(
        "SELECT route_id, token, source_chain_id, target_chain_id, paused, paused_reason, updated_at"
        " FROM routes WHERE $1::text[] IS NULL OR route_id = ANY($1::text[]) ORDER BY route_id",
        ids,
    )
    return {row["route_id"]: RouteRow(**dict(row)) for row in rows}


async def transfer_stats(pool: asyncpg.Pool, window: timedelta, route_id: str | None) -> TransferStats:
    """Transfers locked within ``window`` of now (on ``route_id`` if given): counts, volume, latency."""
    row = await pool.fetchrow(
        """
        SELECT count(*) AS count,
               count(*) FILTER (WHERE status IN ('RELEASED', 'FINALIZED', 'FAILED')) AS settled,
               count(*) FILTER (WHERE status IN ('RELEASED', 'FINALIZED')) AS released,
               percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (
                   ORDER BY extract(epoch FROM release_block_time - lock_block_time)
               ) FILTER (WHERE release_block_time IS NOT NULL) AS latency
        FROM transfers
        WHERE lock_block_time >= now() - $1::interval AND ($2::text IS NULL OR route_id = $2)
        """,
        window,
        route_id,
    )
    volume_rows = await pool.fetch(
        "SELECT token, sum(amount) AS volume FROM transfers"
        " WHERE lock_block_time >= now() - $1::interval AND ($2::text IS NULL OR route_id = $2)"
        " GROUP BY token ORDER BY token",
        window,
        route_id,
    )
    assert row is not None  # an aggregate always returns one row
    latency = row["latency"] or [None, None, None]
    return TransferStats(
        count=row["count"],
        settled=row["settled"],
        released=row["released"],
        volumes={r["token"]: r["volume"] for r in volume_rows},
        latency_percentiles=(latency[0], latency[1], latency[2]),
    )
