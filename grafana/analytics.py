"""The Analytics dashboard (PostgreSQL, the analytics views only) and the one-transfer drill-down.

Every query reads ``analytics.*`` as the read-only analyst role; the route and
chain variables come from the same views. tests/e2e/test_observability.py runs
each query on data from a real run of the stack and checks its columns.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard, table

from grafana import panels as p

ANALYTICS_FILTER = "route_id IN ($route) AND (source_chain IN ($chain) OR target_chain IN ($chain))"
TRANSFERS_IN_RANGE = f"FROM analytics.transfers WHERE $__timeFilter(locked_at) AND {ANALYTICS_FILTER}"


def analytics() -> dashboard.Dashboard:
    board = (
        p.new_dashboard(
            "ferry-analytics",
            "Ferry / Analytics",
            "Bridge data from PostgreSQL (analytics views, read-only analyst role).",
            default_range="now-30d",
        )
        .with_variable(p.sql_variable("route", "SELECT route_id FROM analytics.routes ORDER BY 1"))
        .with_variable(p.sql_variable("chain", "SELECT name FROM analytics.chains ORDER BY 1"))
    )
    for panel in (
        p.sql_series(
            "Daily volume per route and token",
            "SELECT day AS time, route_id || ' ' || token AS metric, volume_tokens AS value"
            " FROM analytics.daily_volume WHERE $__timeFilter(day) AND route_id IN ($route) ORDER BY 1",
            width=24,
        ),
        p.sql_table(
            "Top senders",
            f"SELECT sender, count(*) AS transfers, sum(amount_tokens) AS volume {TRANSFERS_IN_RANGE}"
            " GROUP BY sender ORDER BY volume DESC LIMIT 10",
        ),
        p.sql_table(
            "Top recipients",
            f"SELECT recipient, count(*) AS transfers, sum(amount_tokens) AS volume {TRANSFERS_IN_RANGE}"
            " GROUP BY recipient ORDER BY volume DESC LIMIT 10",
        ),
        p.sql_histogram(
            "Transfer size distribution (tokens)",
            f"SELECT amount_tokens::double precision AS amount {TRANSFERS_IN_RANGE}",
        ),
        p.sql_histogram(
            "Time to release (seconds)",
            f"SELECT seconds_to_release {TRANSFERS_IN_RANGE} AND seconds_to_release IS NOT NULL",
            unit="s",
        ),
        p.sql_bars(
            "Failures and holds by reason",
            "SELECT coalesce(reason, 'unknown') AS reason, count(*) AS transfers"
            " FROM analytics.status_history WHERE $__timeFilter(at)"
            " AND to_status IN ('FAILED', 'HELD') AND route_id IN ($route)"
            " GROUP BY 1 ORDER BY 2 DESC",
        ),
        p.sql_table(
            "Transfers by status",
            f"SELECT status, count(*) AS transfers, sum(amount_tokens) AS volume {TRANSFERS_IN_RANGE}"
            " GROUP BY status ORDER BY transfers DESC",
        ),
        recent_transfers(),
    ):
        board = board.with_panel(panel)
    return board


def recent_transfers() -> table.Panel:
    panel = p.sql_table(
        "Recent transfers",
        "SELECT locked_at, id, status, route_id, sender, recipient, amount_tokens, seconds_to_release,"
        f" lock_tx_hash, release_tx_hash, failure_reason {TRANSFERS_IN_RANGE}"
        " ORDER BY locked_at DESC LIMIT 100",
        width=24,
        height=12,
    )
    # NOTE: the link opens the transfer's full timeline through the same analytics views.
    link = dashboard.DashboardLink("Status history of this transfer").url(
        "/d/ferry-transfer?var-transfer=${__data.fields.id}&${__url_time_range}"
    )
    return panel.data_links([link])


def transfer_detail() -> dashboard.Dashboard:
    transfer_variable = dashboard.TextBoxVariable("transfer").label("transfer id")
    return (
        p.new_dashboard(
            "ferry-transfer",
            "Ferry / Transfer",
            "One transfer and its status history.",
            default_range="now-30d",
        )
        .with_variable(transfer_variable)
        .with_panel(
            p.sql_table(
                "Transfer",
                "SELECT id, status, route_id, sender, recipient, amount, amount_tokens, locked_at,"
                " released_at, lock_tx_hash, release_tx_hash, attempts, failure_reason"
                " FROM analytics.transfers"
                " WHERE id = '$transfer'",
                width=24,
                height=5,
            )
        )
        .with_panel(
            p.sql_table(
                "Status history",
                "SELECT at, from_status, to_status, reason, tx_hash, block_number"
                " FROM analytics.status_history WHERE transfer_id = '$transfer' ORDER BY id",
                width=24,
            )
        )
    )
