"""Benchmark: one committed change delivered to 10,000 WebSocket subscribers of one gateway process.

Same run, same sockets, two servers:

- the gateway (``ferry gateway``, one process): every client subscribes to
  ``transferUpdated`` of one transfer over graphql-transport-ws; a writer commits
  one status change through ``ferry.transitions``; the figure is the time from
  that commit to each client's receipt (p50, p99, max) and the gateway's memory
  growth per subscriber (RSS after subscribing minus RSS before, / subscribers);
- the baseline: a bare ``websockets`` server holding the same number of sockets,
  broadcasting one pre-encoded message (``websockets.broadcast``).

Both servers run without permessage-deflate (the gateway turns it off: its
messages are small and zlib state per socket is the largest part of its memory)
and without keep-alive messages during the run (the gateway's interval is set to
an hour, as the baseline sends none).

Clients run in separate processes (``--client-processes``, default 2) so that
their work is not counted in the servers' memory. Targets: p99 <= 1 s and <= 50 KB
per subscriber.

    .venv/bin/python bench/fanout.py [--subscribers 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SUBSCRIBE = (
    "subscription($id: ID!, $after: String) { transferUpdated(id: $id, after: $after) { cursor status } }"
)
HANDSHAKES_AT_ONCE = 200

BARE_SERVER = """
import asyncio, sys, time
from websockets.asyncio.server import serve, broadcast

clients = set()
MESSAGE = '{"type":"next","id":"1","payload":{"data":{"transferUpdated":{"status":"CONFIRMED"}}}}'

async def handler(ws):
    clients.add(ws)
    try:
        await ws.wait_closed()
    finally:
        clients.discard(ws)

async def main(port):
    async with serve(handler, "127.0.0.1", port, ping_interval=None, max_queue=4, compression=None):
        print("listening", flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if line.startswith("count"):
                print(len(clients), flush=True)
            elif line.startswith("go"):
                broadcast(clients, MESSAGE)
            elif not line:
                return

asyncio.run(main(int(sys.argv[1])))
"""


# --- client processes ------------------------------------------------------------------------------


async def _one(
    url: str,
    mode: str,
    variables: dict[str, Any],
    gate: asyncio.Semaphore,
    ready: list[int],
    sockets: list[Any],
) -> float:
    import websockets

    async with gate:
        protocols = [websockets.Subprotocol("graphql-transport-ws")] if mode == "gateway" else None
        ws = await websockets.connect(url, subprotocols=protocols, ping_interval=None, open_timeout=120)
        sockets.append(ws)
        if mode == "gateway":
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            await ws.recv()
            payload = {"query": SUBSCRIBE, "variables": variables}
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
    ready[0] += 1
    while True:
        message = json.loads(await ws.recv())
        if message.get("type") == "next":
            return time.time()
        if message.get("type") == "ping":
            await ws.send('{"type":"pong"}')


async def _clients(url: str, mode: str, count: int, variables: dict[str, Any]) -> None:
    gate = asyncio.Semaphore(HANDSHAKES_AT_ONCE)
    ready = [0]
    sockets: list[Any] = []
    tasks = [asyncio.create_task(_one(url, mode, variables, gate, ready, sockets)) for _ in range(count)]
    while ready[0] < count:  # noqa: ASYNC110 (a counter shared by 10,000 tasks; polling is cheaper)
        await asyncio.sleep(0.2)
    print("ready", flush=True)
    received = await asyncio.gather(*tasks)
    print(json.dumps(received), flush=True)
    # NOTE: hang up only when told, after the server's CPU time for the fan-out has been read.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await asyncio.gather(*(ws.close() for ws in sockets))


def client_main(url: str, mode: str, count: int, variables: str) -> None:
    import uvloop

    uvloop.run(_clients(url, mode, count, json.loads(variables)))


def start_clients(
    url: str, mode: str, total: int, processes: int, variables: dict[str, Any]
) -> list[subprocess.Popen[str]]:
    share = [total // processes + (1 if i < total % processes else 0) for i in range(processes)]
    started = [
        subprocess.Popen(
            [sys.executable, __file__, "--client", url, mode, str(n), json.dumps(variables)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in share
    ]
    for process in started:
        assert process.stdout is not None
        line = process.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"a client process failed to connect: {line!r}")
    return started


def collect(clients: list[subprocess.Popen[str]], t0: float) -> list[float]:
    """Each client's receipt time - ``t0``; the clients keep their sockets open until ``hang_up``."""
    latencies: list[float] = []
    for process in clients:
        assert process.stdout is not None
        latencies += [at - t0 for at in json.loads(process.stdout.readline())]
    return latencies


def hang_up(clients: list[subprocess.Popen[str]]) -> None:
    for process in clients:
        assert process.stdin is not None
        process.stdin.write("close\n")
        process.stdin.close()
    for process in clients:
        process.wait(timeout=120)


def stop_clients(clients: list[subprocess.Popen[str]]) -> None:
    """Clients still running (a failed run): stop them, by their own process ids."""
    for process in clients:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def figures(latencies: list[float]) -> dict[str, float]:
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 1)

    return {
        "delivered": len(latencies),
        "first_ms": pct(0.0),
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (on a loaded machine, steadier than wall time)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _fanout_lag_ms(metrics_port: int) -> float | None:
    """Mean commit -> offered-to-subscribers time the gateway measured (its fan-out lag histogram)."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=60).text
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith(("ferry_gateway_fanout_lag_seconds_sum", "ferry_gateway_fanout_lag_seconds_count"))
    }
    count = values.get("ferry_gateway_fanout_lag_seconds_count", 0.0)
    return round(values["ferry_gateway_fanout_lag_seconds_sum"] / count * 1000, 1) if count else None


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# --- the two runs -------------------------------------------------------------------------------------


def _subscriptions(metrics_port: int) -> int:
    import httpx

    try:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=60).text
    except httpx.TimeoutException:  # NOTE: a loaded machine; the caller asks again
        return 0
    for line in text.splitlines():
        if line.startswith("ferry_gateway_subscriptions "):
            return int(float(line.split()[1]))
    return 0


async def _commit_change(dsn: str, tid: str) -> float:
    import asyncpg

    from ferry.domain import TransferStatus
    from ferry.transitions import Move, move_transfers

    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await move_transfers(conn, [Move(tid, TransferStatus.CONFIRMED)])
        return time.time()
    finally:
        await conn.close()


def gateway_run(dsn: str, workdir: Path, subscribers: int, processes: int) -> dict[str, Any]:
    import asyncpg
    from gateway_queries import BRIDGE, CHAINS_YAML, free_port, wait_until_up

    tid = f"31337:{BRIDGE}:1"
    chains = workdir / "chains.yaml"
    chains.write_text(CHAINS_YAML)
    port, health, metrics_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "FERRY_DATABASE_URL": dsn,
        "FERRY_CHAINS_FILE": str(chains),
        "FERRY_GRAPHQL_PORT": str(port),
        "FERRY_HEALTH_PORT": str(health),
        "FERRY_METRICS_PORT": str(metrics_port),
        "FERRY_GATEWAY_RATE_LIMIT": "1000000",
        # NOTE: the baseline sends no keep-alives; neither does the gateway during the run.
        "FERRY_GATEWAY_KEEPALIVE_INTERVAL": "3600",
        "FERRY_LOG_LEVEL": "WARNING",
    }
    server = subprocess.Popen([sys.executable, "-m", "ferry", "gateway"], env=env, cwd=ROOT)
    clients: list[subprocess.Popen[str]] = []
    try:
        wait_until_up(f"http://127.0.0.1:{health}/ready", server)
        time.sleep(1)
        before = rss_kb(server.pid)
        cursor = asyncio.run(_latest(dsn, asyncpg))
        clients = start_clients(
            f"ws://127.0.0.1:{port}/graphql",
            "gateway",
            subscribers,
            processes,
            {"id": tid, "after": str(cursor)},
        )
        deadline = time.monotonic() + 600
        while _subscriptions(metrics_port) < subscribers:
            if time.monotonic() > deadline:
                raise RuntimeError("subscriptions did not all register within 600 s")
            time.sleep(0.2)
        after = rss_kb(server.pid)
        cpu = cpu_seconds(server.pid)
        t0 = asyncio.run(_commit_change(dsn, tid))
        latencies = collect(clients, t0)
        cpu = cpu_seconds(server.pid) - cpu
        hang_up(clients)
        return {
            **figures(latencies),
            "server_cpu_s_for_the_fanout": round(cpu, 2),
            "commit_to_fanout_ms": _fanout_lag_ms(metrics_port),
            "rss_growth_kb_per_subscriber": round((after - before) / subscribers, 1),
        }
    finally:
        stop_clients(clients)
        server.terminate()
        server.wait(timeout=60)


async def _latest(dsn: str, asyncpg: Any) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        value: int = await conn.fetchval("SELECT coalesce(max(id), 0) FROM transfer_status_history")
        return value
    finally:
        await conn.close()


def bare_run(workdir: Path, subscribers: int, processes: int) -> dict[str, Any]:
    from gateway_queries import free_port

    port = free_port()
    (workdir / "bare_ws.py").write_text(BARE_SERVER)
    server = subprocess.Popen(
        [sys.executable, str(workdir / "bare_ws.py"), str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None
    assert server.stdout is not None
    clients: list[subprocess.Popen[str]] = []
    try:
        assert server.stdout.readline().strip() == "listening"
        time.sleep(0.5)
        before = rss_kb(server.pid)
        clients = start_clients(f"ws://127.0.0.1:{port}", "bare", subscribers, processes, {})
        while True:
            server.stdin.write("count\n")
            server.stdin.flush()
            if int(server.stdout.readline()) >= subscribers:
                break
            time.sleep(0.2)
        after = rss_kb(server.pid)
        cpu = cpu_seconds(server.pid)
        t0 = time.time()
        server.stdin.write("go\n")
        server.stdin.flush()
        latencies = collect(clients, t0)
        cpu = cpu_seconds(server.pid) - cpu
        hang_up(clients)
        return {
            **figures(latencies),
            "server_cpu_s_for_the_fanout": round(cpu, 2),
            "rss_growth_kb_per_subscriber": round((after - before) / subscribers, 1),
        }
    finally:
        stop_clients(clients)
        server.stdin.close()
        server.terminate()
        server.wait(timeout=30)


def run(subscribers: int, processes: int) -> dict[str, Any]:
    import tempfile
    from urllib.parse import urlsplit

    import psycopg
    from gateway_queries import fresh_database

    from ferry.services import ensure_postgres

    workdir = Path(tempfile.mkdtemp(prefix="ferry-fanout-"))
    postgres = ensure_postgres(
        os.environ.get("FERRY_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        workdir / "postgres",
    )
    dsn = fresh_database(postgres.url, 1)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE transfers SET status = 'PENDING'")
        baseline = bare_run(workdir, subscribers, processes)
        gateway = gateway_run(dsn, workdir, subscribers, processes)
    finally:
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{urlsplit(dsn).path[1:]}" WITH (FORCE)')
        postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "benchmark": "fanout",
        "subscribers": subscribers,
        "client_processes": processes,
        "cpus": os.cpu_count(),
        "gateway": gateway,
        "baseline_bare_websockets_broadcast": baseline,
        "target_p99_ms": 1000,
        "target_kb_per_subscriber": 50,
        "meets_targets": gateway["delivered"] == subscribers
        and gateway["p99_ms"] <= 1000
        and gateway["rss_growth_kb_per_subscriber"] <= 50,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--client-processes", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(run(args.subscribers, args.client_processes), indent=2))


if __name__ == "__main__":
    main()
