"""The indexer's ``/health`` (the process is alive) and ``/ready`` (every chain it leads progresses).

A tiny HTTP/1.1 server on ``127.0.0.1:<indexer_health_port>``: the indexer has no
web framework and needs none for two fixed answers. ``/ready`` answers 503 with
the stalled chains while the watchdog sees one of them stuck, 200 otherwise (a
standby is ready: it is doing its job, which is to wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Returns the names of the chains that are stalled now.
StalledChains = Callable[[], list[str]]


class HealthServer:
    def __init__(self, host: str, port: int, stalled: StalledChains) -> None:
        self.host, self.port, self._stalled = host, port, stalled
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen (port 0 disables); a port in use is logged, not fatal: indexing matters more."""
        if not self.port:
            return
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            log.error(
                "cannot serve /health and /ready on %s:%d (%s); set FERRY_INDEXER_HEALTH_PORT to a free port",
                self.host,
                self.port,
                exc.strerror,
            )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request = await reader.readuntil(b"\r\n\r\n")
            path = request.split(b" ", 2)[1].decode("latin-1") if request.count(b" ") >= 2 else ""
            status, body = self._answer(path)
            payload = json.dumps(body).encode()
            writer.write(
                f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\n"
                "connection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def _answer(self, path: str) -> tuple[str, dict[str, object]]:
        if path == "/health":
            return "200 OK", {"status": "ok"}
        if path == "/ready":
            stalled = self._stalled()
            if stalled:
                return "503 Service Unavailable", {"status": "stalled", "chains": stalled}
            return "200 OK", {"status": "ready"}
        return "404 Not Found", {"error": "try /health or /ready"}
