"""Minimal GraphQL clients for tests: HTTP queries and graphql-transport-ws subscriptions."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import websockets


async def query(url: str, document: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(url, json={"query": document, "variables": variables or {}})
    body: dict[str, Any] = response.json()
    return body


async def subscribe(
    url: str, document: str, variables: dict[str, Any] | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Yield each ``next`` payload of one subscription (graphql-transport-ws)."""
    ws_url = url.replace("http://", "ws://", 1)
    async with websockets.connect(
        ws_url, subprotocols=[websockets.Subprotocol("graphql-transport-ws")]
    ) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        ack = json.loads(await ws.recv())
        assert ack["type"] == "connection_ack", ack
        await ws.send(
            json.dumps(
                {"id": "1", "type": "subscribe", "payload": {"query": document, "variables": variables or {}}}
            )
        )
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "ping":
                await ws.send(json.dumps({"type": "pong"}))
            elif message["type"] == "next":
                yield message["payload"]
            elif message["type"] in {"error", "complete"}:
                raise AssertionError(f"subscription ended: {message}")
