"""Resource observability shared by every process: event-loop lag, and helpers around it.

CPU, resident memory and open file descriptors come from prometheus_client's
default process collector (``process_cpu_seconds_total``,
``process_resident_memory_bytes``, ``process_open_fds``) on every ``/metrics``.
What it cannot see is the event loop: a blocking call or a garbage-collection
pause delays every coroutine of the process at once. ``watch_event_loop`` sleeps
a fixed interval over and over and records how late each wake-up came
(``ferry_event_loop_lag_seconds``); ``with_event_loop_watch`` runs a process's
main coroutine with the watcher beside it; ``ferry.cli`` starts every process so:

    observability.prepare(name, settings.chains())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(observability.with_event_loop_watch(run(settings)))

``prepare`` creates, at zero, the series a process will count into for every
configured chain and route. A labelled counter has no series until its first
increment, so without this an error or reorg counter would be missing rather
than 0: ``rate()``/``increase()`` would see nothing at the first event, and an
alert on it could never fire on the first occurrence. Only label values known
from the configuration and from fixed vocabularies are prepared, never
addresses or hashes.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

from ferry import metrics
from ferry.domain import TransferStatus
from ferry.settings import ChainsConfig
from ferry.tasks import stop_task

T = TypeVar("T")

#: Seconds between two lag samples: often enough to catch a pause, cheap enough to ignore.
SAMPLE_INTERVAL = 0.25


#: The collector's young-generation threshold once a process is up (the default is 700).
YOUNG_GENERATION = 20_000


def settle_heap() -> None:
    """Keep the collector off start-up objects and out of the way of work in flight.

    Call once a process has built what it keeps for its lifetime (settings, ABIs, pools,
    the schema). ``gc.freeze()`` moves those objects out of every generation, so full
    collections no longer walk them. The young-generation threshold rises from 700 to
    ``YOUNG_GENERATION``: the objects of work in flight (64 requests on the gateway, a
    batch of receipts, logs of a range) crossed 700 many times a second and started a
    collection each time, although they die by reference count and leave almost no
    cyclic garbage. In the gateway under load that was about a tenth of its CPU, and the
    full collections it led to were 45-57 ms stalls (docs/graphql.md, Performance).
    """
    gc.freeze()
    gc.set_threshold(YOUNG_GENERATION, 10, 10)


async def watch_event_loop(interval: float = SAMPLE_INTERVAL) -> None:
    """Observe the event loop's lag every ``interval`` seconds, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        expected = loop.time() + interval
        await asyncio.sleep(interval)
        metrics.EVENT_LOOP_LAG.observe(max(loop.time() - expected, 0.0))


async def with_event_loop_watch(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` with ``watch_event_loop`` beside it; the watcher stops when ``main`` ends."""
    watcher = asyncio.create_task(watch_event_loop(), name="observability:event-loop-lag")
    try:
        return await main
    finally:
        await stop_task(watcher)


#: Statuses each process moves transfers into (ferry_transfer_transitions_total).
_STATUSES_SET_BY = {
    "indexer": ("PENDING", "CONFIRMED", "ORPHANED", "RELEASED", "FINALIZED"),
    "relayer": ("CONFIRMED", "SUBMITTED", "RELEASED", "HELD", "FAILED"),
}
_INDEXER_ERROR_KINDS = ("rpc", "database", "reorg", "unexpected")
_INDEXER_EVENTS = ("TokensLocked", "TransferReleased")
_RPC_ERROR_KINDS = ("unavailable", "garbage", "rate_limited")
_RELEASE_OUTCOMES = ("sent", "rebroadcast", "replaced", "dropped", "reverted", "reorged", "mined")
_REPLACEMENT_REASONS = ("overdue", "outbid")
_FAILURE_REASONS = ("unsafe", "revert", "liquidity", "operator")


def prepare(process: str, config: ChainsConfig) -> None:
    """Create the zero series ``process`` will count into, for every configured chain and route."""
    for route in config.routes:
        for status in _STATUSES_SET_BY.get(process, ()):
            metrics.TRANSFER_TRANSITIONS.labels(route=route.route_id, status=TransferStatus(status).value)
            metrics.TRANSFER_VOLUME.labels(route=route.route_id, status=TransferStatus(status).value)
    if process == "indexer":
        _prepare_indexer(config)
    elif process == "relayer":
        _prepare_relayer(config)


def _prepare_indexer(config: ChainsConfig) -> None:
    for chain in config.chains:
        for kind in _INDEXER_ERROR_KINDS:
            metrics.INDEXER_ERRORS.labels(chain=chain.name, kind=kind)
        for event in _INDEXER_EVENTS:
            metrics.EVENTS_INDEXED.labels(chain=chain.name, event=event)
        for endpoint in range(len(chain.rpc_urls)):
            for rpc_error in _RPC_ERROR_KINDS:
                metrics.RPC_ERRORS.labels(chain=chain.name, endpoint=str(endpoint), kind=rpc_error)
        metrics.WATCHDOG_RESTARTS.labels(chain=chain.name)
        # NOTE: a gauge, but 0 (not stalled) is the truth until the watchdog says otherwise.
        metrics.INDEXER_STALLED.labels(chain=chain.name)
        metrics.REORGS.labels(chain=chain.name)
        metrics.REORG_DEPTH.labels(chain=chain.name)
        metrics.DEEP_REORGS.labels(chain=chain.name)


def _prepare_relayer(config: ChainsConfig) -> None:
    for route in config.routes:
        metrics.LOCK_TO_RELEASE.labels(route=route.route_id)
        for reason in _FAILURE_REASONS:
            metrics.RELEASE_FAILURES.labels(route=route.route_id, reason=reason)
    for chain in config.chains:
        for outcome in _RELEASE_OUTCOMES:
            metrics.RELEASES.labels(chain=chain.name, outcome=outcome)
        for reason in _REPLACEMENT_REASONS:
            metrics.REPLACEMENTS.labels(chain=chain.name, reason=reason)
