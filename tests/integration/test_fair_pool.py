"""A FairPool hands connections out in the order they were asked for; asyncpg's own lets newcomers in."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from ferry.db import FairPool, create_pool


async def _no_reset(_connection: asyncpg.Connection) -> None:
    """Release without a reset query, as the gateway's read pool does (no await in between)."""


async def _order_of_service(pool: asyncpg.Pool) -> list[str]:
    """Who got the pool's one connection, in order, when a newcomer is ready at each release.

    ``holder`` has the connection; ``w0``..``w3`` queue up behind it. As each task
    lets go of the connection, a newcomer ``nK`` wakes up just after the connection
    goes back to the pool and before the waiter woken for it runs, as a request whose
    bytes arrived meanwhile does on a busy server.
    """
    served: list[str] = []
    gates = [asyncio.Event() for _ in range(4)]
    released = 0

    async def use(name: str) -> None:
        nonlocal released
        async with pool.acquire() as connection:
            served.append(name)
            await connection.fetchval("SELECT 1")
            if released < len(gates):
                # NOTE: runs before the release's own step (queued after this one), so the
                # newcomer's wake-up is queued after the release and before the waiter's
                asyncio.get_running_loop().call_soon(gates[released].set)
                released += 1

    async def newcomer(number: int) -> None:
        await gates[number].wait()
        await use(f"n{number}")

    newcomers = [asyncio.create_task(newcomer(number)) for number in range(4)]
    async with pool.acquire():
        waiters = []
        for number in range(4):
            waiters.append(asyncio.create_task(use(f"w{number}")))
            await asyncio.sleep(0.001)  # NOTE: they queue in this order
        served.append("holder")
    await asyncio.gather(*waiters, *newcomers)
    return served


async def test_connections_go_first_come_first_served(clean_db: str) -> None:
    pool = await create_pool(clean_db, min_size=1, max_size=1, fair=True, reset=_no_reset)
    try:
        assert isinstance(pool, FairPool)
        served = await _order_of_service(pool)
    finally:
        await pool.close()
    assert served[:5] == ["holder", "w0", "w1", "w2", "w3"], served


async def test_asyncpg_pool_lets_newcomers_jump_the_queue(clean_db: str) -> None:
    """Why FairPool exists: if asyncpg's pool becomes fair, this fails and FairPool can go."""
    pool = await create_pool(clean_db, min_size=1, max_size=1, reset=_no_reset)
    try:
        served = await _order_of_service(pool)
    finally:
        await pool.close()
    assert served.index("n0") < served.index("w1"), served


@pytest.mark.parametrize("fair", [True, False])
async def test_a_turn_that_times_out_gives_the_slot_back(clean_db: str, fair: bool) -> None:
    pool = await create_pool(clean_db, min_size=1, max_size=1, fair=fair)
    try:
        async with pool.acquire():
            with pytest.raises(asyncio.TimeoutError):
                await pool.acquire(timeout=0.05)
        assert await pool.fetchval("SELECT 2") == 2  # the timed-out turn did not keep the slot
        connection = await pool.acquire()  # the await form, released by hand
        await pool.release(connection)
        assert await pool.fetchval("SELECT 3") == 3
    finally:
        await pool.close()
