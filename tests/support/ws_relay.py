"""Small WebSocket stand-ins on 127.0.0.1 for the new-heads tests.

- ``TcpRelay``: forwards raw bytes to a real node (anvil serves WebSocket on its
  HTTP port), so a ``ws://`` URL through it is a real subscription; ``cut()``
  closes every connection and stops listening (the WebSocket path dies),
  ``restore()`` listens again on the same port.
- ``FakeHeads``: a WebSocket server that answers ``eth_chainId`` and
  ``eth_subscribe`` and then misbehaves: ``malformed`` sends text that is not JSON,
  ``wrong_chain`` answers another chain id, ``far_future`` notifies a well-formed
  header whose timestamp is no date (year 584 billion).

Both run in the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from websockets.asyncio.server import Server, ServerConnection, serve


class TcpRelay:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> TcpRelay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def cut(self) -> None:
        """Stop listening and close every relayed connection (both sides)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        await self.start()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # NOTE: the client's side is registered before the upstream connection opens, so a cut() in
        # between closes it too; every side is aborted however this ends (cut, cancel, error).
        sides = [writer]
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            sides.append(up_writer)
            if writer not in self._writers:
                return  # NOTE: cut while the upstream connection opened
            self._writers.add(up_writer)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)
        except OSError:
            return
        finally:
            for side in sides:
                self._writers.discard(side)
                side.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    finally:
        writer.transport.abort()


class FakeHeads:
    def __init__(self, chain_id: int, mode: str) -> None:
        self.chain_id, self.mode = chain_id, mode
        self.connections = 0
        self._server: Server | None = None

    @property
    def ws_url(self) -> str:
        assert self._server is not None
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> FakeHeads:
        self._server = await serve(self._serve, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, socket: ServerConnection) -> None:
        self.connections += 1
        async for message in socket:
            request = json.loads(message)
            if request["method"] == "eth_chainId":
                served = self.chain_id + (1 if self.mode == "wrong_chain" else 0)
                await socket.send(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": hex(served)}))
            elif request["method"] == "eth_subscribe":
                await socket.send(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": "0x1"}))
                if self.mode == "far_future":  # NOTE: well-formed, but its timestamp is no date
                    header = {"number": "0x1", "hash": "0x" + "11" * 32, "parentHash": "0x" + "22" * 32,
                              "timestamp": hex(2**64 - 1)}  # fmt: skip
                    body = {"subscription": "0x1", "result": header}
                    await socket.send(
                        json.dumps({"jsonrpc": "2.0", "method": "eth_subscription", "params": body})
                    )
                    continue
                await socket.send('{"jsonrpc": "2.0", "method": "eth_subscription", "params": {')
