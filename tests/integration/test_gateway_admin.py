"""Admin mutations and the audit log against a real PostgreSQL: authentication (none, expired,
too long-lived, wrong role, good JWT HS256/RS256, API keys), state checks, and the trail left.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.app import create_app
from gateway.auth import create_api_key, revoke_api_key
from gateway.keys import main as keys_main
from tests.integration.test_gateway import S, Transfers, messages, settings_for, transfers

__all__ = ["transfers"]  # NOTE: the imported fixture must stay a module attribute for pytest

SECRET = "test-only-hs256-secret-of-enough-length-0123456789"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUBLIC = (
    RSA_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
ROUTE = "FTT:31337-31338"
PAUSE = """mutation($r: String!, $why: String) { pauseRoute(routeId: $r, reason: $why) {
    id action routeId actor actorRole origin reason status outcome } }"""
APPROVE = """mutation($id: ID!) { approveHeldTransfer(id: $id, reason: "checked by phone") {
    action transferId status actor } }"""
AUDIT = "{ auditLog { action routeId transferId actor actorRole origin reason status } }"


def token(
    role: str = "admin", *, lifetime: int = 600, age: int = 0, key: Any = SECRET, alg: str = "HS256"
) -> str:
    issued = int(time.time()) - age
    claims = {"sub": "alice@ops", "role": role, "iat": issued, "exp": issued + lifetime}
    return jwt.encode(claims, key, algorithm=alg)


@pytest.fixture
async def admin_client(clean_db: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(clean_db, gateway_jwt_secret=SECRET, gateway_jwt_public_key=RSA_PUBLIC)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            yield http


async def call(
    client: httpx.AsyncClient, query: str, bearer: str | None = None, **variables: Any
) -> dict[str, Any]:
    headers = {} if bearer is None else {"Authorization": f"Bearer {bearer}"}
    response = await client.post("/graphql", json={"query": query, "variables": variables}, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
async def route(transfers: Transfers) -> str:
    await transfers.conn.execute(
        "INSERT INTO routes (route_id, token, source_chain_id, target_chain_id)"
        " VALUES ($1, 'FTT', 31337, 31338)",
        ROUTE,
    )
    return ROUTE


async def paused_and_audited(conn: asyncpg.Connection) -> tuple[bool, int]:
    paused = await conn.fetchval("SELECT paused FROM routes WHERE route_id = $1", ROUTE)
    audited = await conn.fetchval("SELECT count(*) FROM operator_requests")
    return paused, audited


@pytest.mark.parametrize(
    ("bearer", "expected"),
    [
        (None, "authentication required: send 'Authorization: Bearer <JWT or API key>'"),
        (token(age=1200), "the JWT has expired: get a new one"),
        (token(lifetime=3600), "the JWT lives longer than 900 s: issue shorter-lived tokens"),
        (
            token(key="another-secret-entirely-0123456789abcdef"),
            "the JWT is not valid (InvalidSignatureError)",
        ),
        (token(role="operator"), "this needs the admin role; the credentials of 'alice@ops' carry operator"),
        (token(role="root"), "the JWT's role claim must be one of operator, admin"),
        ("fk_not-a-real-key", "the API key is unknown or revoked"),
    ],
    ids=[
        "no token",
        "expired",
        "too long-lived",
        "bad signature",
        "operator role",
        "unknown role",
        "bad key",
    ],
)
async def test_without_valid_admin_credentials_nothing_changes(
    admin_client: httpx.AsyncClient, transfers: Transfers, route: str, bearer: str | None, expected: str
) -> None:
    body = await call(admin_client, PAUSE, bearer, r=route)
    assert body["data"] is None
    assert messages(body)[0].startswith(expected)
    assert await paused_and_audited(transfers.conn) == (False, 0)


@pytest.mark.parametrize("alg", ["HS256", "RS256"])
async def test_an_admin_pauses_and_resumes_a_route_and_both_are_audited(
    admin_client: httpx.AsyncClient, transfers: Transfers, route: str, alg: str
) -> None:
    good = token(key=SECRET if alg == "HS256" else RSA_KEY, alg=alg)
    body = await call(admin_client, PAUSE, good, r=route, why="suspicious volume")
    assert body["data"]["pauseRoute"] == {
        "id": 1,
        "action": "PAUSE_ROUTE",
        "routeId": ROUTE,
        "actor": "alice@ops",
        "actorRole": "admin",
        "origin": "203.0.113.7",
        "reason": "suspicious volume",
        "status": "PROCESSED",
        "outcome": "paused: no new releases on this route",
    }
    assert await paused_and_audited(transfers.conn) == (True, 1)
    shown = await call(admin_client, "{ routes { id paused pausedReason } }")
    assert shown["data"]["routes"] == [{"id": ROUTE, "paused": True, "pausedReason": "suspicious volume"}]

    body = await call(
        admin_client, "mutation($r: String!) { resumeRoute(routeId: $r) { action } }", good, r=route
    )
    assert body["data"]["resumeRoute"] == {"action": "RESUME_ROUTE"}
    assert await paused_and_audited(transfers.conn) == (False, 2)

    audit = await call(admin_client, AUDIT, token(role="operator"))
    assert [(a["action"], a["actor"], a["origin"]) for a in audit["data"]["auditLog"]] == [
        ("RESUME_ROUTE", "alice@ops", "203.0.113.7"),
        ("PAUSE_ROUTE", "alice@ops", "203.0.113.7"),
    ]
    unknown = await call(admin_client, PAUSE, good, r="NOPE:1-2")
    assert messages(unknown) == ["there is no route 'NOPE:1-2': the routes query lists them"]


async def test_transfer_actions_check_the_state_then_queue_a_request_for_the_relayer(
    admin_client: httpx.AsyncClient, transfers: Transfers
) -> None:
    tid = await transfers.add(1)
    await transfers.move(tid, S.CONFIRMED)
    good = token()
    refused = await call(admin_client, APPROVE, good, id=tid)
    assert messages(refused) == ["the transfer is CONFIRMED; APPROVE applies to a HELD transfer"]
    assert await transfers.conn.fetchval("SELECT count(*) FROM operator_requests") == 0

    await transfers.move(tid, S.HELD, reason="over max_amount")
    heard: asyncio.Queue[str] = asyncio.Queue()
    await transfers.conn.add_listener("ferry_operator_requests", lambda *args: heard.put_nowait(args[-1]))
    body = await call(admin_client, APPROVE, good, id=tid)
    assert body["data"]["approveHeldTransfer"] == {
        "action": "APPROVE",
        "transferId": tid,
        "status": "PENDING",
        "actor": "alice@ops",
    }
    async with asyncio.timeout(10):
        request_id = await heard.get()
    row = await transfers.conn.fetchrow("SELECT * FROM operator_requests WHERE id = $1", int(request_id))
    assert (row["action"], row["transfer_id"], row["reason"], row["processed_at"]) == (
        "APPROVE",
        tid,
        "checked by phone",
        None,
    )
    missing = await call(
        admin_client, APPROVE, good, id="31337:0x5fbdb2315678afecb367f032d93f642f64180aa3:999"
    )
    assert messages(missing) == ["there is no transfer 31337:0x5fbdb2315678afecb367f032d93f642f64180aa3:999"]


async def test_api_keys_authenticate_until_revoked_and_the_audit_log_needs_credentials(
    admin_client: httpx.AsyncClient, transfers: Transfers, route: str
) -> None:
    admin_key = await create_api_key(transfers.conn, "deploy-bot", "admin")
    operator_key = await create_api_key(transfers.conn, "dashboard", "operator")
    stored = await transfers.conn.fetch("SELECT key_hash FROM gateway_api_keys")
    assert all(admin_key not in row["key_hash"] for row in stored)  # only the hash is kept

    body = await call(admin_client, PAUSE, admin_key, r=route)
    assert body["data"]["pauseRoute"]["actor"] == "key:deploy-bot"
    forbidden = await call(admin_client, PAUSE, operator_key, r=route)
    assert messages(forbidden)[0].startswith("this needs the admin role")
    audit = await call(admin_client, AUDIT, operator_key)
    assert [a["actor"] for a in audit["data"]["auditLog"]] == ["key:deploy-bot"]

    assert await revoke_api_key(transfers.conn, "deploy-bot")
    revoked = await call(admin_client, PAUSE, admin_key, r=route)
    assert messages(revoked) == ["the API key is unknown or revoked"]
    anonymous = await call(admin_client, AUDIT)
    assert messages(anonymous)[0].startswith("authentication required")


def test_keys_command_creates_a_key_once_and_revokes_it(
    clean_db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FERRY_DATABASE_URL", clean_db)
    assert keys_main(["create", "oncall", "--role", "admin"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("fk_")
    assert keys_main(["create", "oncall"]) == 1
    assert "already exists" in capsys.readouterr().out
    assert keys_main(["revoke", "oncall"]) == 0
    assert keys_main(["revoke", "oncall"]) == 1


async def test_with_database_roles_reads_are_read_only_and_admin_writes_still_work(
    clean_db: str, transfers: Transfers, route: str
) -> None:
    settings = settings_for(clean_db, gateway_jwt_secret=SECRET, gateway_database_roles=True)
    app = create_app(settings)
    tid = await transfers.add(1)
    await transfers.move(tid, S.CONFIRMED)
    await transfers.move(tid, S.HELD, reason="over max_amount")
    async with app.router.lifespan_context(app):
        gateway = app.state.gateway
        assert await gateway.pool.fetchval("SELECT current_user") == "ferry_gateway_reader"
        async with gateway.pool.acquire() as conn:
            # NOTE: past the session's read-only default, the role itself refuses the write.
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("BEGIN READ WRITE; UPDATE routes SET paused = true; COMMIT")
            await conn.execute("ROLLBACK")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            page = await call(client, "{ transfers { totalCount edges { node { id history { status } } } } }")
            assert page["data"]["transfers"]["totalCount"] == 1
            assert (await call(client, PAUSE, token(), r=route))["data"]["pauseRoute"][
                "status"
            ] == "PROCESSED"
            approved = await call(client, APPROVE, token(), id=tid)
            assert approved["data"]["approveHeldTransfer"]["status"] == "PENDING"
            audit = await call(client, AUDIT, token(role="operator"))
            assert [a["action"] for a in audit["data"]["auditLog"]] == ["APPROVE", "PAUSE_ROUTE"]
        admin_pool = await gateway.admin_pool()
        assert await admin_pool.fetchval("SELECT current_user") == "ferry_gateway_admin"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await admin_pool.execute("UPDATE transfers SET status = 'RELEASED'")
