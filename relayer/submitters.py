"""The submitters of one worker process: one ``ChainSubmitter`` per target chain, and their wake-ups.

Every worker runs a submitter for each chain some route releases to; the
advisory lock in ``relayer.submitter`` lets exactly one of them (across all
processes) work per (chain, account) while the others stand by. Relay jobs
NOTIFY ``ferry_relay_ready`` with the target chain id when they hand a transfer
over; one LISTEN connection wakes the right submitter at once.
"""

from __future__ import annotations

import asyncio
import logging

from ferry.db import Listener
from ferry.settings import ChainsConfig, ConfigError
from ferry.tasks import stop_task
from relayer.context import RelayerContext
from relayer.submitter import READY_CHANNEL, ChainSubmitter

log = logging.getLogger(__name__)

LISTEN_TIMEOUT_SECONDS = 30.0


def legacy_bridges(chains: ChainsConfig, chain_id: int) -> dict[str, str]:
    """Bridges on ``chain_id`` that routes release through with the ``legacy`` adapter -> signer."""
    found: dict[str, str] = {}
    for route in chains.routes:
        if route.target == chain_id and route.adapter == "legacy":
            if route.legacy_signer is None:
                raise ConfigError(
                    f"route {route.route_id} uses the legacy adapter but names no legacy_signer"
                )
            found[chains.chain_by_id[chain_id].bridges[route.token].bridge] = route.legacy_signer
    return found


class Submitters:
    """Starts, wakes and stops this process's chain submitters."""

    def __init__(self, relayer: RelayerContext) -> None:
        targets = sorted({route.target for route in relayer.chains.routes})
        self.by_chain = {
            chain_id: ChainSubmitter(
                relayer.chains.chain_by_id[chain_id],
                relayer.rpc[chain_id],
                relayer.pool,
                relayer.settings,
                relayer.submitter,
                relayer.signers,
                legacy_bridges(relayer.chains, chain_id),
            )
            for chain_id in targets
        }
        dsn = relayer.settings.database_url.get_secret_value()
        self._listener = Listener(dsn, READY_CHANNEL, self._on_notify, self._on_reconnect)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        async with asyncio.timeout(LISTEN_TIMEOUT_SECONDS):
            await self._listener.start()
        for chain_id, submitter in self.by_chain.items():
            self._tasks.append(asyncio.create_task(submitter.run(), name=f"relayer-submitter-{chain_id}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            await stop_task(task)
        await self._listener.stop()

    def _on_notify(self, payload: str) -> None:
        submitter = self.by_chain.get(int(payload)) if payload.isdigit() else None
        if submitter is not None:
            submitter.wake.set()

    async def _on_reconnect(self) -> None:
        for submitter in self.by_chain.values():
            submitter.wake.set()
