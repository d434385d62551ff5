"""Observability helpers on real services: log context, event-loop lag, zero series, analytics.

- ``logs.bind`` puts fields on every line logged inside it, in both formats, and
  never on a concurrent task's lines.
- ``with_event_loop_watch`` records a blocked event loop as lag.
- ``observability.prepare`` makes the series a process counts into exist at 0.
- The analytics migrations are safe on a cluster where the analyst role already
  exists (tests and deployments create many databases), and reversible (0007,
  token decimals, down to 0006's views and back).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from alembic import command
from prometheus_client import REGISTRY

from ferry import logs, observability
from ferry.devstack import DevNetwork
from ferry.migrate import alembic_config, upgrade


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """A JSON and a text handler on a private logger."""
    json_out, text_out = io.StringIO(), io.StringIO()
    logger = logging.getLogger("ferry.test.observability")
    handlers = []
    for stream, formatter in (
        (json_out, logs.JsonFormatter("relayer")),
        (text_out, logs.TextFormatter("relayer")),
    ):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        logger.addHandler(handler)
        handlers.append(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield json_out, text_out
    for handler in handlers:
        logger.removeHandler(handler)


def _json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_bound_fields_reach_every_line_in_both_formats(captured: tuple[io.StringIO, io.StringIO]) -> None:
    json_out, text_out = captured
    log = logging.getLogger("ferry.test.observability")
    with logs.bind(transfer_id="31337:0xabc:1"):
        log.info("signed")
        with logs.bind(request_id="r-1"):
            log.info("sent", extra={"chain_id": 31338})
        log.info("mined", extra={"transfer_id": "explicit wins"})
    log.info("outside")
    lines = _json_lines(json_out)
    assert [line.get("transfer_id") for line in lines] == [
        "31337:0xabc:1",
        "31337:0xabc:1",
        "explicit wins",
        None,
    ]
    assert lines[1]["request_id"] == "r-1"
    assert lines[1]["chain_id"] == 31338
    assert "request_id" not in lines[2]
    text = text_out.getvalue().splitlines()
    assert "transfer_id=31337:0xabc:1" in text[0]
    assert "transfer_id" not in text[3]


async def test_bound_fields_stay_in_their_own_task(captured: tuple[io.StringIO, io.StringIO]) -> None:
    json_out, _ = captured
    log = logging.getLogger("ferry.test.observability")

    async def job(transfer: str) -> None:
        with logs.bind(transfer_id=transfer):
            for step in range(3):
                log.info("step %d of %s", step, transfer)
                await asyncio.sleep(0)

    await asyncio.gather(*(job(f"t{n}") for n in range(5)))
    lines = _json_lines(json_out)
    assert len(lines) == 15
    for line in lines:
        assert str(line["msg"]).endswith(f"of {line['transfer_id']}")


def _lag_sum() -> float:
    return REGISTRY.get_sample_value("ferry_event_loop_lag_seconds_sum") or 0.0


def _lag_count() -> float:
    return REGISTRY.get_sample_value("ferry_event_loop_lag_seconds_count") or 0.0


async def test_a_blocked_event_loop_shows_as_lag() -> None:
    before_sum, before_count = _lag_sum(), _lag_count()

    async def main() -> str:
        await asyncio.sleep(0.3)
        time.sleep(0.6)  # noqa: ASYNC251 -- blocking the loop on purpose: the defect the metric exposes
        await asyncio.sleep(0.6)
        return "done"

    assert await observability.with_event_loop_watch(main()) == "done"
    assert _lag_count() - before_count >= 2
    # NOTE: a lower bound only: the loop was blocked 0.6 s, a watcher sleeping 0.25 s woke
    # at least 0.35 s late; a loaded machine can only add to that.
    assert _lag_sum() - before_sum >= 0.3
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "observability:event-loop-lag"]


def test_prepare_creates_zero_series_for_every_chain_and_route(dev_chains: DevNetwork) -> None:
    config = dev_chains.config
    observability.prepare("indexer", config)
    observability.prepare("relayer", config)
    for chain in config.chains:
        for kind in ("rpc", "database", "reorg", "unexpected"):
            labels = {"chain": chain.name, "kind": kind}
            assert REGISTRY.get_sample_value("ferry_indexer_errors_total", labels) is not None
        assert REGISTRY.get_sample_value("ferry_indexer_deep_reorgs_total", {"chain": chain.name}) is not None
        # NOTE: the relayer labels by chain name too, like the indexer (one `chain` label everywhere).
        labels = {"chain": chain.name, "outcome": "mined"}
        assert REGISTRY.get_sample_value("ferry_relayer_releases_total", labels) is not None
        for reason in ("overdue", "outbid"):
            labels = {"chain": chain.name, "reason": reason}
            assert REGISTRY.get_sample_value("ferry_relayer_replacements_total", labels) is not None
    for route in config.routes:
        for status in ("PENDING", "CONFIRMED", "SUBMITTED", "RELEASED", "HELD", "FAILED"):
            labels = {"route": route.route_id, "status": status}
            assert REGISTRY.get_sample_value("ferry_transfer_transitions_total", labels) is not None
            assert REGISTRY.get_sample_value("ferry_transfer_volume_tokens_total", labels) is not None
        count = REGISTRY.get_sample_value("ferry_lock_to_release_seconds_count", {"route": route.route_id})
        assert count is not None


@pytest.fixture
def second_database(services: tuple[str, str]) -> Iterator[str]:
    admin_url = services[0]
    name = f"ferry_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _analytics_views(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.views WHERE table_schema = 'analytics'"
        )
        return {r[0] for r in rows}


def _columns(url: str, view: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = 'analytics' AND table_name = %s ORDER BY ordinal_position",
            (view,),
        )
        return [r[0] for r in rows]


def test_analytics_migration_reuses_the_role_and_reverses(database_url: str, second_database: str) -> None:
    upgrade(second_database)  # the role already exists: database_url's migration made it
    views_0006 = {"transfers", "daily_volume", "status_history", "routes", "chains"}
    assert _analytics_views(second_database) == views_0006 | {"tokens"}
    with psycopg.connect(second_database) as conn:
        conn.execute("SET ROLE ferry_analyst")
        assert conn.execute("SELECT count(*) FROM analytics.transfers").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM analytics.tokens").fetchone() == (0,)
    transfer_columns = _columns(second_database, "transfers")
    assert transfer_columns[-1] == "decimals"
    # 0007 down: the views as 0006 made them (no decimals column), still readable by the analyst.
    command.downgrade(alembic_config(second_database), "0006")
    assert _analytics_views(second_database) == views_0006
    assert _columns(second_database, "transfers") == transfer_columns[:-1]
    with psycopg.connect(second_database) as conn:
        conn.execute("SET ROLE ferry_analyst")
        assert conn.execute("SELECT count(*) FROM analytics.transfers").fetchone() == (0,)
    upgrade(second_database)
    assert _columns(second_database, "transfers") == transfer_columns
    command.downgrade(alembic_config(second_database), "0005")
    assert _analytics_views(second_database) == set()
    upgrade(second_database)
    assert "daily_volume" in _analytics_views(second_database)
    assert "transfers" in _analytics_views(database_url)
