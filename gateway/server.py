"""The gateway process: GraphQL, health and metrics servers in one event loop.

``run`` starts three uvicorn servers together (``asyncio.gather``):

- health (``settings.graphql_host:health_port``) at once, so ``/health`` answers and
  ``/ready`` says 503 while the database is still unreachable;
- metrics (``settings.metrics_host:metrics_port``, Prometheus; port 0 disables);
- GraphQL (``settings.graphql_host:graphql_port``) once the read pool and the
  change feed are up.

SIGTERM or SIGINT asks every server to finish its open requests and stop; a
second SIGINT forces it. If one server stops (say its port is taken), the others
stop too and ``run`` raises, so a supervisor sees the failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Iterator, Sequence

import uvicorn
from prometheus_client import make_asgi_app
from starlette.types import ASGIApp

from ferry import observability
from ferry.settings import Settings
from ferry.tasks import stop_task
from gateway.app import create_app, graphql_app, health_app
from gateway.context import Gateway

__all__ = ["create_app", "run"]

log = logging.getLogger(__name__)


class GatewayStartupError(RuntimeError):
    """A server of the gateway could not start (its message names which and where)."""


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to ``run`` (it serves several at once)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _server(app: ASGIApp, host: str, port: int) -> _Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="off",
        log_config=None,  # keep ferry.logs' handlers (JSON, secret redaction)
        access_log=False,
        ws="websockets-sansio",
        # NOTE: subscription messages are a few hundred bytes; per-connection deflate state
        # (zlib windows) would cost tens of KB per subscriber and CPU on every send.
        ws_per_message_deflate=False,
    )
    return _Server(config)


async def run(settings: Settings) -> None:
    gateway = Gateway(settings)
    servers = {
        "health": _server(health_app(gateway), settings.graphql_host, settings.health_port),
        "GraphQL": _server(graphql_app(gateway), settings.graphql_host, settings.graphql_port),
    }
    if settings.metrics_port:
        servers["metrics"] = _server(make_asgi_app(), settings.metrics_host, settings.metrics_port)
    stopping = asyncio.Event()
    _stop_on_signals(list(servers.values()), stopping)

    async def graphql_when_ready() -> None:
        if await _unless_stopping(gateway.start(), stopping):
            # NOTE: start-up objects live as long as the process: keep the collector off them,
            # it dominated worst-case latency in large fan-outs (ARCHITECTURE.md).
            observability.settle_heap()
            await servers["GraphQL"].serve()

    runs = [
        _serve(name, graphql_when_ready() if name == "GraphQL" else server.serve(), servers, stopping)
        for name, server in servers.items()
    ]
    try:
        outcomes = await asyncio.gather(*runs, return_exceptions=True)
    finally:
        _restore_signals()
        await gateway.stop()
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    log.info("gateway stopped")


async def _serve(
    name: str, serving: Awaitable[None], servers: dict[str, _Server], stopping: asyncio.Event
) -> None:
    """Run one server; when it ends, for whatever reason, ask the others to end too."""
    try:
        await serving
    except SystemExit:
        # NOTE: uvicorn exits the process when it cannot bind; turn that into an error we own.
        config = servers[name].config
        raise GatewayStartupError(
            f"the {name} server could not start on {config.host}:{config.port} (is the port already in use?)"
        ) from None
    finally:
        _stop_all(list(servers.values()), stopping)


def _stop_all(servers: Sequence[_Server], stopping: asyncio.Event) -> None:
    stopping.set()
    for server in servers:
        server.should_exit = True


def _stop_on_signals(servers: Sequence[_Server], stopping: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stopping.is_set() and sig == signal.SIGINT:
            for server in servers:
                server.force_exit = True
        log.info("received %s, stopping", sig.name)
        _stop_all(servers, stopping)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)


def _restore_signals() -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)


async def _unless_stopping(starting: Awaitable[None], stopping: asyncio.Event) -> bool:
    """Await ``starting`` unless a stop is asked first; True when it finished."""
    start_task = asyncio.ensure_future(starting)
    stop_asked = asyncio.ensure_future(stopping.wait())
    await asyncio.wait({start_task, stop_asked}, return_when=asyncio.FIRST_COMPLETED)
    stop_asked.cancel()
    if start_task.done():
        start_task.result()
        return not stopping.is_set()
    await stop_task(start_task)
    return False
