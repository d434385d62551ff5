"""Address and filter subscriptions over real WebSockets against a real uvicorn and PostgreSQL:
resume mid-burst without gaps or repeats, reorgs as changes, slow consumers cut off alone.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets

from gateway import subscriptions
from gateway.changes import follow_changes
from gateway.context import Gateway
from gateway.errors import SubscriberTooSlow
from gateway.paging import TransferFilter, checksummed_address
from tests.integration.test_gateway import (
    ALICE,
    BOB,
    CAROL,
    WAIT,
    S,
    Transfers,
    served,
    settings_for,
    transfers,
    until,
)

__all__ = ["served", "transfers"]  # NOTE: imported fixtures must stay module attributes for pytest

FOR_ADDRESS = """
subscription($address: String!, $after: String) {
  transfersForAddress(address: $address, after: $after) { cursor transferId status previousStatus }
}
"""
CHANGES = """
subscription($filter: TransferFilterInput, $after: String) {
  transferChanges(filter: $filter, after: $after) { cursor transferId status previousStatus }
}
"""


class Client:
    """A graphql-transport-ws client holding one subscription."""

    def __init__(self, socket: websockets.ClientConnection) -> None:
        self.socket = socket

    @classmethod
    async def open(cls, url: str, document: str, variables: dict[str, Any]) -> Client:
        socket = await websockets.connect(url, subprotocols=[websockets.Subprotocol("graphql-transport-ws")])
        client = cls(socket)
        await socket.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert (await client.receive())["type"] == "connection_ack"
        payload = {"query": document, "variables": variables}
        await socket.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
        return client

    async def receive(self) -> dict[str, Any]:
        async with asyncio.timeout(WAIT):
            while True:
                message: dict[str, Any] = json.loads(await self.socket.recv())
                if message["type"] == "ping":
                    await self.socket.send(json.dumps({"type": "pong"}))
                elif message["type"] != "pong":
                    return message

    async def change(self) -> dict[str, Any]:
        message = await self.receive()
        assert message["type"] == "next", message
        assert "errors" not in message["payload"], message
        data: dict[str, Any] = message["payload"]["data"]
        return next(iter(data.values()))

    async def close(self) -> None:
        await self.socket.close()


async def history_of(transfers: Transfers, address: str) -> list[tuple[int, str, str]]:
    rows = await transfers.conn.fetch(
        "SELECT h.id, h.transfer_id, h.to_status FROM transfer_status_history h"
        " JOIN transfers t ON t.id = h.transfer_id"
        " WHERE lower(t.sender) = lower($1) OR lower(t.recipient) = lower($1) ORDER BY h.id",
        address,
    )
    return [(row["id"], row["transfer_id"], row["to_status"]) for row in rows]


def seen(changes: list[dict[str, Any]]) -> list[tuple[int, str, str]]:
    return [(int(c["cursor"]), c["transferId"], c["status"]) for c in changes]


async def burst(transfers: Transfers, start: int, count: int) -> None:
    """``count`` transfers to CAROL (and some for others), each moved twice, one commit per step."""
    for nonce in range(start, start + count):
        mine = await transfers.add(nonce, sender=ALICE, recipient=CAROL)
        other = await transfers.add(nonce + 10_000, sender=ALICE, recipient=BOB)
        await transfers.move(mine, S.CONFIRMED)
        await transfers.move(other, S.CONFIRMED)
        await transfers.move(mine, S.SUBMITTED)


async def test_resume_after_a_disconnect_mid_burst_gets_every_change_once(
    served: str, transfers: Transfers
) -> None:
    await transfers.add(1, sender=CAROL, recipient=BOB)  # history before the subscription
    client = await Client.open(served, FOR_ADDRESS, {"address": CAROL.lower()})
    received = [await client.change()]
    writer = asyncio.create_task(burst(transfers, 100, 20))
    received += [await client.change() for _ in range(15)]  # then drop the connection mid-burst
    await client.close()
    await asyncio.sleep(0.2)  # changes commit while nobody listens

    resumed = await Client.open(served, FOR_ADDRESS, {"address": CAROL, "after": received[-1]["cursor"]})
    await writer
    expected = await history_of(transfers, CAROL)
    assert len(expected) == 1 + 20 * 3
    while len(received) < len(expected):
        received.append(await resumed.change())
    await resumed.close()
    assert seen(received) == expected


async def test_a_reorg_arrives_as_changes_to_orphaned_and_back_to_pending(
    served: str, transfers: Transfers
) -> None:
    client = await Client.open(served, CHANGES, {"filter": {"address": BOB}})
    try:
        await asyncio.sleep(0.2)  # only changes from now on: let the subscription register
        tid = await transfers.add(5, sender=ALICE, recipient=BOB)
        await transfers.add(6, sender=ALICE, recipient=CAROL)  # not BOB's: filtered out
        await transfers.move(tid, S.ORPHANED, reason="reorg at block 100")
        await transfers.move(tid, S.PENDING, reason="re-included")
        changes = [await client.change() for _ in range(3)]
    finally:
        await client.close()
    assert [(c["transferId"], c["previousStatus"], c["status"]) for c in changes] == [
        (tid, None, "PENDING"),
        (tid, "PENDING", "ORPHANED"),
        (tid, "ORPHANED", "PENDING"),
    ]


async def test_filter_subscription_replays_from_a_cursor_by_the_status_moved_to(
    served: str, transfers: Transfers
) -> None:
    a = await transfers.add(1)
    b = await transfers.add(2)
    await transfers.move(a, S.CONFIRMED)
    await transfers.move(b, S.ORPHANED)
    await transfers.move(a, S.SUBMITTED)
    client = await Client.open(
        served, CHANGES, {"filter": {"status": ["ORPHANED", "SUBMITTED"]}, "after": "0"}
    )
    try:
        replayed = [await client.change() for _ in range(2)]
        await transfers.move(b, S.PENDING)
        await transfers.move(a, S.RELEASED)
        c = await transfers.add(3)
        await transfers.move(c, S.ORPHANED)
        live = await client.change()
    finally:
        await client.close()
    assert [(x["transferId"], x["status"]) for x in [*replayed, live]] == [
        (b, "ORPHANED"),
        (a, "SUBMITTED"),
        (c, "ORPHANED"),
    ]


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"address": "0x12"}, "address must be a 0x-prefixed 20-byte hex address"),
        ({"address": CAROL, "after": "abc"}, "after must be a TransferChange cursor"),
    ],
)
async def test_bad_subscription_arguments_are_clear_errors(
    served: str, transfers: Transfers, variables: dict[str, Any], expected: str
) -> None:
    client = await Client.open(served, FOR_ADDRESS, variables)
    try:
        message = await client.receive()
    finally:
        await client.close()
    assert message["type"] == "error"
    assert message["payload"][0]["message"].startswith(expected)


async def test_a_slow_consumer_is_cut_off_while_the_others_keep_receiving(
    clean_db: str, transfers: Transfers
) -> None:
    gateway = Gateway(settings_for(clean_db), queue_size=3)
    await gateway.start()
    wanted = TransferFilter(address=checksummed_address(CAROL))
    slow = follow_changes(gateway.feed, gateway.pool, wanted, None)
    fast = follow_changes(gateway.feed, gateway.pool, wanted, None)
    try:
        slow_first = asyncio.ensure_future(anext(slow))
        fast_first = asyncio.ensure_future(anext(fast))
        await until(lambda: len(gateway.feed._by_address) > 0)  # both registered
        await asyncio.sleep(0.1)
        got = []
        for nonce in range(1, 9):
            await transfers.add(nonce, sender=ALICE, recipient=CAROL)
            got.append(await (fast_first if nonce == 1 else anext(fast)))
        first = await slow_first  # the slow one read one change, then fell 7 behind (queue of 3)
        with pytest.raises(SubscriberTooSlow, match=f'after: "{first.id}"'):
            await anext(slow)
        assert [change.to_status for change in got] == [S.PENDING] * 8
        assert len({change.transfer_id for change in got}) == 8
    finally:
        await slow.aclose()
        await fast.aclose()
        await gateway.stop()


async def test_identical_subscriptions_share_one_encoding_per_change(
    served: str, transfers: Transfers
) -> None:
    tid = await transfers.add(1, sender=ALICE, recipient=CAROL)
    document = (
        "subscription($id: ID!, $after: String) {"
        " transferUpdated(id: $id, after: $after) { cursor status transfer { status } } }"
    )
    latest = await transfers.conn.fetchval("SELECT max(id) FROM transfer_status_history")
    # NOTE: the root field's arguments (here a different resume point) do not split the group.
    clients = [
        await Client.open(served, document, {"id": tid, "after": str(latest)}),
        await Client.open(served, document, {"id": tid, "after": str(latest)}),
        await Client.open(served, document, {"id": tid, "after": "0"}),
    ]
    try:
        replayed = await clients[2].change()
        await asyncio.sleep(0.3)  # let the three subscriptions register
        await transfers.move(tid, S.CONFIRMED)
        received = [await client.change() for client in clients]
    finally:
        for client in clients:
            await client.close()
    assert (replayed["cursor"], replayed["status"]) == (str(latest), "PENDING")
    assert received[0] == received[1] == received[2]
    assert received[0]["status"] == "CONFIRMED"
    assert received[0]["transfer"] == {"status": "CONFIRMED"}
    cursor = int(received[0]["cursor"])
    encodings = [
        key
        for payloads in list(subscriptions._PAYLOADS.values())
        for key in payloads._entries
        if key[1] == cursor and key[0][0] == document
    ]
    assert len(encodings) == 1  # one execution and one encoding served all three
