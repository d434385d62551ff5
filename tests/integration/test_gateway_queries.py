"""The gateway's read API against a real PostgreSQL: filters, orders, both paging directions,
lookups by transaction, amounts with decimals, confirmations, chains, routes, tokens and stats.

Transfers are written through the same code paths as the real writers (see test_gateway.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway import roots
from gateway.app import create_app
from gateway.errors import MASKED_MESSAGE
from tests.integration.test_gateway import (
    ALICE,
    BOB,
    BRIDGE,
    CAROL,
    T0,
    S,
    Transfers,
    graphql,
    messages,
    settings_for,
    transfers,
)

__all__ = ["transfers"]  # NOTE: the imported fixture must stay a module attribute for pytest

TOKEN_A = "0x0000000000000000000000000000000000000A01"
TOKEN_B = "0x0000000000000000000000000000000000000B01"
CHAINS_YAML = f"""
chains:
  - id: 31337
    name: alpha
    rpc_urls: ["http://127.0.0.1:1"]
    confirmations: 3
    bridges:
      FTT: {{bridge: "{BRIDGE}", token: "{TOKEN_A}", decimals: 18}}
      USD: {{bridge: "{BRIDGE}", token: "{TOKEN_B}", decimals: 6}}
  - id: 31338
    name: beta
    rpc_urls: ["http://127.0.0.1:2"]
    confirmations: 5
    bridges:
      FTT: {{bridge: "{BRIDGE}", token: "{TOKEN_A}", decimals: 18}}
      USD: {{bridge: "{BRIDGE}", token: "{TOKEN_B}", decimals: 6}}
routes:
  - {{token: FTT, source: 31337, target: 31338, max_amount: 5000, daily_cap: 90000}}
  - {{token: FTT, source: 31338, target: 31337}}
  - {{token: USD, source: 31337, target: 31338}}
"""


@pytest.fixture
async def client(clean_db: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    chains_file = tmp_path / "chains.yaml"
    chains_file.write_text(CHAINS_YAML)
    app = create_app(settings_for(clean_db, max_page_size=50, chains_file=chains_file))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            yield http


PAGE = """
query($filter: TransferFilterInput, $order: TransferOrderInput, $first: Int, $after: String,
      $last: Int, $before: String) {
  transfers(filter: $filter, orderBy: $order, first: $first, after: $after, last: $last, before: $before) {
    totalCount
    edges { cursor node { id amount } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}
"""


async def page(client: httpx.AsyncClient, **variables: Any) -> dict[str, Any]:
    body = await graphql(client, PAGE, **variables)
    assert "errors" not in body, body
    connection: dict[str, Any] = body["data"]["transfers"]
    return connection


def ids(connection: dict[str, Any]) -> list[str]:
    return [edge["node"]["id"] for edge in connection["edges"]]


@pytest.fixture
async def varied(transfers: Transfers) -> dict[str, str]:
    """Five transfers differing in every filtered field; returns name -> id."""
    made = {
        "a": await transfers.add(1, sender=ALICE, recipient=BOB, amount=100, locked_at=T0),
        "b": await transfers.add(
            2, sender=BOB, recipient=CAROL, amount=300, locked_at=T0 + timedelta(hours=1)
        ),
        "c": await transfers.add(
            3, sender=CAROL, recipient=ALICE, amount=200, locked_at=T0 + timedelta(hours=2), token="USD"
        ),
        "d": await transfers.add(
            4,
            sender=ALICE,
            recipient=CAROL,
            amount=500,
            locked_at=T0 + timedelta(hours=3),
            chain_id=31338,
            target_chain_id=31337,
        ),
        "e": await transfers.add(5, sender=BOB, recipient=BOB, amount=400, locked_at=T0 + timedelta(hours=4)),
    }
    await transfers.move(made["b"], S.CONFIRMED)
    await transfers.move(made["e"], S.ORPHANED)
    return made


@pytest.mark.parametrize(
    ("transfer_filter", "expected"),
    [
        ({"sender": ALICE}, "da"),
        ({"recipient": CAROL.lower()}, "db"),
        ({"address": ALICE}, "dca"),
        ({"status": ["CONFIRMED", "ORPHANED"]}, "eb"),
        ({"status": ["PENDING"]}, "dca"),
        ({"sourceChainId": 31338}, "d"),
        ({"targetChainId": 31338}, "ecba"),
        ({"routeId": "USD:31337-31338"}, "c"),
        ({"token": "FTT"}, "edba"),
        ({"amountMin": "200", "amountMax": "400"}, "ecb"),
        ({"lockedAfter": "2026-01-01T01:00:00Z", "lockedBefore": "2026-01-01T03:00:00+00:00"}, "cb"),
        ({"address": BOB, "status": ["PENDING", "ORPHANED"], "token": "FTT"}, "ea"),
        ({}, "edcba"),
    ],
)
async def test_filters_keep_exactly_the_matching_transfers(
    client: httpx.AsyncClient, varied: dict[str, str], transfer_filter: dict[str, Any], expected: str
) -> None:
    connection = await page(client, filter=transfer_filter)
    assert ids(connection) == [varied[name] for name in expected]
    assert connection["totalCount"] == len(expected)


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ({"field": "AMOUNT", "direction": "ASC"}, "acbed"),
        ({"field": "AMOUNT", "direction": "DESC"}, "debca"),
        ({"field": "LOCKED_AT", "direction": "ASC"}, "abcde"),
        ({"field": "UPDATED_AT", "direction": "DESC"}, "ebdca"),
    ],
)
async def test_orders_page_forward_and_backward_over_every_transfer_once(
    client: httpx.AsyncClient, varied: dict[str, str], order: dict[str, str], expected: str
) -> None:
    forward: list[str] = []
    after = None
    while True:
        connection = await page(client, order=order, first=2, after=after)
        forward += ids(connection)
        assert connection["pageInfo"]["hasPreviousPage"] is (after is not None)
        if not connection["pageInfo"]["hasNextPage"]:
            break
        after = connection["pageInfo"]["endCursor"]
    assert forward == [varied[name] for name in expected]

    backward: list[str] = []
    before = None
    while True:
        connection = await page(client, order=order, last=2, before=before)
        backward = ids(connection) + backward
        if not connection["pageInfo"]["hasPreviousPage"]:
            break
        before = connection["pageInfo"]["startCursor"]
    assert backward == forward


@pytest.mark.parametrize("direction", ["ASC", "DESC"])
async def test_ties_in_the_order_page_in_the_order_the_transfers_were_recorded(
    client: httpx.AsyncClient, transfers: Transfers, direction: str
) -> None:
    """Same lock time and amount: insertion order (``transfers.seq``), not the ids' text order."""
    recorded = [await transfers.add(nonce, amount=7, locked_at=T0) for nonce in (9, 10, 100, 11)]
    assert sorted(recorded) != recorded  # NOTE: "...:10" < "...:100" < "...:11" < "...:9" as text
    expected = recorded if direction == "ASC" else recorded[::-1]
    for field in ("LOCKED_AT", "AMOUNT"):
        order = {"field": field, "direction": direction}
        first = await page(client, order=order, first=2)
        rest = await page(client, order=order, first=2, after=first["pageInfo"]["endCursor"])
        assert ids(first) + ids(rest) == expected


@pytest.fixture
async def around_alice(transfers: Transfers) -> dict[int, tuple[datetime, int, bool, str]]:
    """24 transfers, locked three to a second: ALICE sends, receives, sends to herself, or is
    not involved (by nonce % 4); every third one CONFIRMED. Returns nonce -> (locked at, amount,
    CONFIRMED, id) of the 18 ALICE is in (nonces have two digits, so id order is nonce order).
    """
    roles = [(ALICE, BOB), (CAROL, ALICE), (ALICE, ALICE), (BOB, CAROL)]
    alices: dict[int, tuple[datetime, int, bool, str]] = {}
    for nonce in range(10, 34):
        sender, recipient = roles[nonce % 4]
        locked_at, amount = T0 + timedelta(seconds=(nonce - 10) // 3), 1000 + nonce * 7 % 24
        made = await transfers.add(
            nonce, sender=sender, recipient=recipient, amount=amount, locked_at=locked_at
        )
        confirmed = nonce % 3 == 0
        if confirmed:
            await transfers.move(made, S.CONFIRMED)
        if ALICE in (sender, recipient):
            alices[nonce] = (locked_at, amount, confirmed, made)
    return alices


@pytest.mark.parametrize("spelling", [ALICE, ALICE.lower()])
@pytest.mark.parametrize("statuses", [None, ["CONFIRMED"]])
@pytest.mark.parametrize(
    "order",
    [
        {"field": "LOCKED_AT", "direction": "DESC"},  # the UNION ALL of two index scans
        {"field": "LOCKED_AT", "direction": "ASC"},
        {"field": "AMOUNT", "direction": "DESC"},  # no index after the address: the plain query
    ],
)
async def test_an_address_pages_both_ways_over_each_of_its_transfers_once(
    client: httpx.AsyncClient,
    around_alice: dict[int, tuple[datetime, int, bool, str]],
    spelling: str,
    statuses: list[str] | None,
    order: dict[str, str],
) -> None:
    kept = {n: made for n, made in around_alice.items() if statuses is None or made[2]}
    by_amount = order["field"] == "AMOUNT"
    expected = [kept[n][3] for n in sorted(kept, key=lambda n: (kept[n][1] if by_amount else kept[n][0], n))]
    if order["direction"] == "DESC":
        expected.reverse()
    wanted: dict[str, Any] = {"address": spelling, "status": statuses}

    forward: list[str] = []
    after = None
    while True:
        connection = await page(client, filter=wanted, order=order, first=4, after=after)
        forward += ids(connection)
        assert connection["totalCount"] == len(expected)
        if not connection["pageInfo"]["hasNextPage"]:
            break
        after = connection["pageInfo"]["endCursor"]
    assert forward == expected

    backward: list[str] = []
    before = None
    while True:
        connection = await page(client, filter=wanted, order=order, last=3, before=before)
        backward = ids(connection) + backward
        if not connection["pageInfo"]["hasPreviousPage"]:
            break
        before = connection["pageInfo"]["startCursor"]
    assert backward == expected


async def test_paging_arguments_that_do_not_fit_are_clear_errors(
    client: httpx.AsyncClient, varied: dict[str, str]
) -> None:
    by_amount = await page(client, order={"field": "AMOUNT"}, first=1)
    cursor = by_amount["pageInfo"]["endCursor"]
    body = await graphql(client, PAGE, after=cursor)
    assert messages(body) == [
        "after is a cursor of a list in another order: pass the same orderBy as that list"
    ]
    body = await graphql(client, PAGE, first=2, last=2)
    assert messages(body) == ["pass first/after to page forward or last/before to page backward, not both"]
    body = await graphql(client, PAGE, last=51)
    assert messages(body) == ["last must be between 1 and 50 (got 51); page with cursors instead"]
    body = await graphql(client, PAGE, filter={"amountMin": "-1"})
    assert messages(body) == [
        "filter.amountMin must be a whole number of the token's smallest unit, as a decimal string"
    ]
    body = await graphql(client, PAGE, filter={"sender": "0xabc"})
    assert messages(body) == [
        "filter.sender must be a 0x-prefixed 20-byte hex address, checksummed (EIP-55) or lowercase"
    ]
    body = await graphql(client, PAGE, filter={"address": ALICE.replace("C", "c", 1)})
    assert messages(body) == [
        "filter.address must be a 0x-prefixed 20-byte hex address, checksummed (EIP-55) or lowercase "
        "(its checksum does not match: check the address, or send it lowercase)"
    ]


async def test_transfer_by_source_tx_lists_every_lock_of_the_transaction(
    client: httpx.AsyncClient, transfers: Transfers
) -> None:
    tx = "0x" + "ab" * 32
    first = await transfers.add(7, tx_hash=tx, log_index=0)
    second = await transfers.add(8, tx_hash=tx, log_index=3)
    await transfers.add(9)
    query = "query($c: BigInt!, $h: String!) { transferBySourceTx(chainId: $c, txHash: $h) { id } }"
    body = await graphql(client, query, c=31337, h=tx.upper().replace("0X", "0x"))
    assert [t["id"] for t in body["data"]["transferBySourceTx"]] == [first, second]
    body = await graphql(client, query, c=31338, h=tx)
    assert body["data"]["transferBySourceTx"] == []
    body = await graphql(client, query, c=31337, h="0x1234")
    assert messages(body) == ["txHash must be a 0x-prefixed 32-byte hex transaction hash"]


async def test_transfer_shows_amount_with_decimals_confirmations_route_and_error(
    client: httpx.AsyncClient, transfers: Transfers
) -> None:
    tid = await transfers.add(1, amount=1_234_500_000_000_000_000, block_number=100)
    usd = await transfers.add(2, amount=2_500_000, token="USD")
    await transfers.conn.execute(
        "INSERT INTO chains (chain_id, name, indexed_block, head_block, head_seen_at)"
        " VALUES (31337, 'alpha', 101, 101, now())"
    )
    await transfers.conn.execute(
        "UPDATE transfers SET last_error = 'rpc https://node.example/key123 timed out' WHERE id = $1", tid
    )
    query = """query($id: ID!) { transfer(id: $id) {
        amount decimals amountFormatted confirmations confirmationsRequired lastError
        route { id paused limits { maxAmount dailyCap } } } }"""
    shown = (await graphql(client, query, id=tid))["data"]["transfer"]
    assert shown == {
        "amount": "1234500000000000000",
        "decimals": 18,
        "amountFormatted": "1.2345",
        "confirmations": 2,
        "confirmationsRequired": 2,
        "lastError": "rpc <url> timed out",
        "route": {
            "id": "FTT:31337-31338",
            "paused": False,
            "limits": {"maxAmount": "5000", "dailyCap": "90000"},
        },
    }
    assert (await graphql(client, query, id=usd))["data"]["transfer"]["amountFormatted"] == "2.5"


async def test_chains_routes_and_tokens_join_the_chains_file_and_the_database(
    client: httpx.AsyncClient, transfers: Transfers
) -> None:
    await transfers.conn.execute(
        "INSERT INTO chains (chain_id, name, indexed_block, head_block, head_seen_at)"
        " VALUES (31337, 'alpha', 90, 100, now()), (31338, 'beta', 50, 50, now() - interval '1 hour')"
    )
    await transfers.conn.execute(
        "INSERT INTO routes (route_id, token, source_chain_id, target_chain_id, paused, paused_reason)"
        " VALUES ('FTT:31338-31337', 'FTT', 31338, 31337, true, 'maintenance')"
    )
    body = await graphql(
        client,
        "{ chains { id name headBlock indexedBlock lag confirmations paused health }"
        "  routes { id paused pausedReason limits { maxAmount } }"
        "  tokens { symbol deployments { chainId decimals } routes { id } } }",
    )
    assert "errors" not in body, body
    assert body["data"]["chains"] == [
        {
            "id": 31337,
            "name": "alpha",
            "headBlock": 100,
            "indexedBlock": 90,
            "lag": 10,
            "confirmations": 3,
            "paused": False,
            "health": "LAGGING",
        },
        {
            "id": 31338,
            "name": "beta",
            "headBlock": 50,
            "indexedBlock": 50,
            "lag": 0,
            "confirmations": 5,
            "paused": False,
            "health": "STALLED",
        },
    ]
    assert body["data"]["routes"] == [
        {"id": "FTT:31337-31338", "paused": False, "pausedReason": None, "limits": {"maxAmount": "5000"}},
        {
            "id": "FTT:31338-31337",
            "paused": True,
            "pausedReason": "maintenance",
            "limits": {"maxAmount": None},
        },
        {"id": "USD:31337-31338", "paused": False, "pausedReason": None, "limits": {"maxAmount": None}},
    ]
    usd = next(token for token in body["data"]["tokens"] if token["symbol"] == "USD")
    assert usd == {
        "symbol": "USD",
        "deployments": [{"chainId": 31337, "decimals": 6}, {"chainId": 31338, "decimals": 6}],
        "routes": [{"id": "USD:31337-31338"}],
    }


async def test_stats_count_volume_success_and_latency_over_the_window(
    client: httpx.AsyncClient, transfers: Transfers
) -> None:
    now = datetime.now(UTC)
    released = await transfers.add(1, amount=10**18, locked_at=now - timedelta(minutes=10))
    failed = await transfers.add(2, amount=3 * 10**18, locked_at=now - timedelta(minutes=5))
    await transfers.add(3, amount=10**18, locked_at=now - timedelta(minutes=1))
    await transfers.add(4, amount=7, locked_at=now - timedelta(days=3))  # outside a DAY
    await transfers.move(released, S.CONFIRMED)
    await transfers.move(released, S.RELEASED)
    await transfers.conn.execute(
        "UPDATE transfers SET release_block_time = lock_block_time + interval '30 seconds' WHERE id = $1",
        released,
    )
    await transfers.move(failed, S.CONFIRMED)
    await transfers.move(failed, S.FAILED, reason="reverted")
    query = """query($w: StatsWindow!, $r: String) { stats(window: $w, routeId: $r) {
        count volume { token amount amountFormatted } successRate latencyP50 latencyP99 } }"""
    stats = (await graphql(client, query, w="DAY", r="FTT:31337-31338"))["data"]["stats"]
    assert stats == {
        "count": 3,
        "volume": [{"token": "FTT", "amount": str(5 * 10**18), "amountFormatted": "5"}],
        "successRate": 0.5,
        "latencyP50": 30.0,
        "latencyP99": 30.0,
    }
    week = (await graphql(client, query, w="WEEK", r=None))["data"]["stats"]
    assert week["count"] == 4
    other = (await graphql(client, query, w="DAY", r="USD:31337-31338"))["data"]["stats"]
    assert other == {"count": 0, "volume": [], "successRate": None, "latencyP50": None, "latencyP99": None}


# --- planned operations (gateway.roots) answer exactly what graphql-core and Strawberry answer ---

ALL_PLAIN_FIELDS = """
    id routeId token sourceChainId sourceBridge nonce targetChainId sender recipient amount decimals
    amountFormatted status confirmationsRequired lockTxHash lockBlockNumber lockedAt releaseTxHash
    releaseBlockNumber releasedAt attempts lastError updatedAt
"""
BY_ID = f"query($id: ID!) {{ transfer(id: $id) {{ {ALL_PLAIN_FIELDS} }} }}"
#: (document, variables, True when it is answered by a plan).
SAME_ANSWERS: list[tuple[str, dict[str, Any], bool]] = [
    (BY_ID, {"id": "<a>"}, True),
    (BY_ID, {"id": "<released>"}, True),
    (BY_ID, {"id": f"31337:{BRIDGE.lower()}:999"}, True),  # no such transfer: null
    (BY_ID, {"id": "not a transfer id"}, False),  # UserError
    (BY_ID, {"id": 5}, False),  # ID accepts an integer, which is then a bad transfer id
    (BY_ID, {"id": True}, False),  # a variable graphql-core refuses
    (BY_ID, {}, False),  # a required variable missing
    (
        """query Two($x: ID!) { first: transfer(id: $x) { ...Plain }
           second: transfer(id: "<b>") { id status sender } }
           fragment Plain on Transfer { id amount amountFormatted sender status }""",
        {"x": "<c>"},
        True,
    ),
    (
        """query($a: String!, $n: Int) { transfers(filter: {address: $a}, first: $n) {
           edges { node { id status amount sender recipient lockTxHash lockedAt } }
           pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } }""",
        {"a": ALICE.lower(), "n": 2},
        True,
    ),
    (
        """{ transfers(orderBy: {field: AMOUNT, direction: ASC}, last: 2,
           filter: {status: [PENDING, CONFIRMED], amountMin: "150"}) { edges { node { id amount } } } }""",
        {},
        True,
    ),
    ("query($n: Int) { transfers(first: $n) { edges { node { id } } } }", {"n": 0}, False),  # page size
    ('{ transfers(filter: {address: "0x12"}) { edges { node { id } } } }', {}, False),  # bad address
    # not plannable: a resolver below the root, a directive, a field without a direct read
    ("query($id: ID!) { transfer(id: $id) { id confirmations history { status } } }", {"id": "<a>"}, False),
    ("{ transfers(first: 3) { totalCount edges { cursor node { id } } } }", {}, False),
    (
        "query($id: ID!, $s: Boolean!) { transfer(id: $id) { id sender @include(if: $s) } }",
        {"id": "<a>", "s": True},
        False,
    ),
    ('{ chains { id name } transfer(id: "<a>") { id } }', {}, False),
]


@pytest.fixture
async def planned_transfers(transfers: Transfers) -> dict[str, str]:
    made = {
        "a": await transfers.add(1, sender=ALICE, recipient=BOB, amount=100),
        "b": await transfers.add(2, sender=BOB, recipient=ALICE, amount=10**18 + 5, token="USD"),
        "c": await transfers.add(
            3, sender=CAROL, recipient=ALICE, amount=200, locked_at=T0 + timedelta(hours=1)
        ),
        "released": await transfers.add(4, sender=ALICE, recipient=CAROL, amount=10**30),
    }
    await transfers.move(made["c"], S.CONFIRMED)
    await transfers.move(made["released"], S.CONFIRMED)
    await transfers.move(made["released"], S.SUBMITTED, tx_hash="0x" + "ab" * 32)
    await transfers.move(made["released"], S.RELEASED, tx_hash="0x" + "ab" * 32, block_number=120)
    await transfers.conn.execute(
        "UPDATE transfers SET attempts = 2, last_error = 'nonce too low at https://rpc.example/key',"
        " release_block_time = lock_block_time + interval '30 seconds' WHERE id = $1",
        made["released"],
    )
    return made


def _filled(value: Any, made: dict[str, str]) -> Any:
    if isinstance(value, str):
        for name, made_id in made.items():
            value = value.replace(f"<{name}>", made_id)
        return value
    if isinstance(value, dict):
        return {key: _filled(item, made) for key, item in value.items()}
    return value


def _canonical(body: bytes) -> bytes:
    """The JSON re-encoded compactly, key order kept: equal when the answers are the same."""
    return orjson.dumps(orjson.loads(body))


@pytest.mark.parametrize(("document", "variables", "planned"), SAME_ANSWERS)
async def test_planned_operations_answer_byte_for_byte_what_strawberry_answers(
    client: httpx.AsyncClient,
    planned_transfers: dict[str, str],
    document: str,
    variables: dict[str, Any],
    planned: bool,
) -> None:
    document, variables = _filled(document, planned_transfers), _filled(variables, planned_transfers)
    before = (roots.COUNTS.planned, roots.COUNTS.handed_back)
    posted = await client.post("/graphql", json={"query": document, "variables": variables})
    taken = (roots.COUNTS.planned - before[0], roots.COUNTS.handed_back - before[1])
    # NOTE: a GET reaches Strawberry's own view (parse, validate, extensions, graphql-core): the reference.
    reference = await client.get("/graphql", params={"query": document, "variables": json.dumps(variables)})
    assert posted.status_code == reference.status_code == 200, (posted.text, reference.text)
    assert _canonical(posted.content) == _canonical(reference.content)
    answered_by_plan = taken == (1, 0)
    assert answered_by_plan == planned, (taken, posted.text)
    if planned:  # and the planned answer is a real one, not a shared fallback
        assert "errors" not in posted.json()


async def test_a_plan_hands_back_to_graphql_core_when_a_read_fails(
    client: httpx.AsyncClient, planned_transfers: dict[str, str], transfers: Transfers
) -> None:
    """A row the plan cannot show (a status the API does not know) errors exactly as on graphql-core."""
    query = "query($id: ID!) { transfer(id: $id) { id status } }"
    variables = {"id": planned_transfers["a"]}
    assert (await client.post("/graphql", json={"query": query, "variables": variables})).json()["data"]
    # NOTE: this session's own database; the check constraint comes back below.
    check = await transfers.conn.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'transfers_status_known'"
    )
    await transfers.conn.execute("ALTER TABLE transfers DROP CONSTRAINT transfers_status_known")
    try:
        await transfers.conn.execute("UPDATE transfers SET status = 'MYSTERY' WHERE id = $1", variables["id"])
        handed_back = roots.COUNTS.handed_back
        posted = await client.post("/graphql", json={"query": query, "variables": variables})
        reference = await client.get("/graphql", params={"query": query, "variables": json.dumps(variables)})
    finally:
        await transfers.conn.execute("UPDATE transfers SET status = 'PENDING' WHERE status = 'MYSTERY'")
        await transfers.conn.execute(f"ALTER TABLE transfers ADD CONSTRAINT transfers_status_known {check}")
    assert roots.COUNTS.handed_back == handed_back + 1
    assert _canonical(posted.content) == _canonical(reference.content)
    assert messages(posted.json()) == [MASKED_MESSAGE]
