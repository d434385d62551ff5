"""The Operations dashboard: health of every process, lag, RPC endpoints, queue, errors, resources."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from grafana import panels as p

CHAIN = 'chain=~"$chain"'
RATE = "$__rate_interval"


def operations() -> dashboard.Dashboard:
    board = p.new_dashboard(
        "ferry-operations",
        "Ferry / Operations",
        "Health of every Ferry process, lag, queue, errors, resources.",
    ).with_variable(p.prom_variable("chain", "chain", "ferry_indexer_lag_blocks"))
    board = board.with_row(dashboard.Row("Processes"))
    for panel in (
        p.single("Processes up", p.promql('sum(up{job=~"ferry-.*"})'), width=4),
        p.single("Processes down", p.promql('count(up{job=~"ferry-.*"} == 0) or vector(0)'), width=4),
        p.series("Up by process", p.promql('up{job=~"ferry-.*"}', "{{job}} {{instance}}"), width=8),
        p.sql_table(
            "Routes (paused first)",
            "SELECT route_id, paused, updated_at FROM analytics.routes ORDER BY paused DESC, route_id",
            width=8,
            height=8,
        ),
    ):
        board = board.with_panel(panel)
    board = board.with_row(dashboard.Row("Indexer"))
    for panel in (
        p.series(
            "Indexer lag (blocks)", p.promql(f"ferry_indexer_lag_blocks{{{CHAIN}}}", "{{chain}}"), width=8
        ),
        p.series(
            "Indexer errors",
            p.promql(
                f"sum by (chain, kind) (rate(ferry_indexer_errors_total{{{CHAIN}}}[{RATE}]))",
                "{{chain}} {{kind}}",
            ),
            unit="ops",
            width=8,
        ),
        p.series(
            "Backfill progress",
            p.promql(f"max by (chain) (ferry_indexer_backfill_progress{{{CHAIN}}})", "{{chain}}"),
            unit="percentunit",
            width=8,
        ),
    ):
        board = board.with_panel(panel)
    board = board.with_row(dashboard.Row("Relayer"))
    for panel in (
        p.series(
            "Relay jobs by outcome",
            p.promql(f"sum by (outcome) (rate(ferry_relayer_jobs_total[{RATE}]))", "{{outcome}}"),
            unit="ops",
        ),
        p.series(
            "Release transactions by outcome",
            p.promql(
                f"sum by (chain, outcome) (rate(ferry_relayer_releases_total{{{CHAIN}}}[{RATE}]))",
                "{{chain}} {{outcome}}",
            ),
            unit="ops",
        ),
        p.series(
            "Sweep enqueues",
            p.promql(f"rate(ferry_relayer_sweep_enqueued_total[{RATE}])", "enqueued"),
            unit="ops",
        ),
        p.series(
            "Relay queue depth (per target chain)",
            p.promql(f"sum by (chain) (ferry_relayer_queue_depth{{{CHAIN}}})", "{{chain}}"),
        ),
        p.series(
            "Release transactions in flight",
            p.promql(f"sum by (chain) (ferry_relayer_txs_in_flight{{{CHAIN}}})", "in flight {{chain}}"),
            p.promql(
                f"sum by (chain, reason) (rate(ferry_relayer_replacements_total{{{CHAIN}}}[{RATE}]))",
                "replaced {{chain}} ({{reason}})",
                ref_id="B",
            ),
        ),
        p.series(
            "Release failures by reason",
            p.promql(
                f"sum by (route, reason) (increase(ferry_relayer_release_failures_total[{RATE}]))",
                "{{route}} {{reason}}",
            ),
        ),
        p.series(
            "Submitter gas balance (native units)",
            p.promql(f"ferry_relayer_submitter_balance_wei{{{CHAIN}}} / 1e18", "{{chain}}"),
        ),
    ):
        board = board.with_panel(panel)
    board = rpc_endpoints(board.with_row(dashboard.Row("RPC endpoints")))
    board = board.with_row(dashboard.Row("Gateway"))
    for panel in (
        p.series(
            "GraphQL operations",
            p.promql(
                f"sum by (operation, outcome) (rate(ferry_gateway_requests_total[{RATE}]))",
                "{{operation}} {{outcome}}",
            ),
            unit="reqps",
        ),
        p.series(
            "GraphQL latency p99",
            p.promql(
                p.quantile(0.99, "ferry_gateway_request_seconds_bucket", "operation"),
                "{{operation}}",
            ),
            unit="s",
        ),
        p.series("Subscriptions", p.promql("sum(ferry_gateway_subscriptions)", "active"), width=8),
        p.series(
            "Slow subscribers dropped",
            p.promql(f"sum(rate(ferry_gateway_slow_consumers_dropped_total[{RATE}]))", "dropped"),
            unit="ops",
            width=8,
        ),
        p.series(
            "Change feed rows fanned out",
            p.promql(f"sum(rate(ferry_gateway_changes_read_total[{RATE}]))", "rows"),
            unit="ops",
            width=8,
        ),
    ):
        board = board.with_panel(panel)
    return resources(board.with_row(dashboard.Row("Resources")))


def rpc_endpoints(board: dashboard.Dashboard) -> dashboard.Dashboard:
    by_endpoint = "{{chain}} #{{endpoint}}"
    for panel in (
        p.series(
            "Endpoints in rotation, head subscriptions live",
            p.promql(f"ferry_rpc_endpoint_up{{{CHAIN}}}", by_endpoint),
            p.promql(f"ferry_rpc_head_subscription_up{{{CHAIN}}}", "{{chain}} #{{endpoint}} newHeads", "B"),
            width=6,
        ),
        p.series(
            "RPC requests",
            p.promql(
                f"sum by (chain, endpoint) (rate(ferry_rpc_requests_total{{{CHAIN}}}[{RATE}]))", by_endpoint
            ),
            unit="reqps",
            width=6,
        ),
        p.series(
            "RPC errors by kind",
            p.promql(
                f"sum by (chain, endpoint, kind) (rate(ferry_rpc_errors_total{{{CHAIN}}}[{RATE}]))",
                "{{chain}} #{{endpoint}} {{kind}}",
            ),
            unit="ops",
            width=6,
        ),
        p.series(
            "RPC latency p99",
            p.promql(
                p.quantile(0.99, "ferry_rpc_request_seconds_bucket", "chain, endpoint", CHAIN), by_endpoint
            ),
            unit="s",
            width=6,
        ),
    ):
        board = board.with_panel(panel)
    return board


def resources(board: dashboard.Dashboard) -> dashboard.Dashboard:
    for panel in (
        p.series(
            "CPU",
            p.promql(f'rate(process_cpu_seconds_total{{job=~"ferry-.*"}}[{RATE}])', "{{job}}"),
            unit="percentunit",
            width=6,
        ),
        p.series(
            "Resident memory",
            p.promql('process_resident_memory_bytes{job=~"ferry-.*"}', "{{job}}"),
            unit="bytes",
            width=6,
        ),
        p.series("Open file descriptors", p.promql('process_open_fds{job=~"ferry-.*"}', "{{job}}"), width=6),
        p.series(
            "Event-loop lag p99",
            p.promql(
                p.quantile(0.99, "ferry_event_loop_lag_seconds_bucket", "job", 'job=~"ferry-.*"'),
                "{{job}}",
            ),
            unit="s",
            width=6,
        ),
    ):
        board = board.with_panel(panel)
    return board
