"""A round of relayer work run on every NOTIFY and every ``interval`` seconds.

The sweeper and the operator desk share this shape: the database is the source of
truth, a notification only says "look now", and the periodic round catches up on
anything a lost notification (or a LISTEN reconnect) hid. A round that fails is
logged and tried again at the next wake-up; the loop outlives database and Redis
outages. A notification that arrives during a round makes the next round start at
once, so nothing announced is left waiting for the interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from ferry.db import Listener
from ferry.tasks import stop_task

log = logging.getLogger(__name__)

#: Longest wait for the first LISTEN connection before start-up gives up.
LISTEN_TIMEOUT_SECONDS = 30.0


class NotifiedLoop:
    """Runs ``round_`` on each NOTIFY on ``channel`` (after ``debounce``) and every ``interval``."""

    def __init__(
        self,
        round_: Callable[[], Awaitable[object]],
        *,
        dsn: str,
        channel: str,
        interval: float,
        name: str,
        debounce: float = 0.0,
    ) -> None:
        self._round = round_
        self._interval = interval
        self._name = name
        self._debounce = debounce
        self._wake = asyncio.Event()
        self._listener = Listener(dsn, channel, self._on_notify, self._on_reconnect)
        self._task: asyncio.Task[None] | None = None
        self._later: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        async with asyncio.timeout(LISTEN_TIMEOUT_SECONDS):
            await self._listener.start()
        self._task = asyncio.create_task(self._run(), name=self._name)

    def again_after(self, delay: float) -> None:
        """Run another round ``delay`` seconds from now (unless a wake-up comes first)."""
        if self._later is not None:
            self._later.cancel()
        self._later = asyncio.get_running_loop().call_later(delay, self._wake.set)

    async def stop(self) -> None:
        if self._later is not None:
            self._later.cancel()
        await stop_task(self._task)
        await self._listener.stop()

    def _on_notify(self, _payload: str) -> None:
        self._wake.set()

    async def _on_reconnect(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._round()
            except Exception:
                log.exception("%s failed; retrying in %.1f s", self._name, self._interval)
            # NOTE: asyncio.timeout, not wait_for, which can swallow a cancel on Python 3.11
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
                if self._debounce:
                    await asyncio.sleep(self._debounce)
