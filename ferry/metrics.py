"""The metric catalogue shared by every process, and the ``/metrics`` server.

All metric names live here so the catalogue in docs/metrics.md, the dashboards
and the alert rules have one source. Labels are low-cardinality only: chain,
route, status, reason, endpoint index, operation — never an address or a hash.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

# Indexer
CHAIN_HEAD = Gauge("ferry_chain_head_block", "Latest block number reported by the chain's node", ["chain"])
INDEXED_BLOCK = Gauge("ferry_indexer_indexed_block", "Highest block the indexer has committed", ["chain"])
INDEXER_LAG = Gauge("ferry_indexer_lag_blocks", "Node head minus indexed block", ["chain"])
EVENTS_INDEXED = Counter("ferry_indexer_events_total", "Bridge events committed", ["chain", "event"])

# Transfers (business)
TRANSFER_TRANSITIONS = Counter(
    "ferry_transfer_transitions_total", "Transfers entering a status", ["route", "status"]
)
LOCK_TO_RELEASE = Histogram(
    "ferry_lock_to_release_seconds", "Lock block time to release mined", ["route"], buckets=LATENCY_BUCKETS
)

# Relayer
RELEASES = Counter("ferry_relayer_releases_total", "Release transactions by outcome", ["chain", "outcome"])
RELAY_JOBS = Counter("ferry_relayer_jobs_total", "Relay jobs run by outcome", ["outcome"])
SWEEP_ENQUEUED = Counter("ferry_relayer_sweep_enqueued_total", "Transfers enqueued by the sweep or LISTEN")

# Gateway
GRAPHQL_REQUESTS = Counter("ferry_gateway_requests_total", "GraphQL operations", ["operation", "outcome"])
GRAPHQL_LATENCY = Histogram(
    "ferry_gateway_request_seconds", "GraphQL HTTP request latency", ["operation"], buckets=LATENCY_BUCKETS
)
SUBSCRIPTIONS = Gauge("ferry_gateway_subscriptions", "Active GraphQL subscriptions")
FANOUT_DROPPED = Counter(
    "ferry_gateway_slow_consumers_dropped_total", "Subscribers cut off for falling behind"
)
CHANGES_READ = Counter(
    "ferry_gateway_changes_read_total", "Status history rows the gateway's change feed read and fanned out"
)
CHANGE_FEED_CURSOR = Gauge(
    "ferry_gateway_change_feed_cursor", "Highest status history id the gateway's change feed has fanned out"
)


def serve(host: str, port: int) -> None:
    """Expose ``/metrics`` on ``host:port`` from a background thread (port 0 disables)."""
    if port:
        start_http_server(port, addr=host)


# Indexer (appended)
INDEXER_ERRORS = Counter(
    "ferry_indexer_errors_total",
    "Failed indexer steps by kind (rpc, database, reorg, unexpected)",
    ["chain", "kind"],
)

# Resources (appended; CPU, memory and open fds come from prometheus_client's process collector)
EVENT_LOOP_LAG = Histogram(
    "ferry_event_loop_lag_seconds",
    "How late the event loop ran a callback scheduled on time (observability.watch_event_loop)",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

# Relayer: limits, operator actions and dead letters (appended)
LIMIT_HOLDS = Counter(
    "ferry_relayer_limit_holds_total",
    "Transfers HELD by a route limit (max_amount, daily_cap, sender_rate, legacy_recipient)",
    ["route", "limit"],
)
HELD_TRANSFERS = Gauge("ferry_relayer_held_transfers", "Transfers waiting for an operator (HELD)", ["route"])
DEAD_LETTERS = Gauge("ferry_relayer_dead_letters", "FAILED transfers (dead letters), per route", ["route"])
ROUTE_PAUSED = Gauge(
    "ferry_route_paused", "1 while a route is paused (operator or deep-reorg halt)", ["route"]
)
RELEASE_FAILURES = Counter(
    "ferry_relayer_release_failures_total",
    "Transfers FAILED by the relayer, by reason (revert, liquidity, operator)",
    ["route", "reason"],
)
OPERATOR_ACTIONS = Counter(
    "ferry_relayer_operator_actions_total",
    "Operator requests the relayer processed, by action and whether it applied",
    ["action", "outcome"],
)

# Indexer: reorgs (appended)
REORGS = Counter("ferry_indexer_reorgs_total", "Reorgs rolled back", ["chain"])
REORG_DEPTH = Histogram(
    "ferry_indexer_reorg_depth_blocks",
    "Depth of rolled-back reorgs in blocks",
    ["chain"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128, 256),
)
DEEP_REORGS = Counter(
    "ferry_indexer_deep_reorgs_total",
    "Reorgs deeper than confirmations (a confirmed transfer lost its lock); routes were paused",
    ["chain"],
)

# Gateway (appended)
FANOUT_LAG = Histogram(
    "ferry_gateway_fanout_lag_seconds",
    "Time from a status change's commit (its created_at) to the gateway offering it to subscribers",
    buckets=LATENCY_BUCKETS,
)
RATE_LIMITED = Counter(
    "ferry_gateway_rate_limited_total", "Requests refused by the per-client rate limit", ["transport"]
)
QUERIES_REFUSED = Counter(
    "ferry_gateway_queries_refused_total", "Operations refused before execution by a limit", ["limit"]
)
ADMIN_ACTIONS = Counter(
    "ferry_gateway_admin_actions_total", "Admin mutations by action and outcome", ["action", "outcome"]
)

# Relayer: submitter (appended)
QUEUE_DEPTH = Gauge(
    "ferry_relayer_queue_depth", "Vetted transfers waiting for their chain's submitter", ["chain"]
)
JOBS_IN_FLIGHT = Gauge("ferry_relayer_jobs_in_flight", "Relay jobs running in this worker")
TXS_IN_FLIGHT = Gauge("ferry_relayer_txs_in_flight", "Release transactions sent and not yet mined", ["chain"])
BATCH_SIZE = Histogram(
    "ferry_relayer_batch_size",
    "Transfers per releaseBatch transaction",
    ["chain"],
    buckets=(1, 2, 5, 10, 20, 30, 40, 50, 75, 100, 200, 500),
)
REPLACEMENTS = Counter(
    "ferry_relayer_replacements_total",
    "Release transactions re-sent with higher fees, by reason (overdue: replace_after; outbid: left out "
    "of a full block for better offers)",
    ["chain", "reason"],
)
STUCK_AT_FEE_CAP = Gauge(
    "ferry_relayer_stuck_at_fee_cap",
    "Unmined release transactions already priced at max_fee_per_gas",
    ["chain"],
)
GAS_SPENT = Counter("ferry_relayer_gas_spent_wei_total", "Gas paid for release transactions (wei)", ["route"])
SUBMITTER_BALANCE = Gauge(
    "ferry_relayer_submitter_balance_wei", "Gas balance of the submitting account", ["chain"]
)
SUBMITTER_LOW_BALANCE = Gauge(
    "ferry_relayer_submitter_balance_low",
    "1 when the submitting account is below min_submitter_balance",
    ["chain"],
)

# Indexer: RPC endpoint health, labelled by endpoint index in rpc_urls, never the URL (appended)
ENDPOINT_UP = Gauge(
    "ferry_rpc_endpoint_up", "1 when the endpoint is in rotation, 0 while backed off", ["chain", "endpoint"]
)
# NOTE: its own gauge: a ws:// endpoint serves requests (ENDPOINT_UP, set by indexer.endpoints)
# and the subscription, which fail apart; one gauge written by both showed whichever wrote last.
HEAD_SUBSCRIPTION_UP = Gauge(
    "ferry_rpc_head_subscription_up",
    "1 while the newHeads subscription on this WebSocket endpoint is live, else 0",
    ["chain", "endpoint"],
)
RPC_REQUESTS = Counter("ferry_rpc_requests_total", "JSON-RPC HTTP requests sent", ["chain", "endpoint"])
RPC_ERRORS = Counter(
    "ferry_rpc_errors_total",
    "Failed steps per endpoint (unavailable, garbage, rate_limited)",
    ["chain", "endpoint", "kind"],
)
RPC_LATENCY = Histogram(
    "ferry_rpc_request_seconds",
    "JSON-RPC HTTP round-trip time",
    ["chain", "endpoint"],
    buckets=LATENCY_BUCKETS,
)

# Indexer: leadership and watchdog (appended)
INDEXER_LEADER = Gauge(
    "ferry_indexer_leader", "1 while this process holds the chain's leader lock", ["chain"]
)
INDEXER_STALLED = Gauge(
    "ferry_indexer_stalled", "1 while the watchdog sees the chain stuck (no progress, head ahead)", ["chain"]
)
WATCHDOG_RESTARTS = Counter(
    "ferry_indexer_watchdog_restarts_total", "Followers restarted by the watchdog", ["chain"]
)

# Indexer: backfill and lag in time (appended)
BACKFILL_PROGRESS = Gauge(
    "ferry_indexer_backfill_progress", "Share of the current backfill committed (0 to 1)", ["chain"]
)
INDEXER_LAG_SECONDS = Gauge(
    "ferry_indexer_lag_seconds", "Seconds between now and the indexed block's timestamp", ["chain"]
)

# Transfers (business): volume, counted where the history rows are written (ferry.transitions) (appended)
TRANSFER_VOLUME = Counter(
    "ferry_transfer_volume_tokens",
    "Volume of transfers entering a status, in token units (amount / 10^decimals of the source token)",
    ["route", "status"],
)
