"""``ferry dev``: the whole bridge on two local chains, with demo transfers.

Starts (or reuses) PostgreSQL and Redis, recreates the ``ferry_dev`` database (or
the one ``--database`` names) and
migrates it, starts anvil chains 31337 and 31338 with token and bridge deployed and
funded, runs indexer, relayer and gateway as separate processes, sends demo
transfers both ways and prints where to look. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg

from ferry.deploy import lock_tokens
from ferry.devchain import free_port
from ferry.devstack import ONE, DevNetwork, ProcessGroup, StackNotReady, start_dev_network
from ferry.migrate import upgrade
from ferry.services import Embedded, ensure_postgres, ensure_redis
from ferry.settings import Settings, load_settings

FINAL = {"RELEASED", "FINALIZED", "FAILED", "HELD"}
DELIVERED = {"RELEASED", "FINALIZED"}


def _say(text: str) -> None:
    print(f"ferry dev: {text}", flush=True)


def _port_or_free(port: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def _fresh_database(server_url: str, name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise SystemExit(f"ferry dev: --database must be letters, digits and underscores, got {name!r}")
    parts = urlsplit(server_url)
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(parts._replace(path=f"/{name}"))


def _stop_on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_dev(args: argparse.Namespace) -> int:
    settings = load_settings()
    workdir = Path(args.workdir).resolve()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    started: list[Embedded] = []
    network: DevNetwork | None = None
    group: ProcessGroup | None = None
    try:
        # NOTE: probe the server through its maintenance database: the configured
        # database may not exist yet, and ``ferry dev`` makes its own anyway.
        server = urlsplit(settings.database_url.get_secret_value())._replace(path="/postgres")
        postgres = ensure_postgres(urlunsplit(server), workdir / "postgres")
        redis = ensure_redis(settings.redis_url.get_secret_value(), workdir / "redis")
        started += [postgres, redis]
        database_url = _fresh_database(postgres.url, args.database)
        upgrade(database_url)
        _say("database migrated; starting chains 31337 and 31338")
        network = start_dev_network(
            workdir / "chains", ports=[_port_or_free(8545), _port_or_free(8546)], block_time=1
        )
        group = _start_processes(settings, network, database_url, redis.url, workdir / "logs")
        graphql = f"http://{settings.graphql_host}:{settings.graphql_port}/graphql"
        try:
            group.wait_ready(f"http://{settings.graphql_host}:{settings.health_port}/ready")
        except StackNotReady as exc:
            raise SystemExit(f"ferry dev: {exc}") from None
        ids = _send_demo_transfers(network, args.demo_transfers)
        _print_welcome(graphql, network, ids, workdir / "logs")
        if args.exit_after_demo:
            return _wait_for_demo(graphql, ids, group)
        while not group.failed():
            time.sleep(0.5)
        _say(f"a process stopped unexpectedly: {group.failed()}; see {workdir / 'logs'}")
        return 1
    except KeyboardInterrupt:
        _say("stopping")
        return 0
    finally:
        if group is not None:
            group.stop()
        if network is not None:
            network.stop()
        for service in reversed(started):
            service.stop()


def _start_processes(
    settings: Settings, network: DevNetwork, database_url: str, redis_url: str, logdir: Path
) -> ProcessGroup:
    env = {
        **network.env(),
        "FERRY_DATABASE_URL": database_url,
        "FERRY_REDIS_URL": redis_url,
        "FERRY_LOG_FORMAT": "text",
        "FERRY_SWEEP_INTERVAL": "2",
    }
    group = ProcessGroup(env, logdir)
    group.start("indexer", "indexer", {"FERRY_METRICS_PORT": str(_port_or_free(9091))})
    group.start("relayer", "relayer", {"FERRY_METRICS_PORT": str(_port_or_free(9092))})
    # NOTE: the gateway reads and writes as migration 0005's roles (the login user here is the
    # server's superuser), as a deployment should: even a bug cannot write chain data
    gateway_env = {"FERRY_METRICS_PORT": str(settings.metrics_port), "FERRY_GATEWAY_DATABASE_ROLES": "true"}
    group.start("gateway", "gateway", gateway_env)
    return group


def _send_demo_transfers(network: DevNetwork, per_direction: int) -> list[str]:
    ids: list[str] = []
    for source in network.chains:
        for target in network.chains:
            if source is target:
                continue
            for index in range(per_direction):
                amount = (index + 1) * ONE
                receipt = lock_tokens(
                    source.w3, network.user_key, source.token, source.bridge, amount,
                    network.recipient_address, target.chain_id,
                )  # fmt: skip
                ids.append(f"{source.chain_id}:{source.bridge.lower()}:{receipt.nonce}")
                _say(f"locked {index + 1} FTT on {source.chain_id} for {target.chain_id} ({ids[-1]})")
    return ids


def _print_welcome(graphql: str, network: DevNetwork, ids: list[str], logdir: Path) -> None:
    example = ids[0] if ids else "31337:0x…:1"
    chains = ", ".join(f"{c.chain_id} at {c.url}" for c in network.chains)
    print(
        f"""
Ferry is running.
  GraphQL (HTTP + WebSocket): {graphql}   (GraphiQL in a browser)
  chains: {chains}
  logs: {logdir}

Try:
  curl -s {graphql} -H 'content-type: application/json' \\
    -d '{{"query": "{{ transfer(id: \\"{example}\\") {{ status amount releaseTxHash }} }}"}}'

  query {{ transfers(first: 10) {{ edges {{ node {{ id status amount sender recipient }} }} }} }}
  subscription {{ transferUpdated(id: "{example}") {{ status previousStatus txHash at }} }}

Ctrl-C stops everything.
""",
        flush=True,
    )


def _wait_for_demo(graphql: str, ids: list[str], group: ProcessGroup, timeout: float = 180.0) -> int:
    query = "query($id: ID!) { transfer(id: $id) { status } }"
    deadline = time.monotonic() + timeout
    pending = set(ids)
    outcome: dict[str, str] = {}
    while pending and time.monotonic() < deadline and not group.failed():
        for transfer_id in sorted(pending):
            with contextlib.suppress(httpx.HTTPError, ValueError, TypeError):
                body = httpx.post(graphql, json={"query": query, "variables": {"id": transfer_id}}, timeout=5)
                status = (body.json()["data"]["transfer"] or {}).get("status")
                if status in FINAL:
                    _say(f"{transfer_id}: {status}")
                    outcome[transfer_id] = status
                    pending.discard(transfer_id)
        time.sleep(0.5)
    if pending:
        _say(f"not released in time: {json.dumps(sorted(pending))}")
        return 1
    undelivered = {k: v for k, v in outcome.items() if v not in DELIVERED}
    if undelivered:
        _say(f"demo transfers not delivered: {json.dumps(undelivered)}")
        return 1
    _say(f"all {len(ids)} demo transfers were released")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(
        run_dev(
            argparse.Namespace(
                workdir=".ferry", demo_transfers=3, exit_after_demo=False, database="ferry_dev"
            )
        )
    )
