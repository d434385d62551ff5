"""Observability against a real run of the stack: dashboards' SQL, the analyst role, Prometheus, logs.

One module-scoped stack (two anvil chains mining a block a second; indexer, relayer
and gateway as subprocesses; a real Prometheus scraping their ``/metrics`` on
loopback) carries transfers in several states: released both ways through the
real processes, one HELD by the relayer because it targets a chain no route
serves, and one of those moved on to FAILED through ``ferry.transitions`` (what
an operator's rejection does).

Then every PostgreSQL panel of the shipped dashboards runs as the analyst role,
with Grafana's macros expanded as Grafana would, and must return rows with the
columns its panel expects; the analyst must be unable to read anything outside
the analytics views or to write anything; every metric named by a dashboard or
alert expression must have a series in Prometheus; and one transfer's JSON log
lines must carry its id in both the indexer and the relayer.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import psycopg
import pytest
import yaml

from ferry.deploy import lock_tokens
from ferry.devchain import free_port
from ferry.devstack import ONE, DevNetwork, ProcessGroup, start_dev_network
from ferry.domain import TransferStatus
from ferry.migrate import upgrade
from ferry.transitions import Move, move_transfers
from grafana.queries import Query, expand_promql, expand_sql, metric_names, promql_expressions, sql_panels
from tests.support.graphql import query

pytestmark = pytest.mark.e2e

UNROUTED_CHAIN = 99_999
SETTLED = {"RELEASED", "FINALIZED"}
ANALYST = "ferry_analyst"


@dataclass
class Observed:
    network: DevNetwork
    database_url: str
    logdir: Path
    prometheus: str
    released: list[str]
    held: str
    failed: str


@pytest.fixture(scope="module")
def database_url(services: tuple[str, str]) -> Iterator[str]:
    """A database of this module's own: its chains' cursors must not meet other tests' chains."""
    admin_url = services[0]
    name = f"ferry_observability_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    upgrade(url)
    yield url
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory, database_url: str, redis_url: str
) -> Iterator[Observed]:
    workdir = tmp_path_factory.mktemp("observability")
    logdir = workdir / "logs"
    network = start_dev_network(workdir / "chains", block_time=1)
    ports = {name: free_port() for name in ("graphql", "health", "indexer", "relayer", "gateway")}
    # NOTE: the first chain also has its WebSocket endpoint (anvil serves one on the same port),
    # so the indexer subscribes to new heads there and the dashboards' subscription series exist.
    document = yaml.safe_load(network.chains_file.read_text())
    first = document["chains"][0]
    first["rpc_urls"].append(first["rpc_urls"][0].replace("http://", "ws://", 1))
    chains_file = workdir / "chains-with-ws.yaml"
    chains_file.write_text(yaml.safe_dump(document, sort_keys=False))
    env = {
        **network.env(),
        "FERRY_CHAINS_FILE": str(chains_file),
        "FERRY_DATABASE_URL": database_url,
        "FERRY_REDIS_URL": redis_url,
        "FERRY_QUEUE_NAME": f"ferry:observability:{ports['graphql']}",
        "FERRY_GRAPHQL_PORT": str(ports["graphql"]),
        "FERRY_HEALTH_PORT": str(ports["health"]),
        "FERRY_SWEEP_INTERVAL": "2",
        "FERRY_LOG_FORMAT": "json",
    }
    group = ProcessGroup(env, logdir)
    prometheus: subprocess.Popen[bytes] | None = None
    try:
        for name in ("indexer", "relayer", "gateway"):
            group.start(name, name, {"FERRY_METRICS_PORT": str(ports[name])})
        prometheus, prometheus_url = _start_prometheus(workdir, ports)
        group.wait_ready(f"http://127.0.0.1:{ports['health']}/ready", timeout=90)
        graphql = f"http://127.0.0.1:{ports['graphql']}/graphql"
        released, held, failed = asyncio.run(_make_transfers(network, database_url, graphql, group, logdir))
        yield Observed(network, database_url, logdir, prometheus_url, released, held, failed)
    finally:
        if prometheus is not None:
            _stop(prometheus)
        group.stop()
        network.stop()


def _start_prometheus(workdir: Path, ports: dict[str, int]) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("prometheus")
    assert binary, "Prometheus is not installed: run scripts/ensure-tools.sh (Debian package prometheus)"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": f"ferry-{name}", "static_configs": [{"targets": [f"127.0.0.1:{ports[name]}"]}]}
            for name in ("indexer", "relayer", "gateway")
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    return process, f"http://127.0.0.1:{port}"


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def _make_transfers(
    network: DevNetwork, database_url: str, graphql: str, group: ProcessGroup, logdir: Path
) -> tuple[list[str], str, str]:
    a, b = network.chain(31337), network.chain(31338)
    locks = [(a, b.chain_id, 3), (a, b.chain_id, 250), (b, a.chain_id, 40), (a, UNROUTED_CHAIN, 5)]
    locks.append((b, UNROUTED_CHAIN, 7))
    ids = []
    for source, target_chain_id, tokens in locks:
        receipt = await asyncio.to_thread(
            lock_tokens, source.w3, network.user_key, source.token, source.bridge,
            tokens * ONE + 1, network.recipient_address, target_chain_id,
        )  # fmt: skip
        ids.append(await _transfer_of(database_url, receipt.tx_hash))
    routed, unrouted = ids[:3], ids[3:]
    await _wait_statuses(
        database_url, {i: SETTLED for i in routed} | {i: {"HELD"} for i in unrouted}, group, logdir
    )
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            rejected = Move(unrouted[1], TransferStatus.FAILED, reason="rejected by operator")
            assert await move_transfers(conn, [rejected])
    finally:
        await conn.close()
    body = await query(graphql, "query($id: ID!) { transfer(id: $id) { id status } }", {"id": routed[0]})
    assert body["data"]["transfer"]["status"] in SETTLED, body
    return routed, unrouted[0], unrouted[1]


async def _transfer_of(database_url: str, lock_tx_hash: str) -> str:
    """The id the indexer gave the lock in ``lock_tx_hash`` (waits for the indexer)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with psycopg.connect(database_url) as conn:
            row = conn.execute("SELECT id FROM transfers WHERE lock_tx_hash = %s", (lock_tx_hash,)).fetchone()
        if row is not None:
            return str(row[0])
        await asyncio.sleep(0.5)
    raise AssertionError(f"the indexer never recorded the lock {lock_tx_hash}")


async def _wait_statuses(
    database_url: str, wanted: dict[str, set[str]], group: ProcessGroup, logdir: Path
) -> None:
    deadline = time.monotonic() + 150
    statuses: dict[str, str] = {}
    while time.monotonic() < deadline:
        assert not group.failed(), f"{group.failed()} exited; logs in {logdir}"
        with psycopg.connect(database_url) as conn:
            rows = conn.execute("SELECT id, status FROM transfers WHERE id = ANY(%s)", (list(wanted),))
            statuses = {r[0]: r[1] for r in rows}
        if all(statuses.get(i) in allowed for i, allowed in wanted.items()):
            return
        await asyncio.sleep(1)
    raise AssertionError(f"transfers never reached {wanted}: {statuses}; logs in {logdir}")


def _analyst(database_url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(database_url, autocommit=True)
    conn.execute(f"SET ROLE {ANALYST}")
    return conn


def _variables(conn: psycopg.Connection[Any]) -> dict[str, str | list[str]]:
    """Multi-value variables at All (Grafana sends every option, quoted); the transfer
    text box holds the id of the FAILED transfer."""
    routes = [r[0] for r in conn.execute("SELECT route_id FROM analytics.routes")]
    chains = [r[0] for r in conn.execute("SELECT name FROM analytics.chains")]
    failed = conn.execute("SELECT id FROM analytics.transfers WHERE status = 'FAILED' LIMIT 1").fetchone()
    assert failed is not None
    # NOTE: transfers of unrouted chains have no route row; All in Grafana covers the listed routes.
    routes += [r[0] for r in conn.execute("SELECT DISTINCT route_id FROM analytics.transfers")]
    return {"route": sorted(set(routes)), "chain": chains, "transfer": str(failed[0])}


#: Columns each PostgreSQL panel must return (by panel title), in order.
EXPECTED_COLUMNS = {
    "Routes (paused first)": ["route_id", "paused", "updated_at"],
    "Daily volume per route and token": ["time", "metric", "value"],
    "Volume by route (tokens per hour, PostgreSQL)": ["time", "metric", "value"],
    "Top senders": ["sender", "transfers", "volume"],
    "Top recipients": ["recipient", "transfers", "volume"],
    "Transfer size distribution (tokens)": ["amount"],
    "Time to release (seconds)": ["seconds_to_release"],
    "Failures and holds by reason": ["reason", "transfers"],
    "Transfers by status": ["status", "transfers", "volume"],
    "Recent transfers": [
        "locked_at", "id", "status", "route_id", "sender", "recipient", "amount_tokens",
        "seconds_to_release", "lock_tx_hash", "release_tx_hash", "failure_reason",
    ],
    "Transfer": [
        "id", "status", "route_id", "sender", "recipient", "amount", "amount_tokens", "locked_at",
        "released_at", "lock_tx_hash", "release_tx_hash", "attempts", "failure_reason",
    ],
    "Status history": ["at", "from_status", "to_status", "reason", "tx_hash", "block_number"],
    "variable route": ["route_id"],
    "variable chain": ["name"],
}  # fmt: skip


def _panel(query: Query) -> str:
    return query.where.split(": ", 1)[1]


def test_every_postgres_panel_returns_rows_of_its_columns_as_the_analyst(observed: Observed) -> None:
    queries = sql_panels()
    assert {_panel(q) for q in queries} == set(EXPECTED_COLUMNS), "a panel without expected columns"
    end = datetime.now(UTC) + timedelta(minutes=1)
    with _analyst(observed.database_url) as conn:
        variables = _variables(conn)
        for panel in queries:
            sql = expand_sql(panel.text, end - timedelta(days=1), end, variables)
            cursor = conn.execute(sql)  # type: ignore[call-overload]
            rows = cursor.fetchall()
            columns = [c.name for c in cursor.description or []]
            assert columns == EXPECTED_COLUMNS[_panel(panel)], panel.where
            assert rows, f"{panel.where} returned no rows:\n{sql}"


def test_analytics_views_tell_the_story_of_the_run(observed: Observed) -> None:
    with _analyst(observed.database_url) as conn:
        rows = conn.execute(
            "SELECT id, status, seconds_to_release, failure_reason FROM analytics.transfers"
            " WHERE id = ANY(%s)",
            ([*observed.released, observed.held, observed.failed],),
        ).fetchall()
        by_id = {r[0]: r[1:] for r in rows}
        for transfer in observed.released:
            status, seconds, reason = by_id[transfer]
            assert status in SETTLED
            assert seconds is not None
            assert seconds >= 0
            assert reason is None
        assert by_id[observed.held][0] == "HELD"
        assert by_id[observed.held][2]
        assert by_id[observed.failed][0] == "FAILED"
        # NOTE: locks were N tokens + 1 base unit; amounts use the token's decimals, exactly.
        amount, decimals = conn.execute(
            "SELECT amount_tokens, decimals FROM analytics.transfers WHERE id = %s", (observed.released[0],)
        ).fetchone() or (None, None)
        assert (amount, decimals) == (Decimal("3.000000000000000001"), 18)
        history = conn.execute(
            "SELECT to_status FROM analytics.status_history WHERE transfer_id = %s ORDER BY id",
            (observed.released[0],),
        ).fetchall()
        assert [h[0] for h in history][:4] == ["PENDING", "CONFIRMED", "SUBMITTED", "RELEASED"]
        routes = conn.execute(
            "SELECT route_id, sum(transfers) FROM analytics.daily_volume GROUP BY 1"
        ).fetchall()
        assert {"FTT:31337-31338", "FTT:31338-31337"} <= {r[0] for r in routes}


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM public.transfers",
        "SELECT raw_tx FROM public.relay_txs",
        "SELECT * FROM public.operator_requests",
        "SELECT * FROM public.tokens",
        "SELECT * FROM public.transfer_status_history",
        "SELECT * FROM public.alembic_version",
        # NOTE: analytics.routes is an automatically updatable view: only privileges stop these.
        "UPDATE analytics.routes SET paused = true",
        "DELETE FROM analytics.routes",
        "INSERT INTO public.routes (route_id, token, source_chain_id, target_chain_id)"
        " VALUES ('x', 'x', 1, 2)",
        "CREATE TABLE analytics.mine (x int)",
        "CREATE TABLE public.mine (x int)",
        "CREATE VIEW analytics.mine AS SELECT 1",
        "DROP VIEW analytics.transfers",
        "CREATE SCHEMA mine",
        "CREATE ROLE mine",
        "TRUNCATE public.transfers",
    ],
)
def test_analyst_cannot_read_secrets_or_write(observed: Observed, statement: str) -> None:
    with _analyst(observed.database_url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)  # type: ignore[call-overload]


def test_analyst_sees_only_the_analytics_schema(observed: Observed) -> None:
    with _analyst(observed.database_url) as conn:
        readable = conn.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
            " AND has_table_privilege(quote_ident(table_schema) || '.' || quote_ident(table_name), 'SELECT')"
        ).fetchall()
        assert readable
        assert all(r[0].startswith("analytics.") for r in readable), readable
        columns = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'analytics'"
            )
        }
        assert not columns & {"raw_tx", "last_error", "actor", "origin", "key_hash"}
        writable = conn.execute(
            "SELECT n.nspname || '.' || c.relname FROM pg_class AS c"
            " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
            # NOTE: pg_catalog.pg_settings is "updatable" by everyone: it is how SET works.
            " WHERE c.relkind IN ('r', 'v', 'm', 'p', 'S') AND n.nspname <> 'pg_catalog'"
            " AND (has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')"
            " OR (c.relkind = 'S' AND has_sequence_privilege(c.oid, 'UPDATE')))"
        ).fetchall()
        assert writable == []
        creatable = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE has_schema_privilege(oid, 'CREATE')"
            " AND nspname NOT LIKE 'pg_temp%' AND nspname NOT LIKE 'pg_toast_temp%'"
        ).fetchall()
        assert creatable == []


def _series(prometheus: str, metric: str) -> int:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": f'count({{__name__="{metric}"}})'})
    response.raise_for_status()
    result = response.json()["data"]["result"]
    return int(result[0]["value"][1]) if result else 0


def test_every_metric_of_dashboards_and_alerts_has_series_in_prometheus(observed: Observed) -> None:
    needed: dict[str, list[str]] = {}
    for expression in promql_expressions():
        for metric in metric_names(expand_promql(expression.text)):
            needed.setdefault(metric, []).append(expression.where)
    assert "ferry_transfer_transitions_total" in needed
    assert "up" in needed
    deadline = time.monotonic() + 60
    missing = sorted(needed)
    while missing and time.monotonic() < deadline:
        missing = [m for m in missing if _series(observed.prometheus, m) == 0]
        time.sleep(1)
    assert not missing, {m: needed[m] for m in missing}
    up = httpx.get(f"{observed.prometheus}/api/v1/query", params={"query": 'up{job=~"ferry-.*"} == 1'})
    assert len(up.json()["data"]["result"]) == 3, up.text


def _instant(prometheus: str, expr: str) -> dict[str, float]:
    """An instant query's result as {first label value (or ""): value}."""
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr})
    response.raise_for_status()
    return {
        next(iter(r["metric"].values()), ""): float(r["value"][1]) for r in response.json()["data"]["result"]
    }


def test_volume_by_route_and_status_reaches_prometheus_in_token_units(observed: Observed) -> None:
    # Released by the real processes: 3 + 250 tokens one way, 40 the other; the two locks to a
    # chain no route serves (5 and 7 tokens) were HELD under the bounded route label "unrouted".
    wanted = {
        'sum by (route) (ferry_transfer_volume_tokens_total{status="RELEASED"})': {
            "FTT:31337-31338": 253.0,
            "FTT:31338-31337": 40.0,
        },
        'sum by (route) (ferry_transfer_volume_tokens_total{status="HELD"})': {"unrouted": 12.0},
    }
    deadline = time.monotonic() + 30
    seen: dict[str, dict[str, float]] = {}
    while time.monotonic() < deadline:
        seen = {expr: _instant(observed.prometheus, expr) for expr in wanted}
        if all(
            {k: v for k, v in seen[expr].items() if v} == pytest.approx(values)
            for expr, values in wanted.items()
        ):
            return
        time.sleep(1)
    raise AssertionError(f"volume in Prometheus {seen}, wanted {wanted}")


def test_every_chain_label_is_a_chain_name(observed: Observed) -> None:
    names = {chain.name for chain in observed.network.config.chains}
    labels = _instant(observed.prometheus, 'count by (chain) ({__name__=~"ferry_.+", chain!=""})')
    assert set(labels) == names
    # The relayer's chain metrics among them (they used to carry the chain id).
    relayer = _instant(observed.prometheus, 'count by (chain) ({__name__=~"ferry_relayer_.+", chain!=""})')
    assert set(relayer) == names


def _log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for text in path.read_text().splitlines():
        if text.startswith("{"):
            lines.append(json.loads(text))
    return lines


def _lines_about(transfer: str, lines: list[dict[str, Any]]) -> list[str]:
    return [str(line["msg"]) for line in lines if line.get("transfer_id") == transfer]


def test_one_transfer_can_be_followed_across_processes_in_json_logs(observed: Observed) -> None:
    by_process = {
        name: _log_lines(observed.logdir / f"{name}.log") for name in ("indexer", "relayer", "gateway")
    }
    for name, lines in by_process.items():
        assert lines, f"{name} wrote no JSON log lines"
        assert all({"ts", "level", "process", "msg"} <= line.keys() for line in lines), name
        assert {line["process"] for line in lines} == {name}
    # The held transfer: seen by the indexer (no route to its target), held by the relayer.
    assert _lines_about(observed.held, by_process["indexer"]), f"logs in {observed.logdir}"
    assert _lines_about(observed.held, by_process["relayer"]), f"logs in {observed.logdir}"
    # A released one: its whole source-side life is in the indexer's lines under its id.
    moves = _lines_about(observed.released[0], by_process["indexer"])
    assert any("PENDING" in m for m in moves)
    assert any("CONFIRMED" in m for m in moves)
