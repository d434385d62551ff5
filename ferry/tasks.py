"""Stopping background tasks without losing the caller's own cancellation.

Every service runs loops in background tasks and stops them the same way:
cancel, then wait for the task to end. The usual spelling,
``task.cancel(); with suppress(CancelledError): await task``, has a flaw: when
the *caller* is cancelled while it waits (a shutdown timeout, a test cancelling
its fixture), the ``CancelledError`` it receives is suppressed too, and the
caller carries on as if nothing had asked it to stop. ``stop_task`` waits with
``asyncio.wait``, which never raises the task's outcome, so only the caller's
own cancellation can interrupt the wait, and it propagates.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def stop_task(task: asyncio.Future[Any] | None) -> None:
    """Cancel ``task`` and wait until it has ended; its error, if it failed before, is raised.

    A task that ends by the cancellation is the normal case and raises nothing. A
    task that had already failed (or fails while unwinding) raises its exception
    here, as awaiting it would. Cancelling the caller while it waits cancels the
    wait, not silently: ``CancelledError`` propagates, the task stays cancelled.
    """
    if task is None:
        return
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.result()
