"""One GraphQL execution per (subscription document, variables, change), shared by its subscribers.

Thousands of wallets subscribe with the same document; without sharing, every
committed change is executed once per subscriber (graphql-core walks the same
selection set over the same change thousands of times). ``SharedEventExecution``
keys each subscription event by the operation (the parsed document is shared
through the parser cache), the variables and the change's cursor, and hands every
subscriber the same result.

Live changes of WebSocket subscriptions no longer come this way (``gateway.subscriptions``
encodes them once per group); this serves what still runs through Strawberry: replays of
stored changes (a reconnect storm replays the same changes to many clients) and
subscriptions over other transports.

The result is kept ``SHARE_SECONDS`` only: nested fields such as ``transfer``
show the transfer as it is now, so a subscriber replaying the same change much
later gets a fresh execution. Awaiters are shielded from each other: one
subscriber disconnecting never cancels the execution the others wait for.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from typing import Any

from graphql import OperationDefinitionNode
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from gateway.types import TransferChange

SHARE_SECONDS = 1.0
MAX_SHARED = 1_024

_Entry = tuple[float, OperationDefinitionNode, Any]


class SharedEventExecution(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor, sharing subscription event results between identical subscriptions."""

    _shared: dict[tuple[int, str, str], _Entry] = {}  # noqa: RUF012 (process-wide on purpose)

    def execute_operation(self, serially: bool | None = None) -> Any:
        change = self.root_value
        if serially is not False or not isinstance(change, TransferChange):
            return super().execute_operation(serially)
        key = (id(self.operation), _variables_key(self.variable_values.coerced), change.cursor)
        now = time.monotonic()
        entry = self._shared.get(key)
        # NOTE: compare the node itself too: an id may be reused once a document is freed.
        if entry is not None and entry[0] > now and entry[1] is self.operation:
            return _share(entry[2])
        result = super().execute_operation(serially)
        if isinstance(result, Awaitable):
            result = asyncio.ensure_future(result)
        self._remember(key, (now + SHARE_SECONDS, self.operation, result), now)
        return _share(result)

    @classmethod
    def _remember(cls, key: tuple[int, str, str], entry: _Entry, now: float) -> None:
        if len(cls._shared) >= MAX_SHARED:
            for stale in [k for k, (expires, _, _) in cls._shared.items() if expires <= now]:
                del cls._shared[stale]
            if len(cls._shared) >= MAX_SHARED:
                cls._shared.clear()
        cls._shared[key] = entry


def _share(result: Any) -> Any:
    return asyncio.shield(result) if isinstance(result, asyncio.Future) else result


def _variables_key(variables: dict[str, Any] | None) -> str:
    return json.dumps(variables or {}, sort_keys=True, default=str)
