"""Live delivery over real sockets to a real uvicorn (configured as ``ferry gateway`` runs it):
a client that stops reading is cut off with a clear error and close reason while another
keeps receiving everything; keep-alive messages on both protocols at the configured interval.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import websockets

from ferry import metrics
from ferry.transitions import record_new
from gateway.app import create_app
from gateway.subscriptions import group_key, plan_of
from tests.integration.test_gateway import (
    BRIDGE,
    CAROL,
    WAIT,
    S,
    Transfers,
    settings_for,
    transfers,
    until,
)
from tests.support.servers import on_loopback

__all__ = ["transfers"]  # NOTE: imported fixtures must stay module attributes for pytest

CHANGES = """
subscription($filter: TransferFilterInput) {
  transferChanges(filter: $filter) {
    cursor transferId status previousStatus reason txHash blockNumber at
  }
}
"""
QUEUE = 8


@asynccontextmanager
async def gateway_on_loopback(database_url: str, **settings: Any) -> AsyncIterator[str]:
    """The gateway app under uvicorn with the WebSocket options of ``ferry gateway``; its URL."""
    app = create_app(settings_for(database_url, **settings))
    # NOTE: the WebSocket options of gateway.server._server.
    async with on_loopback(app, ws="websockets-sansio", ws_per_message_deflate=False) as url:
        yield url


async def open_socket(url: str, protocol: str, *, stingy: bool = False) -> websockets.ClientConnection:
    """A client socket; ``stingy`` gives it a tiny receive buffer and no client-side queue."""
    if not stingy:
        return await websockets.connect(url, subprotocols=[websockets.Subprotocol(protocol)])
    host, port = url.removeprefix("ws://").split("/")[0].split(":")
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # NOTE: before connect, or it is ignored
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, (host, int(port)))
    return await websockets.connect(
        url, sock=raw, subprotocols=[websockets.Subprotocol(protocol)], max_queue=1, ping_interval=None
    )


#: Per protocol: the message that starts a subscription, and the one that carries a result.
PROTOCOLS = {"graphql-transport-ws": ("subscribe", "next"), "graphql-ws": ("start", "data")}


async def subscribe(
    socket_: websockets.ClientConnection, protocol: str, document: str, variables: dict[str, Any]
) -> None:
    await socket_.send(json.dumps({"type": "connection_init", "payload": {}}))
    assert json.loads(await socket_.recv())["type"] == "connection_ack"
    payload = {"query": document, "variables": variables}
    await socket_.send(json.dumps({"id": "s", "type": PROTOCOLS[protocol][0], "payload": payload}))


async def many_transfers(transfers: Transfers, start: int, count: int) -> None:
    """``count`` new transfers to CAROL in one transaction: ``count`` changes, one notification."""
    ids = [f"31337:{BRIDGE.lower()}:{nonce}" for nonce in range(start, start + count)]
    async with transfers.conn.transaction():
        await transfers.conn.execute(
            """
            INSERT INTO transfers (id, route_id, token, source_chain_id, source_bridge, nonce,
                target_chain_id, sender, recipient, amount, status, confirmations_required,
                lock_tx_hash, lock_log_index, lock_block_number, lock_block_hash, lock_block_time)
            SELECT '31337:' || $1 || ':' || n, 'FTT:31337-31338', 'FTT', 31337, $1, n, 31338,
                $2, $2, 1000, 'PENDING', 2, '0x' || lpad(to_hex(n), 64, '0'), 0, 100,
                '0x' || lpad('64', 64, '0'), now()
            FROM generate_series($3::bigint, $4::bigint) AS n
            """,
            BRIDGE.lower(),
            CAROL,
            start,
            start + count - 1,
        )
        await record_new(transfers.conn, [(transfer_id, S.PENDING) for transfer_id in ids])


def dropped_so_far() -> float:
    return metrics.FANOUT_DROPPED._value.get()


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
async def test_a_client_that_stops_reading_is_cut_off_while_another_receives_everything(
    clean_db: str, transfers: Transfers, protocol: str
) -> None:
    variables = {"filter": {"address": CAROL}}
    result = PROTOCOLS[protocol][1]
    open_before = metrics.SUBSCRIPTIONS._value.get()
    async with gateway_on_loopback(clean_db, gateway_subscriber_queue=QUEUE) as url:
        reader = await open_socket(url, protocol)
        sleeper = await open_socket(url, protocol, stingy=True)
        await subscribe(reader, protocol, CHANGES, variables)
        await subscribe(sleeper, protocol, CHANGES, variables)
        await asyncio.sleep(0.3)  # live only: let both subscriptions register

        received: list[int] = []

        async def read_everything() -> None:
            while True:
                message = json.loads(await reader.recv())
                if message["type"] == result:
                    received.append(int(message["payload"]["data"]["transferChanges"]["cursor"]))

        reading = asyncio.create_task(read_everything())
        dropped_before, written = dropped_so_far(), 0
        try:
            # NOTE: the sleeper never reads: once the socket buffers between it and the server are
            # full, its mailbox fills and the feed cuts it off. Write until that happens.
            while dropped_so_far() == dropped_before:
                assert written < 40_000, "the client that stopped reading was never cut off"
                await many_transfers(transfers, written + 1, 1_000)
                written += 1_000
                behind_by_at_most = written - 2_000  # NOTE: pace the writer to the reader
                await until(lambda: len(received) >= behind_by_at_most)  # noqa: B023 (awaited here)
            total = written
            await until(lambda: len(received) == total)
        finally:
            reading.cancel()
            await reader.close()

        expected = [
            row["id"]
            for row in await transfers.conn.fetch("SELECT id FROM transfer_status_history ORDER BY id")
        ]
        assert received == expected  # the reader got every change, once, in order

        # The sleeper wakes up: what was already sent, then the error naming where to resume.
        late: list[int] = []
        async with asyncio.timeout(WAIT):
            async for text in sleeper:
                message = json.loads(text)
                if message["type"] == result and "errors" not in message["payload"]:
                    late.append(int(message["payload"]["data"]["transferChanges"]["cursor"]))
                elif message["type"] == result:
                    error = message["payload"]["errors"][0]["message"]
                    break
            while (complete := json.loads(await sleeper.recv()))["type"] == "ka":
                pass
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await sleeper.recv()
    assert late == expected[: len(late)]
    assert len(late) < len(expected)
    assert error.startswith(f"this subscription fell more than {QUEUE} changes behind and was closed")
    assert f'after: "{late[-1]}"' in error
    assert complete == {"id": "s", "type": "complete"}
    assert metrics.SUBSCRIPTIONS._value.get() == open_before  # both released from the feed
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1013
    assert closed.value.rcvd.reason == f'subscription fell behind; subscribe again with after: "{late[-1]}"'


@pytest.mark.parametrize(
    ("protocol", "keep_alive"),
    [("graphql-transport-ws", {"type": "ping"}), ("graphql-ws", {"type": "ka"})],
)
async def test_keep_alive_messages_arrive_on_both_protocols(
    clean_db: str, transfers: Transfers, protocol: str, keep_alive: dict[str, str]
) -> None:
    async with gateway_on_loopback(clean_db, gateway_keepalive_interval=0.05) as url:
        client = await open_socket(url, protocol)
        try:
            await client.send(json.dumps({"type": "connection_init", "payload": {}}))
            async with asyncio.timeout(WAIT):
                assert json.loads(await client.recv())["type"] == "connection_ack"
                beats = [json.loads(await client.recv()) for _ in range(5)]
                if protocol == "graphql-transport-ws":
                    await client.send(json.dumps({"type": "ping"}))  # the server answers a client's ping
                    while (message := json.loads(await client.recv())) == keep_alive:
                        pass
                    assert message == {"type": "pong"}
        finally:
            await client.close()
    assert beats == [keep_alive] * 5


async def test_no_keep_alive_before_the_connection_is_acknowledged(clean_db: str) -> None:
    async with gateway_on_loopback(clean_db, gateway_keepalive_interval=0.05) as url:
        client = await open_socket(url, "graphql-transport-ws")
        try:
            await asyncio.sleep(0.3)  # six intervals without connection_init
            await client.send(json.dumps({"type": "connection_init", "payload": {}}))
            async with asyncio.timeout(WAIT):
                first = json.loads(await client.recv())
        finally:
            await client.close()
    assert first == {"type": "connection_ack"}


def test_only_what_the_selection_reads_splits_groups() -> None:
    document = """
    subscription($id: ID!, $after: String, $withTransfer: Boolean!) {
      transferUpdated(id: $id, after: $after) { cursor transfer @include(if: $withTransfer) { status } }
    }
    """
    plan = plan_of(document, None)
    assert plan is not None
    assert plan.selection_variables == ("withTransfer",)
    assert plan.response_key == "transferUpdated"
    one = group_key(document, plan, {"id": "31337:0xa:1", "after": "5", "withTransfer": True})
    other_transfer = group_key(document, plan, {"id": "31337:0xa:2", "after": None, "withTransfer": True})
    without = group_key(document, plan, {"id": "31337:0xa:1", "after": "5", "withTransfer": False})
    assert one == other_transfer
    assert one != without
    assert plan_of("query { chains { id } }", None) is None
    assert (
        plan_of(
            "subscription { a: transferUpdated(id: 1) { cursor } b: transferUpdated(id: 2) { cursor } }", None
        )
        is None
    )
