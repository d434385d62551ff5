"""The Starlette apps: GraphQL (HTTP and WebSocket) and health.

``gateway.server.run`` serves ``graphql_app`` and ``health_app`` on their own
ports around one shared ``Gateway``; ``create_app`` puts both on one app that
starts and stops its own ``Gateway`` (for tests and simple deployments).

Health: ``/health`` answers while the process runs; ``/ready`` answers 200 only
while the database answers ``SELECT 1`` and the LISTEN connection is up (503
otherwise), with each check in the JSON body.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL

from ferry.settings import Settings
from gateway.context import Gateway, GatewayContext, Loaders
from gateway.schema import schema

#: Seconds between keep-alive messages on legacy graphql-ws connections.
KEEP_ALIVE_INTERVAL = 15.0


class GraphQLView(GraphQL[GatewayContext, None]):
    """Strawberry's ASGI view, giving every request a context on the shared gateway."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(
            schema,
            keep_alive=True,
            keep_alive_interval=KEEP_ALIVE_INTERVAL,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL),
            # NOTE: public, read-only data and no cookie credentials: wallet pages on any
            # origin may subscribe. Revisit when authentication arrives.
            allowed_origins=("*",),
        )
        self._gateway = gateway

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> GatewayContext:
        return GatewayContext(gateway=self._gateway, loaders=Loaders.on(self._gateway.pool), request=request)


def graphql_routes(gateway: Gateway) -> list[BaseRoute]:
    view = GraphQLView(gateway)
    return [Route("/graphql", view), WebSocketRoute("/graphql", view)]


def health_routes(gateway: Gateway) -> list[BaseRoute]:
    async def health(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "alive"})

    async def ready(_request: Request) -> JSONResponse:
        checks = await gateway.readiness()
        is_ready = all(value == "ok" for value in checks.values())
        body = {"status": "ready" if is_ready else "not ready", "checks": checks}
        return JSONResponse(body, status_code=200 if is_ready else 503)

    return [Route("/health", health), Route("/ready", ready)]


def graphql_app(gateway: Gateway) -> Starlette:
    return Starlette(routes=graphql_routes(gateway))


def health_app(gateway: Gateway) -> Starlette:
    return Starlette(routes=health_routes(gateway))


def create_app(settings: Settings, *, queue_size: int | None = None) -> Starlette:
    """``/graphql``, ``/health`` and ``/ready`` on one app whose lifespan runs a ``Gateway``."""
    gateway = Gateway(settings, queue_size=queue_size)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = Starlette(routes=graphql_routes(gateway) + health_routes(gateway), lifespan=lifespan)
    app.state.gateway = gateway
    return app
