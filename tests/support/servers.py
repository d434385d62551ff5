"""An ASGI app served by a real uvicorn on a loopback port, for WebSocket tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from ferry.devchain import free_port

#: Seconds a server may take to start.
START_TIMEOUT = 30.0


@asynccontextmanager
async def on_loopback(app: ASGIApp, **options: Any) -> AsyncIterator[str]:
    """Serve ``app`` (uvicorn ``options`` added) until the block ends; yields its WebSocket URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on", **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(START_TIMEOUT):
        while not server.started:
            assert not task.done(), "the server stopped while starting"
            await asyncio.sleep(0.02)
    try:
        yield f"ws://127.0.0.1:{port}/graphql"
    finally:
        server.should_exit = True
        await task
