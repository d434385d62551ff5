"""Batch linger: a lone transfer goes out alone once the linger is over, never waiting for company.

The submitter runs its real loop (``ChainSubmitter.run``) against chain B, whose
``poll_interval`` is set far longer than any wait in these tests, so the only
thing that can make it send a partial batch by itself is its linger timer. What
is checked is the order of events and what each release transaction carries,
never how long something took:

- linger 60 s (the most allowed): transfers handed over one by one wait (however many rounds the
  submitter runs) and leave together when the batch is full;
- linger 0.2 s: a lone transfer is sent alone, without another transfer arriving
  and without any wake-up from outside, and the next one goes in its own batch;
- the boundary itself, with the age of the hand-off set in the database: just
  under the linger the transfer waits and the next wake-up is due when the
  linger ends (not at the poll interval); just over it, it is sent alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from ferry.devstack import DevNetwork
from ferry.settings import Settings
from relayer.context import CONTEXT_KEY, RelayerContext, open_context
from relayer.jobs import relay_transfer
from relayer.submitter import ChainSubmitter
from tests.integration.test_relayer import WAIT_LIMIT, chains, locked_transfer, statuses

#: Chain B's poll interval here: longer than WAIT_LIMIT, so only the linger can wake the submitter.
SLOW_POLL = 2 * WAIT_LIMIT


class CountingSubmitter(ChainSubmitter):
    """Chain B's submitter as the worker builds it, counting its rounds."""

    rounds = 0

    async def send_round(self) -> float:
        wait = await super().send_round()
        self.rounds += 1
        return wait


OpenRelayer = Callable[..., Any]


@pytest.fixture
async def open_relayer(
    dev_chains: DevNetwork, clean_db: str, redis_url: str, queue_name: str, tmp_path: Path
) -> AsyncIterator[OpenRelayer]:
    opened: list[RelayerContext] = []
    document = yaml.safe_load(dev_chains.chains_file.read_text())
    for chain in document["chains"]:
        if chain["id"] == 31338:
            chain["poll_interval"] = SLOW_POLL
    chains_file = tmp_path / "chains-slow-poll.yaml"
    chains_file.write_text(yaml.safe_dump(document, sort_keys=False))

    async def open_with(**settings: Any) -> RelayerContext:
        values = {"queue_name": queue_name, "metrics_port": 0, "chains_file": chains_file, **settings}
        context = await open_context(dev_chains.settings(clean_db, redis_url, **values))
        opened.append(context)
        return context

    yield open_with
    for context in opened:
        await context.close()


def counting_submitter(relayer: RelayerContext) -> CountingSubmitter:
    return CountingSubmitter(
        relayer.chains.chain_by_id[31338],
        relayer.rpc[31338],
        relayer.pool,
        relayer.settings,
        relayer.submitter,
        relayer.signers,
    )


@contextlib.asynccontextmanager
async def running(submitter: ChainSubmitter) -> AsyncIterator[None]:
    """The submitter's own loop (lease, resume, rounds) in the background."""
    task = asyncio.create_task(submitter.run())
    try:
        await until(lambda: submitter.leading, "the submitter did not take the lead")
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(condition: Callable[[], Any], failure: str) -> None:
    """Poll ``condition`` (a failure guard, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT
    while not condition():
        assert loop.time() < deadline, failure
        await asyncio.sleep(0.02)


async def hand_over(relayer: RelayerContext, network: DevNetwork) -> str:
    tid, _, _ = await locked_transfer(network, relayer.pool)
    assert await relay_transfer({CONTEXT_KEY: relayer}, tid) == "handed_over"
    return tid


async def rounds_pass(submitter: CountingSubmitter, count: int) -> None:
    """Wake the submitter until it has run ``count`` more rounds."""
    target = submitter.rounds + count

    def woken() -> bool:
        submitter.wake.set()
        return submitter.rounds >= target

    await until(woken, f"the submitter did not run {count} rounds")


async def batches(relayer: RelayerContext) -> list[list[str]]:
    """The transfers each release transaction carries, in nonce order."""
    rows = await relayer.pool.fetch(
        """
        SELECT array_agg(o.transfer_id ORDER BY o.transfer_id) AS transfers
          FROM relay_txs AS x JOIN relay_tx_orders AS o ON o.tx_id = x.id
         GROUP BY x.nonce ORDER BY x.nonce
        """
    )
    return [list(row["transfers"]) for row in rows]


async def submitted(relayer: RelayerContext, tid: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT
    while (await statuses(relayer.pool, [tid]))[tid] == "CONFIRMED":
        assert loop.time() < deadline, f"{tid} was not sent within the failure guard"
        await asyncio.sleep(0.05)


async def test_long_linger_keeps_a_partial_batch_waiting_until_it_is_full(
    dev_chains: DevNetwork, open_relayer: OpenRelayer
) -> None:
    relayer = await open_relayer(batch_linger=60, batch_size=3)
    submitter = counting_submitter(relayer)
    async with running(submitter):
        first = await hand_over(relayer, dev_chains)
        await rounds_pass(submitter, 3)
        second = await hand_over(relayer, dev_chains)
        await rounds_pass(submitter, 3)
        assert await batches(relayer) == [], "a partial batch left before its linger was over"
        assert set((await statuses(relayer.pool, [first, second])).values()) == {"CONFIRMED"}

        third = await hand_over(relayer, dev_chains)
        submitter.wake.set()
        await submitted(relayer, third)

    assert await batches(relayer) == [sorted([first, second, third])]


async def test_short_linger_sends_a_lone_transfer_alone_without_waiting_for_company(
    dev_chains: DevNetwork, open_relayer: OpenRelayer
) -> None:
    relayer = await open_relayer(batch_linger=0.2, batch_size=50)
    submitter = counting_submitter(relayer)
    async with running(submitter):
        first = await hand_over(relayer, dev_chains)
        # NOTE: one wake-up, as the hand-off's NOTIFY gives; after that only the linger timer
        # can bring the submitter back before SLOW_POLL, which is longer than the guard.
        submitter.wake.set()
        await submitted(relayer, first)
        second = await hand_over(relayer, dev_chains)
        submitter.wake.set()
        await submitted(relayer, second)

    assert await batches(relayer) == [[first], [second]]


async def set_waited(relayer: RelayerContext, tid: str, seconds: float) -> None:
    await relayer.pool.execute(
        "UPDATE relay_notes SET vetted_at = now() - make_interval(secs => $2) WHERE transfer_id = $1",
        tid,
        seconds,
    )


async def test_partial_batch_waits_until_the_linger_ends_and_then_goes_alone(
    dev_chains: DevNetwork, open_relayer: OpenRelayer
) -> None:
    linger = 30.0
    relayer = await open_relayer(batch_linger=linger, batch_size=50)
    settings: Settings = relayer.settings
    assert chains(dev_chains)[1].chain_id == 31338
    submitter = counting_submitter(relayer)
    await submitter.resume()
    tid = await hand_over(relayer, dev_chains)

    await set_waited(relayer, tid, linger - 5)
    wait = await submitter.tick()
    assert await batches(relayer) == []
    # The next round is due when the linger ends (5 s from now), not at the 120 s poll interval.
    assert 0 < wait <= 5
    assert wait < settings.chains().chain_by_id[31338].poll_interval

    await set_waited(relayer, tid, linger + 1)
    await submitter.tick()
    assert await batches(relayer) == [[tid]]
    assert (await statuses(relayer.pool, [tid]))[tid] == "SUBMITTED"
