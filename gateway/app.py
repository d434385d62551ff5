"""The Starlette apps: GraphQL (HTTP and WebSocket) and health.

``gateway.server.run`` serves ``graphql_app`` and ``health_app`` on their own
ports around one shared ``Gateway``; ``create_app`` puts both on one app that
starts and stops its own ``Gateway`` (for tests and simple deployments).

Health: ``/health`` answers while the process runs; ``/ready`` answers 200 only
while the database answers ``SELECT 1`` and the LISTEN connection is up (503
otherwise), with each check in the JSON body; it also reports whether Redis (the
relayer's queue, which admin actions feed) answers, without failing on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL

from ferry.settings import Settings
from gateway.context import Gateway, GatewayContext
from gateway.http import GraphQLEndpoint
from gateway.protection import RequestGuard
from gateway.schema import schema
from gateway.subscriptions import LegacyWSHandler, RawWebSocketSend, TransportWSHandler

#: The readiness checks that make /ready answer 503 (redis is informational, for admins).
GATING_CHECKS = ("database", "listener")


class GraphQLView(GraphQL[GatewayContext, None]):
    """Strawberry's ASGI view, giving every request a context on the shared gateway."""

    # NOTE: live changes encoded once per group of identical subscriptions, server pings on
    # both protocols, slow consumers closed (gateway.subscriptions).
    graphql_transport_ws_handler_class = TransportWSHandler
    graphql_ws_handler_class = LegacyWSHandler

    def __init__(self, gateway: Gateway) -> None:
        settings = gateway.settings
        super().__init__(
            schema,
            graphql_ide="graphiql" if settings.gateway_graphiql else None,
            keep_alive=True,
            keep_alive_interval=settings.gateway_keepalive_interval,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL),
            # NOTE: credentials travel in the Authorization header (never cookies), so any
            # allowed origin may call; FERRY_GATEWAY_CORS_ORIGINS narrows it.
            allowed_origins=cors_origins(settings),
        )
        self._gateway = gateway

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> GatewayContext:
        return GatewayContext(gateway=self._gateway, request=request)


def cors_origins(settings: Settings) -> tuple[str, ...]:
    return tuple(o.strip() for o in settings.gateway_cors_origins.split(",") if o.strip()) or ("*",)


def protections(settings: Settings) -> list[Middleware]:
    """Request ids, time bound, CORS, then per-client rate and request size limits, in one pass
    (``gateway.protection.RequestGuard``) around the GraphQL routes."""
    return [
        Middleware(RawWebSocketSend),  # NOTE: outermost: the server's own send (gateway.subscriptions)
        Middleware(
            RequestGuard,
            rate=settings.gateway_rate_limit,
            max_body=settings.gateway_max_request_bytes,
            timeout=settings.gateway_request_timeout,
            cors_origins=cors_origins(settings),
        ),
    ]


def graphql_routes(gateway: Gateway) -> list[BaseRoute]:
    view = GraphQLView(gateway)
    # NOTE: JSON POSTs (queries, batches) take the prepared-document path of gateway.http;
    # everything else reaches Strawberry's view unchanged.
    return [Route("/graphql", GraphQLEndpoint(gateway, view)), WebSocketRoute("/graphql", view)]


def health_routes(gateway: Gateway) -> list[BaseRoute]:
    async def health(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "alive"})

    async def ready(_request: Request) -> JSONResponse:
        checks = await gateway.readiness()
        is_ready = all(checks[name] == "ok" for name in GATING_CHECKS)
        body = {"status": "ready" if is_ready else "not ready", "checks": checks}
        return JSONResponse(body, status_code=200 if is_ready else 503)

    return [Route("/health", health), Route("/ready", ready)]


def graphql_app(gateway: Gateway) -> Starlette:
    return Starlette(routes=graphql_routes(gateway), middleware=protections(gateway.settings))


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

    app = Starlette(
        routes=graphql_routes(gateway) + health_routes(gateway),
        middleware=protections(settings),
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return app
