"""A small fault-injecting JSON-RPC proxy on 127.0.0.1, in front of a real node (anvil).

Runs in the test's event loop. ``mode`` decides what every request meets:

- ``ok``: forwarded unchanged;
- ``drop``: the connection is closed without an answer;
- ``delay``: forwarded after ``delay`` seconds (longer than the client's timeout);
- ``rate_limit``: HTTP 429 for the next ``budget`` requests, then forwarded;
- ``malformed``: HTTP 200 with a body that is not JSON;
- ``wrong_chain``: ``eth_chainId`` answers another chain id;
- ``lagging``: the head is ``lag`` blocks behind the node's (``eth_blockNumber``
  lowered, blocks above it unknown).

Only HTTP/1.1 with Content-Length (what httpx sends) is understood.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx

Mode = str


class RpcProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.mode: Mode = "ok"
        self.delay = 3.0
        self.lag = 3
        self.budget = 0
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._http = httpx.AsyncClient(timeout=30)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def start(self) -> RpcProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        await self._http.aclose()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                body = await _read_request(reader)
                if body is None:
                    return
                self.requests += 1
                answer = await self._answer(body)
                if answer is None:
                    return  # drop: close without a word
                status, payload = answer
                reason = {200: "OK", 429: "Too Many Requests"}.get(status, "Error")
                head = f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                writer.write(f"{head}content-length: {len(payload)}\r\n\r\n".encode() + payload)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _answer(self, body: bytes) -> tuple[int, bytes] | None:
        mode = self.mode
        if mode == "drop":
            return None
        if mode == "malformed":
            return 200, b'{"jsonrpc": "2.0", "id": 1, "resu'
        if mode == "rate_limit" and self.budget > 0:
            self.budget -= 1
            return 429, b'{"error": "slow down"}'
        if mode == "delay":
            await asyncio.sleep(self.delay)
        request = json.loads(body)
        if mode == "lagging":
            return 200, json.dumps(await self._lagging(request)).encode()
        response = await self._http.post(
            self.upstream, content=body, headers={"content-type": "application/json"}
        )
        payload = response.content
        if mode == "wrong_chain":
            payload = json.dumps(_rewrite_chain_id(request, response.json())).encode()
        return response.status_code, payload

    async def _lagging(self, request: Any) -> Any:
        if isinstance(request, list):
            return [await self._lagging(item) for item in request]
        response = (await self._http.post(self.upstream, json=request)).json()
        head = int((await self._http.post(self.upstream, json=_call("eth_blockNumber"))).json()["result"], 16)
        shown = max(head - self.lag, 0)
        method, params = request.get("method"), request.get("params") or []
        if method == "eth_blockNumber":
            response["result"] = hex(shown)
        elif method == "eth_getBlockByNumber" and params and params[0] not in ("earliest",):
            number = head if params[0] in ("latest", "pending", "safe", "finalized") else int(params[0], 16)
            if number > shown:
                response["result"] = None
        return response


def _call(method: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 0, "method": method, "params": []}


def _rewrite_chain_id(request: Any, response: Any) -> Any:
    if isinstance(request, list):
        return [_rewrite_chain_id(q, r) for q, r in zip(request, response, strict=False)]
    if request.get("method") == "eth_chainId" and "result" in response:
        response["result"] = hex(int(response["result"], 16) + 1)
    return response


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    length = 0
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    return await reader.readexactly(length)
