"""What the bridge serves: chains (and how well they are followed), routes with limits, tokens, stats.

Chain, route and token facts come from two places: the chains file the gateway
was started with (names, confirmations, decimals, limits) and the database
(what the indexer has seen, which routes operators paused). Either may lack an
entry (a chain removed from the file, a route not yet written): fields that
cannot be known are null rather than guessed.

Route limits are read from ``RouteConfig`` with ``getattr`` so the gateway keeps
working with a chains file (and a ``RouteConfig``) that has no limit fields.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta

import strawberry

from ferry.settings import ChainsConfig, RouteConfig
from gateway import catalog_reads
from gateway.catalog_reads import ChainRow, RouteRow
from gateway.errors import checked_text
from gateway.scalars import BigInt
from gateway.types import Info, format_units, uint_text

#: A chain whose head the indexer has not refreshed for this long is STALLED.
STALL_AFTER = timedelta(seconds=60)


@strawberry.enum(description="How well the indexer follows a chain.")
class ChainHealth(enum.Enum):
    HEALTHY = "HEALTHY"
    LAGGING = "LAGGING"
    STALLED = "STALLED"
    UNKNOWN = "UNKNOWN"


@strawberry.type(description="A chain the bridge follows.")
class Chain:
    id: BigInt
    name: str
    head_block: BigInt | None = strawberry.field(description="The node's latest block, as last seen.")
    indexed_block: BigInt | None = strawberry.field(description="The highest block the indexer committed.")
    lag: int | None = strawberry.field(description="headBlock - indexedBlock, in blocks.")
    head_seen_at: datetime | None
    confirmations: int | None = strawberry.field(description="Confirmations a lock on this chain needs.")
    paused: bool = strawberry.field(description="True when every route from or to this chain is paused.")
    health: ChainHealth = strawberry.field(
        description=(
            "HEALTHY: head fresh and lag within confirmations; LAGGING: lag beyond confirmations; "
            "STALLED: head not refreshed for 60 s; UNKNOWN: the indexer has not written this chain."
        )
    )


@strawberry.type(description="A route's limits (token smallest units); null where none is configured.")
class RouteLimits:
    max_amount: str | None = strawberry.field(description="Largest amount one transfer may release.")
    daily_cap: str | None = strawberry.field(description="Most volume released per UTC day.")
    sender_hourly_limit: int | None = strawberry.field(description="Transfers per sender per hour.")


@strawberry.type(description="A (token, source chain, target chain) route.")
class Route:
    id: str = strawberry.field(description="<token>:<source chain id>-<target chain id>")
    token: str
    source_chain_id: BigInt
    target_chain_id: BigInt
    paused: bool
    paused_reason: str | None
    limits: RouteLimits


@strawberry.type(description="Where a token's bridge lives on one chain.")
class TokenDeployment:
    chain_id: BigInt
    bridge: str
    token_address: str
    decimals: int


@strawberry.type(description="A token the bridge carries.")
class Token:
    symbol: str
    deployments: list[TokenDeployment]
    routes: list[Route]


def _limits(config: RouteConfig | None) -> RouteLimits:
    def text(name: str) -> str | None:
        value = getattr(config, name, None)
        return None if value is None else str(value)

    hourly = getattr(config, "sender_hourly_limit", None)
    return RouteLimits(
        max_amount=text("max_amount"),
        daily_cap=text("daily_cap"),
        sender_hourly_limit=hourly if isinstance(hourly, int) else None,
    )


def route_of(row: RouteRow | None, config: RouteConfig | None) -> Route:
    if row is not None:
        return Route(
            id=row.route_id,
            token=row.token,
            source_chain_id=BigInt(row.source_chain_id),
            target_chain_id=BigInt(row.target_chain_id),
            paused=row.paused,
            paused_reason=row.paused_reason,
            limits=_limits(config),
        )
    assert config is not None
    return Route(
        id=config.route_id,
        token=config.token,
        source_chain_id=BigInt(config.source),
        target_chain_id=BigInt(config.target),
        paused=False,
        paused_reason=None,
        limits=_limits(config),
    )


def _health(row: ChainRow | None, confirmations: int | None, now: datetime) -> ChainHealth:
    if row is None or row.head_block is None or row.head_seen_at is None:
        return ChainHealth.UNKNOWN
    if now - row.head_seen_at > STALL_AFTER:
        return ChainHealth.STALLED
    if row.head_block - row.indexed_block > (confirmations or 0):
        return ChainHealth.LAGGING
    return ChainHealth.HEALTHY


async def all_routes(info: Info) -> list[Route]:
    rows = await catalog_reads.routes(info.context.gateway.pool)
    config = info.context.gateway.chains_config
    configured = {route.route_id: route for route in (config.routes if config else [])}
    ids = sorted(set(rows) | set(configured))
    return [route_of(rows.get(route_id), configured.get(route_id)) for route_id in ids]


async def chains(info: Info) -> list[Chain]:
    """Every chain in the chains file or written by the indexer, by id."""
    gateway = info.context.gateway
    rows = await catalog_reads.chains(gateway.pool)
    config: ChainsConfig | None = gateway.chains_config
    configured = config.chain_by_id if config else {}
    routes = await all_routes(info)
    now = datetime.now(UTC)
    answer = []
    for chain_id in sorted(set(rows) | set(configured)):
        row, chain_config = rows.get(chain_id), configured.get(chain_id)
        confirmations = chain_config.confirmations if chain_config else None
        touching = [r for r in routes if chain_id in (r.source_chain_id, r.target_chain_id)]
        answer.append(
            Chain(
                id=BigInt(chain_id),
                name=chain_config.name if chain_config else row.name if row else str(chain_id),
                head_block=None if row is None or row.head_block is None else BigInt(row.head_block),
                indexed_block=None if row is None else BigInt(row.indexed_block),
                lag=None if row is None or row.head_block is None else row.head_block - row.indexed_block,
                head_seen_at=None if row is None else row.head_seen_at,
                confirmations=confirmations,
                paused=bool(touching) and all(r.paused for r in touching),
                health=_health(row, confirmations, now),
            )
        )
    return answer


async def tokens(info: Info) -> list[Token]:
    config = info.context.gateway.chains_config
    routes = await all_routes(info)
    symbols = sorted(
        {r.token for r in routes} | {s for c in (config.chains if config else []) for s in c.bridges}
    )
    answer = []
    for symbol in symbols:
        deployments = [
            TokenDeployment(
                chain_id=BigInt(chain.id),
                bridge=deployment.bridge,
                token_address=deployment.token,
                decimals=deployment.decimals,
            )
            for chain in (config.chains if config else [])
            for token, deployment in chain.bridges.items()
            if token == symbol
        ]
        answer.append(
            Token(symbol=symbol, deployments=deployments, routes=[r for r in routes if r.token == symbol])
        )
    return answer


@strawberry.enum(description="The period stats covers, ending now (by lock time).")
class StatsWindow(enum.Enum):
    HOUR = "HOUR"
    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"


_WINDOWS = {
    StatsWindow.HOUR: timedelta(hours=1),
    StatsWindow.DAY: timedelta(days=1),
    StatsWindow.WEEK: timedelta(days=7),
    StatsWindow.MONTH: timedelta(days=30),
}


@strawberry.type(description="Volume of one token, in smallest units and with decimals applied.")
class TokenVolume:
    token: str
    amount: str
    amount_formatted: str | None


@strawberry.type(description="Transfers locked within a window: how many, how much, how well, how fast.")
class Stats:
    window: StatsWindow
    route_id: str | None
    count: int
    volume: list[TokenVolume]
    success_rate: float | None = strawberry.field(
        description="Released / (released + failed) among those settled; null when none settled."
    )
    latency_p50: float | None = strawberry.field(description="Seconds from lock to release, median.")
    latency_p90: float | None
    latency_p99: float | None


async def stats(info: Info, window: StatsWindow = StatsWindow.DAY, route_id: str | None = None) -> Stats:
    gateway = info.context.gateway
    if route_id is not None:
        checked_text(route_id, "routeId")
    found = await catalog_reads.transfer_stats(gateway.pool, _WINDOWS[window], route_id)
    decimals = _token_decimals(gateway.chains_config)
    p50, p90, p99 = found.latency_percentiles
    return Stats(
        window=window,
        route_id=route_id,
        count=found.count,
        volume=[
            TokenVolume(
                token=token,
                amount=uint_text(amount),
                amount_formatted=format_units(amount, decimals[token]) if token in decimals else None,
            )
            for token, amount in found.volumes.items()
        ],
        success_rate=None if found.settled == 0 else found.released / found.settled,
        latency_p50=p50,
        latency_p90=p90,
        latency_p99=p99,
    )


def _token_decimals(config: ChainsConfig | None) -> dict[str, int]:
    return {s: d.decimals for c in (config.chains if config else []) for s, d in c.bridges.items()}
