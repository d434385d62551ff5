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
