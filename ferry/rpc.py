"""A small, strict JSON-RPC client for EVM nodes (the hot path of indexer and relayer).

web3.py's request formatting costs far more than the network on the log path, so
Ferry speaks JSON-RPC directly here and keeps web3.py for contracts and deploys.
Strictness is the point: an answer that is not well-formed JSON-RPC, or that
belongs to another chain, raises ``RpcGarbage`` instead of flowing into the
database. Errors never contain the endpoint URL (it may hold an API key); the
endpoint is named by ``redact_url``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson


class RpcError(Exception):
    """The node answered with a JSON-RPC error object."""

    def __init__(self, endpoint: str, method: str, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{endpoint}: {method} failed with code {code}: {message}")
        self.code = code
        self.message = message
        self.data = data


class RpcUnavailable(Exception):
    """The node could not be reached, timed out, or answered HTTP errors (incl. 429)."""

    def __init__(self, endpoint: str, reason: str, *, rate_limited: bool = False) -> None:
        super().__init__(f"{endpoint}: {reason}")
        self.rate_limited = rate_limited


class RpcGarbage(Exception):
    """The node answered something that is not a valid response to what was asked."""


def redact_url(url: str) -> str:
    """``scheme://host:port`` only: paths and query strings often carry API keys."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


#: Called after every HTTP round trip: (method, seconds, the exception raised or None).
RequestObserver = Callable[[str, float, BaseException | None], None]


class RpcClient:
    """JSON-RPC over HTTP with optional batching. One instance per endpoint.

    ``observer``, when given, hears of every round trip (for per-endpoint health
    metrics); it must be cheap and must not raise.
    """

    def __init__(self, url: str, *, timeout: float = 10.0, observer: RequestObserver | None = None) -> None:
        self.url = url
        self.name = redact_url(url)
        self.observer = observer
        self._ids = itertools.count(1)
        self._http = httpx.AsyncClient(timeout=timeout, headers={"content-type": "application/json"})

    async def close(self) -> None:
        await self._http.aclose()

    async def call(self, method: str, *params: Any) -> Any:
        request = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
        body = await self._post(request, method)
        return self._result(body, request["id"], method)

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Several calls in one HTTP request; results in call order; the first error raises."""
        if not calls:
            return []
        requests: list[dict[str, Any]] = [
            {"jsonrpc": "2.0", "id": next(self._ids), "method": m, "params": list(p)} for m, p in calls
        ]
        body = await self._post(requests, calls[0][0])
        if not isinstance(body, list) or len(body) != len(requests):
            raise RpcGarbage(f"{self.name}: batch answer is not a list of {len(requests)} responses")
        by_id = {item.get("id"): item for item in body if isinstance(item, dict)}
        return [self._result(by_id.get(r["id"]), r["id"], r["method"]) for r in requests]

    async def batch_results(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any | RpcError]:
        """Several calls in one HTTP request; each item's result, or its ``RpcError``, in call order.

        Unlike ``batch`` an error answer to one call does not hide the others' answers (a batch of
        ``eth_sendRawTransaction`` where one is "already known" still reports the rest). A
        transport failure or a malformed answer raises as for ``call``.
        """
        if not calls:
            return []
        requests: list[dict[str, Any]] = [
            {"jsonrpc": "2.0", "id": next(self._ids), "method": m, "params": list(p)} for m, p in calls
        ]
        body = await self._post(requests, calls[0][0])
        if not isinstance(body, list) or len(body) != len(requests):
            raise RpcGarbage(f"{self.name}: batch answer is not a list of {len(requests)} responses")
        by_id = {item.get("id"): item for item in body if isinstance(item, dict)}
        answers: list[Any | RpcError] = []
        for request in requests:
            try:
                answers.append(self._result(by_id.get(request["id"]), request["id"], request["method"]))
            except RpcError as exc:
                answers.append(exc)
        return answers

    async def _post(self, payload: Any, method: str) -> Any:
        if self.observer is None:
            return await self._send(payload, method)
        started = time.perf_counter()
        try:
            body = await self._send(payload, method)
        except BaseException as exc:
            self.observer(method, time.perf_counter() - started, exc)
            raise
        self.observer(method, time.perf_counter() - started, None)
        return body

    async def _send(self, payload: Any, method: str) -> Any:
        request = self._http.build_request("POST", self.url, json=payload)
        try:
            response = await self._http.send(request, stream=True)
            try:
                if response.status_code == 429:
                    raise RpcUnavailable(self.name, "rate limited (HTTP 429)", rate_limited=True)
                if response.status_code >= 400 and response.status_code != 400:
                    raise RpcUnavailable(self.name, f"{method} answered HTTP {response.status_code}")
                # NOTE: the body is read into our own bytes, not ``response.content``: httpx's
                # response objects sit in reference cycles, so the body they keep (MBs for an
                # eth_getLogs answer) waited for the cycle collector; a backfill piled them up.
                content = b"".join([chunk async for chunk in response.aiter_bytes()])
            finally:
                await response.aclose()
        except httpx.TimeoutException:
            raise RpcUnavailable(self.name, f"{method} timed out") from None
        except httpx.HTTPError as exc:
            raise RpcUnavailable(self.name, f"{method} failed: {type(exc).__name__}") from None
        try:
            # NOTE: orjson parses a large eth_getLogs answer several times faster than json.
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            raise RpcGarbage(f"{self.name}: {method} answered malformed JSON") from None

    def _result(self, body: Any, request_id: Any, method: str) -> Any:
        if not isinstance(body, dict) or body.get("id") != request_id:
            raise RpcGarbage(f"{self.name}: {method} answer is not a JSON-RPC response to this request")
        error = body.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise RpcGarbage(f"{self.name}: {method} answered a malformed error")
            raise RpcError(
                self.name, method, int(error.get("code", 0)), str(error.get("message", "")), error.get("data")
            )
        if "result" not in body:
            raise RpcGarbage(f"{self.name}: {method} answer has neither result nor error")
        return body["result"]

    # Typed helpers for the calls Ferry makes most.

    async def chain_id(self) -> int:
        return _quantity(await self.call("eth_chainId"), "eth_chainId")

    async def block_number(self) -> int:
        return _quantity(await self.call("eth_blockNumber"), "eth_blockNumber")

    async def get_block(self, number: int | str) -> dict[str, Any] | None:
        tag = hex(number) if isinstance(number, int) else number
        block = await self.call("eth_getBlockByNumber", tag, False)
        if block is not None and not isinstance(block, dict):
            raise RpcGarbage(f"{self.name}: eth_getBlockByNumber answered a {type(block).__name__}")
        return block

    async def get_logs(
        self, addresses: Sequence[str], topics: Sequence[Any], from_block: int, to_block: int
    ) -> list[dict[str, Any]]:
        result = await self.call(
            "eth_getLogs",
            {
                "address": list(addresses),
                "topics": list(topics),
                "fromBlock": hex(from_block),
                "toBlock": hex(to_block),
            },
        )
        if not isinstance(result, list):
            raise RpcGarbage(f"{self.name}: eth_getLogs answered a {type(result).__name__}, not a list")
        return result


def _quantity(value: Any, method: str) -> int:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise RpcGarbage(f"{method} answered {value!r}, not a hex quantity")
    try:
        return int(value, 16)
    except ValueError:
        raise RpcGarbage(f"{method} answered {value!r}, not a hex quantity") from None


def quantity(value: Any, what: str = "quantity") -> int:
    """Parse a hex quantity from a node answer, raising RpcGarbage when it is not one."""
    return _quantity(value, what)
