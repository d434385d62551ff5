"""Generated GraphQL operations (schemathesis, from schema.graphql) never make the gateway fail.

Two runs, 1,100 generated operations in all: in process (Starlette's test client around the
app, with an admin JWT so admin paths run too) and against a real ``ferry gateway``
process over loopback HTTP. Every answer must be a client or GraphQL-level answer:
no 5xx, and no masked internal error (which would mean an unexpected exception).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from ferry.devchain import free_port
from gateway.app import create_app
from gateway.errors import MASKED_MESSAGE
from tests.integration.test_gateway import settings_for
from tests.integration.test_gateway_queries import CHAINS_YAML

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = schemathesis.graphql.from_path(str(ROOT / "schema.graphql"))
CASES = SCHEMA.as_strategy()
SECRET = "schemathesis-only-secret-0123456789abcdef"
IN_PROCESS_CASES = 700
SERVER_CASES = 400
RUN: dict[str, Any] = dict(
    deadline=None,
    database=None,
    derandomize=True,  # NOTE: the same operations on every run: a failure reproduces
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def seed(database_url: str) -> None:
    """A few transfers and history rows so generated queries find something.

    Addresses are written as the indexer writes them: checksummed (EIP-55).
    """
    with psycopg.connect(database_url, autocommit=True) as conn:
        for nonce in range(3):
            tid = f"31337:0x5fbdb2315678afecb367f032d93f642f64180aa3:{nonce}"
            conn.execute(
                """
                INSERT INTO transfers (id, route_id, token, source_chain_id, source_bridge, nonce,
                    target_chain_id, sender, recipient, amount, status, confirmations_required,
                    lock_tx_hash, lock_log_index, lock_block_number, lock_block_hash, lock_block_time)
                VALUES (%s, 'FTT:31337-31338', 'FTT', 31337, '0x5fbdb2315678afecb367f032d93f642f64180aa3',
                    %s, 31338, '0x70997970C51812dc3A010C7d01b50e0d17dc79C8',
                    '0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC', 1000, 'PENDING', 2, %s, 0, 10, %s, now())
                """,
                (tid, nonce, "0x" + f"{nonce:064x}", "0x" + "0" * 64),
            )
            conn.execute(
                "INSERT INTO transfer_status_history (transfer_id, to_status) VALUES (%s, 'PENDING')", (tid,)
            )


def check(status: int, text: str) -> None:
    assert status < 500, text
    assert MASKED_MESSAGE not in text, text


def admin_token() -> str:
    now = int(time.time())
    return jwt.encode({"sub": "fuzzer", "role": "admin", "iat": now, "exp": now + 600}, SECRET)


def generated(count: int) -> list[str]:
    """``count`` operations drawn by schemathesis (a fixed, derandomized sequence)."""
    bodies: list[str] = []

    @settings(max_examples=count, **RUN)
    @given(case=CASES)
    def collect(case: schemathesis.Case) -> None:
        bodies.append(case.body)

    collect()
    return bodies


async def test_generated_operations_in_process_never_fail(clean_db: str) -> None:
    # NOTE: drawn first, then sent: Hypothesis cannot drive an async test directly.
    bodies = generated(IN_PROCESS_CASES)
    assert len(bodies) >= IN_PROCESS_CASES * 0.9  # duplicates are skipped by Hypothesis
    seed(clean_db)
    app = create_app(settings_for(clean_db, gateway_rate_limit=100_000, gateway_jwt_secret=SECRET))
    headers = {"Authorization": f"Bearer {admin_token()}"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30) as client:
            for body in bodies:
                response = await client.post("/graphql", json={"query": body}, headers=headers)
                check(response.status_code, f"{body}\n-> {response.text}")


@pytest.fixture
def gateway_process(clean_db: str, tmp_path: Path) -> Iterator[str]:
    seed(clean_db)
    chains_file = tmp_path / "chains.yaml"
    chains_file.write_text(CHAINS_YAML)
    port, health = free_port(), free_port()
    env = {
        **os.environ,
        "FERRY_DATABASE_URL": clean_db,
        "FERRY_GRAPHQL_PORT": str(port),
        "FERRY_HEALTH_PORT": str(health),
        "FERRY_METRICS_PORT": "0",
        "FERRY_GATEWAY_RATE_LIMIT": "100000",
        "FERRY_LOG_LEVEL": "ERROR",
        "FERRY_CHAINS_FILE": str(chains_file),
    }
    process = subprocess.Popen([sys.executable, "-m", "ferry", "gateway"], env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{health}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, "the gateway process exited while starting"
            assert time.monotonic() < deadline, "the gateway process was not ready within 60 s"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_generated_operations_against_the_running_server_never_fail(gateway_process: str) -> None:
    with httpx.Client(base_url=gateway_process, timeout=30) as client:

        @settings(max_examples=SERVER_CASES, **RUN)
        @given(case=CASES)
        def run(case: schemathesis.Case) -> None:
            response = client.post("/graphql", json={"query": case.body})
            check(response.status_code, response.text)

        run()
