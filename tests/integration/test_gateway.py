"""The GraphQL gateway against a real PostgreSQL: queries, paging, subscriptions, health.

Transfers are made the way writers make them: an INSERT plus
``ferry.transitions.record_new``, then ``move_transfers`` from another
connection, so history ids, commit order and NOTIFY are the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import websockets

from ferry.devchain import free_port
from ferry.domain import TransferStatus, transfer_id
from ferry.settings import Settings
from ferry.transitions import Move, move_transfers, record_new
from gateway.app import create_app
from gateway.changes import follow_transfer
from gateway.context import Gateway
from gateway.errors import MASKED_MESSAGE, SubscriberTooSlow
from gateway.server import run
from tests.support.servers import on_loopback

S = TransferStatus
BRIDGE = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
ALICE = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
BOB = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
CAROL = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
WAIT = 30.0  # seconds before a test gives up waiting for something that should happen

TRANSFER_FIELDS = """
    id routeId token sourceChainId sourceBridge nonce targetChainId sender recipient amount
    status confirmationsRequired lockTxHash lockBlockNumber lockedAt releaseTxHash
    releaseBlockNumber releasedAt attempts updatedAt
    history { cursor transferId status previousStatus reason txHash blockNumber at }
"""
SUBSCRIBE = """
subscription Follow($id: ID!, $after: String) {
  transferUpdated(id: $id, after: $after) {
    cursor transferId status previousStatus txHash transfer { status }
  }
}
"""


# --- factory -------------------------------------------------------------------------------------


@dataclass
class Transfers:
    """Makes transfers and moves them, through the same code paths as the real writers."""

    conn: asyncpg.Connection

    async def add(
        self,
        nonce: int,
        *,
        sender: str = ALICE,
        recipient: str = BOB,
        locked_at: datetime = T0,
        amount: int = 10**18,
        chain_id: int = 31337,
        block_number: int = 100,
        target_chain_id: int = 31338,
        token: str = "FTT",  # noqa: S107 (a token symbol, not a password)
        tx_hash: str | None = None,
        log_index: int = 0,
    ) -> str:
        new_id = transfer_id(chain_id, BRIDGE, nonce)
        async with self.conn.transaction():
            await self.conn.execute(
                """
                INSERT INTO transfers (id, route_id, token, source_chain_id, source_bridge, nonce,
                    target_chain_id, sender, recipient, amount, status, confirmations_required,
                    lock_tx_hash, lock_log_index, lock_block_number, lock_block_hash, lock_block_time)
                VALUES ($1, $12, $13, $2, $3, $4, $14, $5, $6, $7, 'PENDING', 2,
                    $8, $15, $9, $10, $11)
                """,
                new_id,
                chain_id,
                BRIDGE.lower(),
                nonce,
                sender,
                recipient,
                amount,
                tx_hash or "0x" + f"{nonce:064x}",
                block_number,
                "0x" + f"{block_number:064x}",
                locked_at,
                f"{token}:{chain_id}-{target_chain_id}",
                token,
                target_chain_id,
                log_index,
            )
            await record_new(self.conn, [(new_id, S.PENDING)])
        return new_id

    async def move(self, moved_id: str, to: TransferStatus, **details: Any) -> None:
        async with self.conn.transaction():
            changes = await move_transfers(self.conn, [Move(moved_id, to, **details)])
        assert changes, f"{moved_id} could not move to {to}"


@pytest.fixture
async def transfers(clean_db: str) -> AsyncIterator[Transfers]:
    conn = await asyncpg.connect(clean_db, server_settings={"application_name": "ferry-test-writer"})
    try:
        yield Transfers(conn)
    finally:
        await conn.close()


def settings_for(database_url: str, **overrides: Any) -> Settings:
    return Settings(database_url=database_url, database_read_url=None, **overrides)


# --- HTTP through the ASGI app ---------------------------------------------------------------------


@pytest.fixture
async def client(clean_db: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings_for(clean_db, max_page_size=50))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            yield http


async def graphql(client: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    response = await client.post("/graphql", json={"query": query, "variables": variables})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def messages(body: dict[str, Any]) -> list[str]:
    return [error["message"] for error in body.get("errors", [])]


async def test_transfer_by_id_shows_every_field_and_its_timeline(
    client: httpx.AsyncClient, transfers: Transfers
) -> None:
    big = 123_456_789_012_345_678_901_234_567_890
    tid = await transfers.add(7, amount=big, block_number=2**40)
    await transfers.move(tid, S.CONFIRMED)
    await transfers.move(tid, S.SUBMITTED, tx_hash="0x" + "ab" * 32, block_number=55)

    body = await graphql(client, f"query($id: ID!) {{ transfer(id: $id) {{ {TRANSFER_FIELDS} }} }}", id=tid)

    assert "errors" not in body
    found = body["data"]["transfer"]
    assert found["id"] == tid
    assert found["amount"] == str(big)
    assert found["nonce"] == "7"
    assert found["sourceChainId"] == 31337
    assert found["targetChainId"] == 31338
    assert found["lockBlockNumber"] == 2**40
    assert found["sourceBridge"] == BRIDGE
    assert (found["sender"], found["recipient"]) == (ALICE, BOB)
    assert found["status"] == "SUBMITTED"
    assert datetime.fromisoformat(found["lockedAt"]) == T0
    assert found["releasedAt"] is None
    timeline = [(change["previousStatus"], change["status"]) for change in found["history"]]
    assert timeline == [(None, "PENDING"), ("PENDING", "CONFIRMED"), ("CONFIRMED", "SUBMITTED")]
    assert found["history"][-1]["txHash"] == "0x" + "ab" * 32
    assert found["history"][-1]["blockNumber"] == 55
    cursors = [int(change["cursor"]) for change in found["history"]]
    assert cursors == sorted(cursors)


async def test_transfer_id_is_accepted_in_any_bridge_case(
    client: httpx.AsyncClient, transfers: Transfers
) -> None:
    tid = await transfers.add(3)
    spelled = f"31337:{BRIDGE}:3"  # checksummed bridge, as a wallet might write it
    body = await graphql(client, "query($id: ID!) { transfer(id: $id) { id } }", id=spelled)
    assert body["data"]["transfer"] == {"id": tid}


async def test_unknown_transfer_is_null(client: httpx.AsyncClient, transfers: Transfers) -> None:
    body = await graphql(client, "query($id: ID!) { transfer(id: $id) { id } }", id=transfer_id(1, BRIDGE, 9))
    assert body == {"data": {"transfer": None}}


async def test_malformed_transfer_id_is_a_clear_error(
    client: httpx.AsyncClient, transfers: Transfers
) -> None:
    body = await graphql(client, "query($id: ID!) { transfer(id: $id) { id } }", id="not-an-id")
    assert body["data"] == {"transfer": None}
    assert messages(body) == [
        "'not-an-id' is not a transfer id: a transfer id has the form <sourceChainId>:<sourceBridge>:<nonce>"
    ]


async def test_paging_returns_every_transfer_once_newest_lock_first(
    client: httpx.AsyncClient, transfers: Transfers
) -> None:
    # Eight transfers over three lock times: ties are broken by the lock key, never lost.
    made = [await transfers.add(nonce, locked_at=T0 + timedelta(seconds=nonce // 3)) for nonce in range(8)]
    query = """
        query($after: String) { transfers(first: 3, after: $after) {
            edges { cursor node { id } } pageInfo { hasNextPage hasPreviousPage endCursor } } }
    """
    seen: list[str] = []
    pages = []
    after = None
    while True:
        page = (await graphql(client, query, after=after))["data"]["transfers"]
        pages.append(len(page["edges"]))
        seen += [edge["node"]["id"] for edge in page["edges"]]
        assert page["pageInfo"]["hasPreviousPage"] is (after is not None)
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert pages == [3, 3, 2]
    assert seen == list(reversed(made))  # newest lock (and, within a block time, highest nonce) first


async def test_paging_default_page_and_empty_list(client: httpx.AsyncClient, transfers: Transfers) -> None:
    body = await graphql(client, "{ transfers { edges { cursor } pageInfo { hasNextPage endCursor } } }")
    assert body["data"]["transfers"] == {"edges": [], "pageInfo": {"hasNextPage": False, "endCursor": None}}


async def test_address_filter_matches_sender_or_recipient_in_any_spelling(
    client: httpx.AsyncClient, transfers: Transfers
) -> None:
    # NOTE: written checksummed, as the indexer writes them; clients may send any valid spelling.
    sent = await transfers.add(1, sender=CAROL, recipient=BOB)
    received = await transfers.add(2, sender=ALICE, recipient=CAROL)
    await transfers.add(3, sender=ALICE, recipient=BOB)
    query = "query($a: String) { transfers(address: $a) { edges { node { id sender recipient } } } }"
    for spelling in (CAROL, CAROL.lower(), "0x" + CAROL[2:].upper()):
        edges = (await graphql(client, query, a=spelling))["data"]["transfers"]["edges"]
        assert sorted(edge["node"]["id"] for edge in edges) == sorted([sent, received])
    edges = (await graphql(client, query, a=CAROL))["data"]["transfers"]["edges"]
    assert {edge["node"]["recipient"] for edge in edges} == {BOB, CAROL}  # always shown checksummed


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("0x1234", "address must be a 0x-prefixed 20-byte hex address, checksummed (EIP-55) or lowercase"),
        (
            CAROL[:4] + CAROL[4].lower() + CAROL[5:],  # one letter in the wrong case: bad checksum
            "address must be a 0x-prefixed 20-byte hex address, checksummed (EIP-55) or lowercase "
            "(its checksum does not match: check the address, or send it lowercase)",
        ),
    ],
)
async def test_bad_address_is_a_clear_error(
    client: httpx.AsyncClient, transfers: Transfers, address: str, expected: str
) -> None:
    body = await graphql(
        client, "query($a: String) { transfers(address: $a) { edges { cursor } } }", a=address
    )
    assert messages(body) == [expected]


@pytest.mark.parametrize("first", [0, -1, 51])
async def test_page_size_outside_the_limit_is_a_clear_error(
    client: httpx.AsyncClient, transfers: Transfers, first: int
) -> None:
    body = await graphql(client, "query($n: Int) { transfers(first: $n) { edges { cursor } } }", n=first)
    assert messages(body) == [f"first must be between 1 and 50 (got {first}); page with cursors instead"]


async def test_forged_cursor_is_a_clear_error(client: httpx.AsyncClient, transfers: Transfers) -> None:
    body = await graphql(client, '{ transfers(after: "bm90IGEgY3Vyc29y") { edges { cursor } } }')
    assert messages(body) == [
        "after is not a transfers cursor: pass an edge's cursor or a pageInfo cursor unchanged"
    ]


async def test_wrong_argument_type_is_a_graphql_error_not_a_500(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql", json={"query": '{ transfers(first: "many") { edges { cursor } } }'}
    )
    assert response.status_code in (200, 400)
    assert "Int cannot represent non-integer value" in messages(response.json())[0]


async def test_unexpected_errors_are_masked(client: httpx.AsyncClient, transfers: Transfers) -> None:
    tid = await transfers.add(1)
    # A history row no writer would produce: the gateway cannot read it and must not say why.
    await transfers.conn.execute(
        "INSERT INTO transfer_status_history (transfer_id, to_status) VALUES ($1, 'BOGUS')", tid
    )
    body = await graphql(client, "query($id: ID!) { transfer(id: $id) { history { status } } }", id=tid)
    assert messages(body) == [MASKED_MESSAGE]
    assert "BOGUS" not in json.dumps(body)


@pytest.mark.parametrize("redis_up", [True, False], ids=["redis up", "redis down"])
async def test_health_and_ready_answer(clean_db: str, redis_url: str, redis_up: bool) -> None:
    redis = redis_url if redis_up else f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(settings_for(clean_db, redis_url=redis))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            health = await client.get("/health")
            ready = await client.get("/ready")
    assert (health.status_code, health.json()) == (200, {"status": "alive"})
    assert ready.status_code == 200  # Redis is reported for admins but does not gate readiness
    assert ready.json() == {
        "status": "ready",
        "checks": {"database": "ok", "listener": "ok", "redis": "ok" if redis_up else "unavailable"},
    }


# --- WebSocket subscriptions against a real uvicorn ------------------------------------------------


@pytest.fixture
async def served(clean_db: str) -> AsyncIterator[str]:
    """A real uvicorn serving the gateway on a loopback port; yields its WebSocket URL."""
    async with on_loopback(create_app(settings_for(clean_db))) as url:
        yield url


class TransportWs:
    """A graphql-transport-ws client (the protocol of the graphql-ws library)."""

    protocol = "graphql-transport-ws"

    def __init__(self, socket: websockets.ClientConnection) -> None:
        self.socket = socket

    async def receive(self) -> dict[str, Any]:
        async with asyncio.timeout(WAIT):
            while True:
                message: dict[str, Any] = json.loads(await self.socket.recv())
                if message["type"] not in ("ping", "pong", "ka"):
                    return message

    async def start(self) -> None:
        await self.socket.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert (await self.receive())["type"] == "connection_ack"

    async def subscribe(self, op_id: str, variables: dict[str, Any]) -> None:
        payload = {"query": SUBSCRIBE, "variables": variables}
        await self.socket.send(json.dumps({"id": op_id, "type": "subscribe", "payload": payload}))

    async def next_change(self) -> dict[str, Any]:
        message = await self.receive()
        assert message["type"] == "next", message
        assert "errors" not in message["payload"], message
        change: dict[str, Any] = message["payload"]["data"]["transferUpdated"]
        return change


class LegacyWs(TransportWs):
    """A client of the legacy graphql-ws protocol (subscriptions-transport-ws)."""

    protocol = "graphql-ws"

    async def subscribe(self, op_id: str, variables: dict[str, Any]) -> None:
        payload = {"query": SUBSCRIBE, "variables": variables}
        await self.socket.send(json.dumps({"id": op_id, "type": "start", "payload": payload}))

    async def next_change(self) -> dict[str, Any]:
        message = await self.receive()
        assert message["type"] == "data", message
        assert "errors" not in message["payload"], message
        change: dict[str, Any] = message["payload"]["data"]["transferUpdated"]
        return change


@contextlib.asynccontextmanager
async def connect(url: str, client: type[TransportWs]) -> AsyncIterator[TransportWs]:
    async with websockets.connect(url, subprotocols=[websockets.Subprotocol(client.protocol)]) as socket:
        assert socket.subprotocol == client.protocol
        session = client(socket)
        await session.start()
        yield session


@pytest.mark.parametrize("client_type", [TransportWs, LegacyWs], ids=["graphql-transport-ws", "graphql-ws"])
async def test_subscription_replays_history_then_streams_live_moves_in_order(
    served: str, transfers: Transfers, client_type: type[TransportWs]
) -> None:
    tid = await transfers.add(1)
    other = await transfers.add(2)
    await transfers.move(tid, S.CONFIRMED)

    async with connect(served, client_type) as session:
        await session.subscribe("1", {"id": tid})
        replayed = [await session.next_change() for _ in range(2)]
        assert [change["status"] for change in replayed] == ["PENDING", "CONFIRMED"]

        # Live moves from another connection, interleaved with moves of another transfer.
        await transfers.move(other, S.CONFIRMED)
        await transfers.move(tid, S.SUBMITTED, tx_hash="0x" + "11" * 32)
        await transfers.move(other, S.SUBMITTED)
        await transfers.move(tid, S.RELEASED, tx_hash="0x" + "22" * 32)
        await transfers.move(tid, S.FINALIZED)

        live = [await session.next_change() for _ in range(3)]
    assert [(c["previousStatus"], c["status"]) for c in live] == [
        ("CONFIRMED", "SUBMITTED"),
        ("SUBMITTED", "RELEASED"),
        ("RELEASED", "FINALIZED"),
    ]
    assert {c["transferId"] for c in replayed + live} == {tid}
    cursors = [int(c["cursor"]) for c in replayed + live]
    assert cursors == sorted(set(cursors))
    assert live[0]["txHash"] == "0x" + "11" * 32
    assert live[-1]["transfer"] == {"status": "FINALIZED"}


async def test_subscription_resumes_after_a_cursor_and_waits_for_unseen_transfers(
    served: str, transfers: Transfers
) -> None:
    tid = await transfers.add(1)
    await transfers.move(tid, S.CONFIRMED)
    async with connect(served, TransportWs) as session:
        await session.subscribe("all", {"id": tid})
        first, second = await session.next_change(), await session.next_change()
        await session.subscribe("resumed", {"id": tid, "after": first["cursor"]})
        resumed = await session.next_change()
        assert resumed == second

        future_id = transfer_id(31337, BRIDGE, 99)  # a wallet subscribes before the lock is indexed
        await session.subscribe("future", {"id": future_id})
        await transfers.add(99)
        message = await session.receive()
        assert (message["id"], message["payload"]["data"]["transferUpdated"]["status"]) == (
            "future",
            "PENDING",
        )


async def test_subscription_with_a_bad_id_fails_with_a_clear_error(served: str, transfers: Transfers) -> None:
    async with connect(served, TransportWs) as session:
        await session.subscribe("1", {"id": "31337:0xnothex:1"})
        message = await session.receive()
    assert message["type"] == "error"
    assert message["payload"][0]["message"] == (
        "'31337:0xnothex:1' is not a transfer id: a transfer id's bridge is a 0x-prefixed 20-byte hex address"
    )


async def test_changes_missed_while_the_listener_reconnects_are_still_delivered(
    served: str, transfers: Transfers
) -> None:
    tid = await transfers.add(1)
    async with connect(served, TransportWs) as session:
        await session.subscribe("1", {"id": tid})
        assert (await session.next_change())["status"] == "PENDING"
        killed = await transfers.conn.fetchval(
            """
            SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND application_name NOT LIKE 'ferry-%' AND backend_type = 'client backend'
            """
        )
        assert killed == 1  # the gateway's LISTEN connection (its pool is named ferry-gateway)
        await transfers.move(tid, S.CONFIRMED)
        await transfers.move(tid, S.SUBMITTED)
        statuses = [(await session.next_change())["status"] for _ in range(2)]
    assert statuses == ["CONFIRMED", "SUBMITTED"]


async def test_an_unreadable_history_row_does_not_stall_other_subscribers(
    served: str, transfers: Transfers
) -> None:
    tid = await transfers.add(1)
    other = await transfers.add(2)
    async with connect(served, TransportWs) as session:
        await session.subscribe("1", {"id": tid})
        assert (await session.next_change())["status"] == "PENDING"
        await transfers.conn.execute(
            "INSERT INTO transfer_status_history (transfer_id, to_status) VALUES ($1, 'BOGUS')", other
        )
        await transfers.move(tid, S.CONFIRMED)
        assert (await session.next_change())["status"] == "CONFIRMED"


async def test_a_subscriber_that_falls_behind_is_cut_off_with_a_resume_cursor(
    clean_db: str, transfers: Transfers
) -> None:
    gateway = Gateway(settings_for(clean_db), queue_size=2)
    await gateway.start()
    try:
        tid = await transfers.add(1)
        stream = follow_transfer(gateway.feed, gateway.pool, tid, 0)
        first = await anext(stream)  # the replayed PENDING; then the subscriber stops reading
        for status in (S.CONFIRMED, S.SUBMITTED, S.RELEASED, S.FINALIZED):
            await transfers.move(tid, status)
        last_id = await transfers.conn.fetchval("SELECT max(id) FROM transfer_status_history")
        await until(lambda: gateway.feed.cursor >= last_id)  # the feed has offered all four
        with pytest.raises(SubscriberTooSlow, match=f'after: "{first.id}"'):
            await anext(stream)
        await stream.aclose()

        resumed = follow_transfer(gateway.feed, gateway.pool, tid, first.id)
        statuses = [(await anext(resumed)).to_status for _ in range(4)]
        await resumed.aclose()
        assert statuses == [S.CONFIRMED, S.SUBMITTED, S.RELEASED, S.FINALIZED]
    finally:
        await gateway.stop()


async def until(condition: Callable[[], bool]) -> None:
    """Wait for state that has no event of its own to await (bounded by WAIT)."""
    async with asyncio.timeout(WAIT):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)


# --- the whole process: three servers, readiness, signals ------------------------------------------


@contextlib.asynccontextmanager
async def gateway_process(settings: Settings) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(run(settings))
    await asyncio.sleep(0)  # run() installs its SIGTERM handler before its first await
    try:
        yield task
    finally:
        if not task.done():
            os.kill(os.getpid(), signal.SIGTERM)
        async with asyncio.timeout(WAIT):
            await task


async def get_when_up(url: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient() as http, asyncio.timeout(WAIT):
        while True:
            try:
                return await http.request(kwargs.pop("method", "GET"), url, **kwargs)
            except httpx.TransportError:
                await asyncio.sleep(0.05)


async def test_run_serves_graphql_health_and_metrics_and_stops_on_sigterm(
    clean_db: str, transfers: Transfers
) -> None:
    tid = await transfers.add(1)
    ports = {name: free_port() for name in ("graphql_port", "health_port", "metrics_port")}
    async with gateway_process(settings_for(clean_db, **ports)) as process:
        ready = await get_when_up(f"http://127.0.0.1:{ports['health_port']}/ready")
        while ready.status_code != 200:
            ready = await get_when_up(f"http://127.0.0.1:{ports['health_port']}/ready")
        answer = await get_when_up(
            f"http://127.0.0.1:{ports['graphql_port']}/graphql",
            method="POST",
            json={"query": f'{{ transfer(id: "{tid}") {{ status }} }}'},
        )
        assert answer.json() == {"data": {"transfer": {"status": "PENDING"}}}
        scraped = await get_when_up(f"http://127.0.0.1:{ports['metrics_port']}/metrics")
        assert 'ferry_gateway_requests_total{operation="query",outcome="ok"}' in scraped.text
        os.kill(os.getpid(), signal.SIGTERM)
        async with asyncio.timeout(WAIT):
            await process
    assert process.exception() is None


async def test_ready_says_503_while_the_database_is_unreachable() -> None:
    nowhere = f"postgresql://postgres:hunter2secret@127.0.0.1:{free_port()}/ferry"
    health_port = free_port()
    settings = settings_for(nowhere, graphql_port=free_port(), health_port=health_port, metrics_port=0)
    async with gateway_process(settings):
        alive = await get_when_up(f"http://127.0.0.1:{health_port}/health")
        ready = await get_when_up(f"http://127.0.0.1:{health_port}/ready")
    assert alive.status_code == 200
    assert ready.status_code == 503
    body = ready.json()
    assert (body["status"], body["checks"]["database"], body["checks"]["listener"]) == (
        "not ready",
        "unavailable",
        "down",
    )
    assert "hunter2secret" not in ready.text
