"""ferry.tasks.stop_task: the task ends, its failure surfaces, and the caller's own cancel is never lost."""

from __future__ import annotations

import asyncio

import pytest

from ferry.tasks import stop_task


async def test_a_running_task_is_cancelled_and_awaited() -> None:
    task = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    await stop_task(task)
    assert task.cancelled()


async def test_none_and_a_finished_task_are_fine() -> None:
    await stop_task(None)
    done = asyncio.create_task(asyncio.sleep(0, result=7))
    await done
    await stop_task(done)
    assert done.result() == 7


async def test_a_task_that_failed_raises_its_error() -> None:
    async def fail() -> None:
        raise RuntimeError("the loop died")

    task = asyncio.create_task(fail())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="the loop died"):
        await stop_task(task)


async def test_cancelling_the_caller_while_it_waits_is_not_swallowed() -> None:
    """The caller is cancelled while the task unwinds slowly: the caller must stop, not carry on.

    With ``task.cancel(); with suppress(CancelledError): await task`` the caller's own
    CancelledError was suppressed and it went on to ``after``.
    """
    unwinding = asyncio.Event()
    release = asyncio.Event()
    reached: list[str] = []

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            unwinding.set()
            await release.wait()  # NOTE: cleanup that takes a while
            raise

    async def stopper(task: asyncio.Task[None]) -> None:
        await stop_task(task)
        reached.append("after")

    task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    caller = asyncio.create_task(stopper(task))
    await unwinding.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert reached == []
    release.set()
    await asyncio.wait({task})
    assert task.cancelled()
