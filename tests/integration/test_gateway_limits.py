"""Protection limits against the real app: depth, cost, aliases, introspection and GraphiQL
switches, request size, CORS, and per-client rate limits over HTTP and WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from ferry.devchain import free_port
from gateway.app import create_app
from gateway.protection import CORS_HEADERS, CORS_METHODS, Protection, RequestGuard
from gateway.request_id import RequestId, RequestTimeout
from tests.integration.test_gateway import WAIT, messages, settings_for, until

ClientFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def gateway_client(clean_db: str) -> ClientFactory:
    @asynccontextmanager
    async def open_client(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(settings_for(clean_db, **overrides))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
                yield http

    return open_client


async def post(client: httpx.AsyncClient, query: str, **variables: Any) -> httpx.Response:
    return await client.post("/graphql", json={"query": query, "variables": variables})


DEEP = (
    "{ transfers { edges { node { history { transfer { history { transfer { history { transfer { id }"
    " } } } } } } } } }"
)


async def test_depth_cost_and_alias_limits_refuse_before_running(gateway_client: ClientFactory) -> None:
    async with gateway_client(gateway_max_depth=6, gateway_max_cost=500, gateway_max_aliases=2) as client:
        assert messages((await post(client, DEEP)).json()) == [
            "the query is nested 10 levels deep; the limit is 6"
        ]
        costly = "query($n: Int) { transfers(first: $n) { edges { node { id amount status sender } } } }"
        body = (await post(client, costly, n=50)).json()
        assert body == {"data": {"transfers": {"edges": []}}}  # cost 1 + 50 × (1 + 1 + 4) = 301
        body = (
            await post(client, costly.replace("id amount", "id amount recipient token routeId nonce"), n=50)
        ).json()
        assert messages(body) == [
            "the query may cost 501 (fields × page sizes); the limit is 500: "
            "ask for smaller pages or fewer fields"
        ]
        aliased = "{ a: chains { id } b: chains { id } c: routes { id } }"
        assert messages((await post(client, aliased)).json()) == ["the query uses 3 aliases; the limit is 2"]
        fine = (await post(client, "{ a: chains { id } b: routes { id } }")).json()
        assert fine == {"data": {"a": [], "b": []}}


async def test_introspection_and_graphiql_can_be_turned_off(gateway_client: ClientFactory) -> None:
    introspect = "{ __schema { queryType { name } } }"
    async with gateway_client() as client:
        assert (await post(client, introspect)).json()["data"]["__schema"]["queryType"]["name"] == "Query"
        ide = await client.get("/graphql", headers={"accept": "text/html"})
        assert ide.status_code == 200
        assert "graphiql" in ide.text.lower()
    async with gateway_client(gateway_introspection=False, gateway_graphiql=False) as client:
        assert messages((await post(client, introspect)).json()) == [
            "introspection is turned off on this server; the schema is published as schema.graphql"
        ]
        assert (await post(client, "{ __typename }")).json() == {"data": {"__typename": "Query"}}
        ide = await client.get("/graphql", headers={"accept": "text/html"})
        assert ide.status_code == 404


async def test_oversized_requests_are_refused_cleanly(gateway_client: ClientFactory) -> None:
    async with gateway_client(gateway_max_request_bytes=1_024) as client:
        padded = "{ chains { id } }" + " " * 2_000
        response = await post(client, padded)
        assert response.status_code == 413
        assert messages(response.json()) == ["request too large: at most 1024 bytes; send a smaller query"]
        batch = await client.post("/graphql", json=[{"query": padded}] * 2)
        assert batch.status_code == 413


BY_ID = "query($id: ID!) { transfer(id: $id) { id status } }"


async def test_batches_up_to_the_limit_answer_each_operation_in_order(gateway_client: ClientFactory) -> None:
    async with gateway_client(gateway_max_batch=4, gateway_max_depth=6) as client:
        batch = [
            {"query": "{ chains { id } }"},
            {"query": BY_ID, "variables": {"id": "31337:0x5fbdb2315678afecb367f032d93f642f64180aa3:1"}},
            {"query": "{ noSuchField }"},
            {"query": DEEP},
        ]
        response = await client.post("/graphql", json=batch)
        assert response.status_code == 200
        first, second, unknown, deep = response.json()
        assert first == {"data": {"chains": []}}
        assert second == {"data": {"transfer": None}}
        assert messages(unknown) == ["Cannot query field 'noSuchField' on type 'Query'."]
        assert messages(deep) == ["the query is nested 10 levels deep; the limit is 6"]
        bad_id = await client.post("/graphql", json=[{"query": BY_ID, "variables": {"id": "nope"}}])
        assert messages(bad_id.json()[0])[0].startswith("'nope' is not a transfer id")


async def test_batches_over_the_limit_or_malformed_are_refused_with_a_graphql_error(
    gateway_client: ClientFactory,
) -> None:
    async with gateway_client(gateway_max_batch=3) as client:
        too_many = await client.post("/graphql", json=[{"query": "{ chains { id } }"}] * 4)
        assert too_many.status_code == 400
        assert messages(too_many.json()) == [
            "the batch holds 4 operations; the limit is 3: split it into smaller batches"
        ]
        empty = await client.post("/graphql", json=[])
        assert empty.status_code == 400
        assert messages(empty.json()) == ["the batch is empty: send at least one operation"]
        not_operations = await client.post("/graphql", json=[{"query": "{ chains { id } }"}, 7])
        assert not_operations.status_code == 400
        assert messages(not_operations.json()) == [
            'every operation of a batch must be an object with a "query" string'
        ]


async def test_each_operation_of_a_batch_takes_a_request_of_the_rate_limit(
    gateway_client: ClientFactory,
) -> None:
    # NOTE: 1 request/s allows bursts of 2: a batch of 3 is more than a fresh client has.
    async with gateway_client(gateway_rate_limit=1) as client:
        limited = await client.post("/graphql", json=[{"query": "{ __typename }"}] * 3)
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert messages(limited.json())[0].startswith(
            "rate limit: a batch takes one request per operation, more than this client has left"
        )


async def test_cors_allows_only_the_configured_origins(gateway_client: ClientFactory) -> None:
    preflight = {"origin": "https://wallet.example", "access-control-request-method": "POST"}
    async with gateway_client(gateway_cors_origins="https://wallet.example") as client:
        allowed = await client.options("/graphql", headers=preflight)
        assert allowed.headers.get("access-control-allow-origin") == "https://wallet.example"
        refused = await client.options("/graphql", headers={**preflight, "origin": "https://evil.example"})
        assert "access-control-allow-origin" not in refused.headers


async def test_http_rate_limit_answers_429_with_retry_after(gateway_client: ClientFactory) -> None:
    async with gateway_client(gateway_rate_limit=0.1) as client:
        assert (await post(client, "{ __typename }")).status_code == 200
        limited = await post(client, "{ __typename }")
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert messages(limited.json())[0].startswith(
            "rate limit: at most 0.1 requests per second per client"
        )


async def read_until_closed(ws: websockets.ClientConnection) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            await ws.recv()


async def test_websocket_rate_limit_closes_the_connection_with_a_reason(clean_db: str) -> None:
    port = free_port()
    app = create_app(settings_for(clean_db, gateway_rate_limit=0.1))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        await until(lambda: server.started)
        url = f"ws://127.0.0.1:{port}/graphql"
        async with websockets.connect(
            url, subprotocols=[websockets.Subprotocol("graphql-transport-ws")]
        ) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await read_until_closed(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4429
        assert closed.value.rcvd.reason.startswith("rate limit: at most 0.1 messages per second")
    finally:
        server.should_exit = True
        await task


# --- RequestGuard: the four guards in one pass answer what the four stacked middlewares answered ---


def _inner_app() -> Starlette:
    async def graphql_echo(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse({"data": {"echo": body.decode()}}, headers={"vary": "Accept-Encoding"})

    async def stuck(_request: Request) -> JSONResponse:
        await asyncio.Event().wait()  # never set: a request that would hang forever
        return JSONResponse({})

    async def health(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("alive")

    routes = [
        Route("/graphql", graphql_echo, methods=["GET", "POST", "OPTIONS"]),
        Route("/stuck", stuck),
    ]
    return Starlette(routes=[*routes, Route("/health", health)])


def _stacked(app: ASGIApp, origins: list[str]) -> ASGIApp:
    """What gateway.app installed before RequestGuard, outermost first."""
    limited = Protection(app, rate=0.001, max_body=200)
    cors = CORSMiddleware(
        limited, allow_origins=origins, allow_methods=CORS_METHODS, allow_headers=CORS_HEADERS
    )
    return RequestId(RequestTimeout(cors, seconds=STUCK_AFTER))


def _answer(response: httpx.Response) -> tuple[int, list[tuple[str, str]], str]:
    # NOTE: the seconds to wait in a 429 depend on when it was asked
    text = re.sub(r"retry in [0-9.]+ s", "retry in N s", response.text)
    headers = [(k, v) for k, v in response.headers.multi_items() if k != "retry-after"]
    return response.status_code, headers, text


#: The time bound of the comparison: long enough that no other request of the list reaches it
#: on a loaded machine (0.3 s once cut a plain request short), short enough to keep the test quick.
STUCK_AFTER = 1.5


@pytest.mark.parametrize("origins", [["https://wallet.example"], ["*"]])
async def test_request_guard_answers_exactly_as_the_stacked_middlewares(origins: list[str]) -> None:
    wallet, evil = {"origin": "https://wallet.example"}, {"origin": "https://evil.example"}
    preflight = {"access-control-request-method": "POST", "access-control-request-headers": "content-type"}
    requests: list[tuple[str, str, dict[str, str], bytes]] = [
        ("GET", "/health", {}, b""),
        ("OPTIONS", "/graphql", {**wallet, **preflight}, b""),  # preflight: no rate token
        ("OPTIONS", "/graphql", {**evil, **preflight}, b""),
        ("POST", "/graphql", {**wallet, "content-type": "application/json"}, b'{"query": "{ a }"}'),
        ("POST", "/graphql", evil, b"{}"),  # the bucket is empty now: 429, with CORS headers
        ("POST", "/graphql", {}, b"x" * 500),  # 413 by Content-Length
        ("GET", "/stuck", wallet, b""),  # not rate limited; cut off at STUCK_AFTER
        ("GET", "/health", evil, b""),
        ("POST", "/graphql", {}, b"{}"),  # no Origin, and the answer has its own Vary header
    ]
    answers = []
    for app in (
        RequestGuard(_inner_app(), rate=0.001, max_body=200, timeout=STUCK_AFTER, cors_origins=origins),
        _stacked(_inner_app(), origins),
    ):
        seen = []
        for number, (method, path, headers, body) in enumerate(requests):
            # NOTE: the last two POSTs come from other client addresses, whose buckets are still full
            client = ({5: "10.0.0.2", 8: "10.0.0.3"}.get(number, "10.0.0.1"), 4000)
            transport = httpx.ASGITransport(app=app, client=client)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                sent = {**headers, "x-request-id": f"rid-{number}"}
                seen.append(_answer(await http.request(method, path, headers=sent, content=body)))
        answers.append(seen)
    guarded, stacked = answers
    assert guarded == stacked
    statuses = [status for status, _, _ in guarded]
    assert statuses == [200, 200, 200 if origins == ["*"] else 400, 200, 429, 413, 200, 200, 200]
    assert f"took longer than {STUCK_AFTER:g} s" in guarded[6][2]
    assert all(("x-request-id", f"rid-{n}") in headers for n, (_, headers, _) in enumerate(guarded))
