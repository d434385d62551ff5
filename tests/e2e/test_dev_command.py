"""The README's first command: ``ferry dev`` brings the whole stack up and releases its demo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from ferry.devchain import free_port

pytestmark = pytest.mark.e2e


def test_ferry_dev_releases_its_demo_transfers_and_cleans_up(
    services: tuple[str, str], tmp_path: Path
) -> None:
    database = f"ferry_devtest_{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "FERRY_DATABASE_URL": services[0],
        "FERRY_REDIS_URL": services[1],
        "FERRY_QUEUE_NAME": f"ferry:devtest:{database}",
        "FERRY_GRAPHQL_PORT": str(free_port()),
        "FERRY_HEALTH_PORT": str(free_port()),
        "FERRY_METRICS_PORT": str(free_port()),
    }
    try:
        result = subprocess.run(
            [sys.executable, "-m", "ferry", "dev", "--exit-after-demo", "--demo-transfers", "1",
             "--workdir", str(tmp_path), "--database", database],
            env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "all 2 demo transfers were released" in result.stdout
        assert "Ferry is running." in result.stdout
        with psycopg.connect(_database_url(services[0], database)) as conn:
            statuses = conn.execute("SELECT status FROM transfers").fetchall()
        assert sorted(s for (s,) in statuses) in (
            ["FINALIZED", "FINALIZED"],
            ["FINALIZED", "RELEASED"],
            ["RELEASED", "RELEASED"],
        )
        logs = tmp_path / "logs"
        assert {p.name for p in logs.iterdir()} == {"indexer.log", "relayer.log", "gateway.log"}
    finally:
        with psycopg.connect(_database_url(services[0], "postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _database_url(server: str, name: str) -> str:
    return urlunsplit(urlsplit(server)._replace(path=f"/{name}"))


def test_ctrl_c_stops_everything_ferry_dev_started(services: tuple[str, str], tmp_path: Path) -> None:
    database = f"ferry_devtest_{uuid.uuid4().hex[:8]}"
    ports = {name: free_port() for name in ("GRAPHQL", "HEALTH", "METRICS")}
    env = {
        **os.environ,
        "FERRY_DATABASE_URL": services[0],
        "FERRY_REDIS_URL": services[1],
        "FERRY_QUEUE_NAME": f"ferry:devtest:{database}",
        **{f"FERRY_{name}_PORT": str(port) for name, port in ports.items()},
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "ferry", "dev", "--demo-transfers", "1", "--workdir", str(tmp_path),
         "--database", database],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        else:
            raise AssertionError("".join(lines[-50:]))
        children = _children(process.pid)
        assert len(children) >= 5, children  # two anvils and three Ferry processes at least
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
        assert not [pid for pid in children if _alive(pid)], "ferry dev left processes behind"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        with psycopg.connect(_database_url(services[0], "postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
