"""Generate Ferry's Grafana dashboards from code: ``python -m grafana.generate [--check]``.

Writes one JSON file per dashboard into ``grafana/dashboards/`` (loaded by the
provisioned dashboard provider). The JSON is committed; ``--check`` (and
tests/unit/test_dashboards.py) fails when it differs from what this code makes,
so an edit to the JSON by hand never survives unnoticed.

Dashboards: Operations (process health, lag, queue, errors, resources),
Transfers (business metrics from Prometheus), Analytics (PostgreSQL, the
``analytics`` views only), Chains (per-chain indexer detail, reorg history) and
Transfer (one transfer's status history, linked from the Analytics table).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from grafana import panels as p
from grafana.analytics import analytics, transfer_detail
from grafana.operations import operations

DASHBOARDS_DIR = Path(__file__).resolve().parent / "dashboards"

CHAIN = 'chain=~"$chain"'
ROUTE = 'route=~"$route"'
RATE = "$__rate_interval"
TRANSITIONS = "ferry_transfer_transitions_total"
VOLUME = "ferry_transfer_volume_tokens_total"


def transfers() -> dashboard.Dashboard:
    board = p.new_dashboard(
        "ferry-transfers",
        "Ferry / Transfers",
        "Transfers and volume by route and status over time, success rate, lock→release latency,"
        " held and failed.",
    ).with_variable(p.prom_variable("route", "route", "ferry_transfer_transitions_total"))
    entering = f'sum(increase(%s{{{ROUTE}, status="%s"}}[$__range]))'
    for panel in (
        p.single("Locked (range)", p.promql(entering % (TRANSITIONS, "PENDING")), width=4),
        p.single("Released (range)", p.promql(entering % (TRANSITIONS, "RELEASED")), width=4),
        p.single("Held (range)", p.promql(entering % (TRANSITIONS, "HELD")), width=4),
        p.single("Failed (range)", p.promql(entering % (TRANSITIONS, "FAILED")), width=4),
        # NOTE: token units summed over the selected routes: one token per route, so pick
        # routes of one token for a meaningful total.
        p.single("Volume locked (range, tokens)", p.promql(entering % (VOLUME, "PENDING")), width=4),
        p.single("Volume released (range, tokens)", p.promql(entering % (VOLUME, "RELEASED")), width=4),
        p.series(
            "Transfers entering each status",
            p.promql(
                f"sum by (route, status) (rate(ferry_transfer_transitions_total{{{ROUTE}}}[{RATE}]))",
                "{{route}} {{status}}",
            ),
            unit="ops",
        ),
        p.series(
            "Volume entering each status (tokens per second)",
            p.promql(f"sum by (route, status) (rate({VOLUME}{{{ROUTE}}}[{RATE}]))", "{{route}} {{status}}"),
        ),
        p.series(
            "Success rate (released / released + failed)",
            p.promql(
                f'sum by (route) (rate({TRANSITIONS}{{{ROUTE}, status="RELEASED"}}[{RATE}]))'
                f' / sum by (route) (rate({TRANSITIONS}{{{ROUTE}, status=~"RELEASED|FAILED"}}[{RATE}]))',
                "{{route}}",
            ),
            unit="percentunit",
        ),
        p.series(
            "Held and failed",
            p.promql(
                f'sum by (route, status) (increase({TRANSITIONS}{{{ROUTE}, status=~"HELD|FAILED"}}[{RATE}]))',
                "{{route}} {{status}}",
            ),
        ),
        p.series(
            "Lock → release latency",
            *(
                p.promql(
                    p.quantile(q, "ferry_lock_to_release_seconds_bucket", "route", ROUTE),
                    f"p{int(q * 100)} {{{{route}}}}",
                    ref_id=ref,
                )
                for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))
            ),
            unit="s",
            width=24,
        ),
        p.sql_series(
            "Volume by route (tokens per hour, PostgreSQL)",
            "SELECT date_trunc('hour', locked_at) AS time, route_id AS metric, sum(amount_tokens) AS value"
            " FROM analytics.transfers WHERE $__timeFilter(locked_at) AND status <> 'ORPHANED'"
            " GROUP BY 1, 2 ORDER BY 1",
            width=24,
        ),
    ):
        board = board.with_panel(panel)
    return board


def chains() -> dashboard.Dashboard:
    board = p.new_dashboard(
        "ferry-chains",
        "Ferry / Chains",
        "Per-chain indexer detail: head, indexed block, lag, backfill progress, events, errors, reorgs.",
    ).with_variable(p.prom_variable("chain", "chain", "ferry_chain_head_block"))
    for panel in (
        p.series(
            "Head and indexed block",
            p.promql(f"ferry_chain_head_block{{{CHAIN}}}", "head {{chain}}"),
            p.promql(f"ferry_indexer_indexed_block{{{CHAIN}}}", "indexed {{chain}}", ref_id="B"),
        ),
        p.series("Lag (blocks)", p.promql(f"ferry_indexer_lag_blocks{{{CHAIN}}}", "{{chain}}")),
        p.series("Lag (seconds)", p.promql(f"ferry_indexer_lag_seconds{{{CHAIN}}}", "{{chain}}"), unit="s"),
        backfill_progress(),
        p.series(
            "Leader and watchdog",
            p.promql(f"max by (chain) (ferry_indexer_leader{{{CHAIN}}})", "leader held {{chain}}"),
            p.promql(f"max by (chain) (ferry_indexer_stalled{{{CHAIN}}})", "stalled {{chain}}", ref_id="B"),
            p.promql(
                f"sum by (chain) (increase(ferry_indexer_watchdog_restarts_total{{{CHAIN}}}[{RATE}]))",
                "watchdog restarts {{chain}}",
                ref_id="C",
            ),
        ),
        p.series(
            "Blocks per second",
            p.promql(f"rate(ferry_chain_head_block{{{CHAIN}}}[{RATE}])", "{{chain}}"),
            unit="ops",
        ),
        p.series(
            "Bridge events indexed",
            p.promql(
                f"sum by (chain, event) (rate(ferry_indexer_events_total{{{CHAIN}}}[{RATE}]))",
                "{{chain}} {{event}}",
            ),
            unit="ops",
        ),
        p.series(
            "Indexer errors",
            p.promql(
                f"sum by (chain, kind) (increase(ferry_indexer_errors_total{{{CHAIN}}}[{RATE}]))",
                "{{chain}} {{kind}}",
            ),
        ),
        p.series(
            "Reorg history",
            p.promql(
                f"sum by (chain) (increase(ferry_indexer_reorgs_total{{{CHAIN}}}[{RATE}]))",
                "reorgs {{chain}}",
            ),
            p.promql(
                f"sum by (chain) (increase(ferry_indexer_deep_reorgs_total{{{CHAIN}}}[{RATE}]))",
                "deeper than confirmations {{chain}}",
                ref_id="B",
            ),
        ),
        p.series(
            "Reorg depth (p99, blocks)",
            p.promql(
                p.quantile(0.99, "ferry_indexer_reorg_depth_blocks_bucket", "chain", CHAIN),
                "{{chain}}",
            ),
        ),
    ):
        board = board.with_panel(panel)
    return board


def backfill_progress(width: int = 12) -> p.Panel:
    """Share of the current backfill committed per chain (1 when there is none or it is done)."""
    return p.series(
        "Backfill progress",
        p.promql(f"max by (chain) (ferry_indexer_backfill_progress{{{CHAIN}}})", "{{chain}}"),
        unit="percentunit",
        width=width,
    )


DASHBOARDS: dict[str, Callable[[], dashboard.Dashboard]] = {
    "operations": operations,
    "transfers": transfers,
    "analytics": analytics,
    "chains": chains,
    "transfer": transfer_detail,
}


def render(build: Callable[[], dashboard.Dashboard]) -> str:
    model: Any = json.loads(json.dumps(build().build(), cls=JSONEncoder))
    return json.dumps(_without_nulls(model), indent=2, sort_keys=True) + "\n"


def _without_nulls(value: Any) -> Any:
    """The SDK writes unset panel fields as null; Grafana wants them absent."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def rendered() -> dict[Path, str]:
    return {DASHBOARDS_DIR / f"{name}.json": render(build) for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the committed JSON is stale")
    args = parser.parse_args(argv)
    stale = [path for path, text in rendered().items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path} is stale: run python -m grafana.generate", file=sys.stderr)
        return 1 if stale else 0
    DASHBOARDS_DIR.mkdir(exist_ok=True)
    for path, text in rendered().items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
