"""Every gateway response carries a request id, and the logs of that request carry it too."""

from __future__ import annotations

import json
import logging

from tests.integration.test_gateway_limits import ClientFactory, gateway_client, post

__all__ = ["gateway_client"]


async def test_a_request_gets_an_id_and_an_acceptable_client_id_is_kept(
    gateway_client: ClientFactory,
) -> None:
    async with gateway_client() as client:
        fresh = await post(client, "{ transfers(first: 1) { totalCount } }")
        kept = await client.post(
            "/graphql",
            json={"query": "{ transfers(first: 1) { totalCount } }"},
            headers={"x-request-id": "wallet-42.a_b"},
        )
        refused = await client.post(
            "/graphql",
            json={"query": "{ transfers(first: 1) { totalCount } }"},
            headers={"x-request-id": "bad id\nwith newline"},
        )
    assert len(fresh.headers["x-request-id"]) == 32
    assert kept.headers["x-request-id"] == "wallet-42.a_b"
    assert refused.headers["x-request-id"] not in {"bad id\nwith newline", ""}


async def test_log_lines_written_while_serving_a_request_carry_its_id() -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from ferry.logs import JsonFormatter
    from gateway.request_id import RequestId

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(JsonFormatter("gateway"))
    served = logging.getLogger("ferry.test.request_id")
    served.addHandler(handler)
    served.setLevel(logging.INFO)

    async def endpoint(_request: Request) -> PlainTextResponse:
        served.info("serving a query")
        return PlainTextResponse("ok")

    app = RequestId(Starlette(routes=[Route("/", endpoint)]))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
            response = await http.get("/", headers={"x-request-id": "rid-7"})
    finally:
        served.removeHandler(handler)
    assert response.headers["x-request-id"] == "rid-7"
    assert len(lines) == 1
    assert json.loads(lines[0])["request_id"] == "rid-7"


async def test_a_request_that_runs_too_long_is_answered_with_a_clear_error() -> None:
    import asyncio

    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from gateway.request_id import RequestTimeout

    async def stuck(_request: Request) -> PlainTextResponse:
        await asyncio.Event().wait()  # never set: a request that would hang forever
        return PlainTextResponse("unreachable")

    async def quick(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = RequestTimeout(Starlette(routes=[Route("/stuck", stuck), Route("/quick", quick)]), seconds=0.2)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        cut = await http.get("/stuck")
        fine = await http.get("/quick")
    assert cut.status_code == 200
    assert "took longer than 0.2 s" in cut.json()["errors"][0]["message"]
    assert fine.text == "ok"
