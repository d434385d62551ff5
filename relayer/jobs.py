"""The relay job: take one transfer from CONFIRMED (or a stalled SUBMITTED) to a final answer.

``relay_transfer(ctx, transfer_id)`` is an arq job keyed ``relay:<transfer id>``.
arq delivers at least once and any process may die at any line, so every run
starts from what PostgreSQL and the target chain say now, never from memory:

- CONFIRMED: ask the bridge ``isProcessed``; if so, find the ``TransferReleased``
  log and record RELEASED with that transaction ("already processed" is success).
  Otherwise sign the order with ``threshold`` current signers' keys, let the
  submitter persist the transaction and the move to SUBMITTED, broadcast, and wait
  for the receipt (at most ``release_timeout``; then ``Retry`` checks again later).
- A SENT attempt (a rerun after a crash, a flush or a timeout; the transfer is
  SUBMITTED): its receipt decides; a transaction the node does not know is
  re-broadcast unchanged; otherwise keep waiting. With no attempt in flight
  (dropped or reverted), go on as for CONFIRMED.
- A mined success is RELEASED (release tx, block, block time). A mined revert is
  checked against ``isProcessed`` (another transaction may have won), then
  classified by ``relayer.plan.classify_revert``: retry, or FAILED with the reason.

Problems that an operator must resolve (route not configured, unusable fields,
fewer signer keys than the threshold) stop the transfer as HELD (FAILED when it
was already SUBMITTED, the only stop ``ALLOWED_FROM`` permits there).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from arq.worker import Retry

from ferry.contracts import ContractError
from ferry.domain import RELAY_PENDING, TransferStatus
from ferry.metrics import LOCK_TO_RELEASE, RELAY_JOBS, RELEASES, TRANSFER_TRANSITIONS
from ferry.rpc import RpcError, RpcGarbage, RpcUnavailable, quantity
from ferry.transitions import Change
from relayer import store
from relayer.bridge import encode_call
from relayer.context import RelayerContext, relayer_context
from relayer.eip712 import sign_release_order
from relayer.plan import ReleasePlan, Verdict, classify_revert, plan_release
from relayer.store import AttemptRow, Released, TransferRow
from relayer.submitter import Broadcast, ReleaseCall, Superseded, WouldRevert, broadcast

log = logging.getLogger(__name__)

#: Longest wait before a transiently failing transfer is tried again, in seconds.
MAX_RETRY_DELAY = 60.0


class Deferred(Exception):
    """Not finished, nothing wrong for good: try again in ``delay`` seconds."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay


class Stopped(Exception):
    """The transfer must not (or cannot) be released: HELD or FAILED with this reason."""

    def __init__(self, reason: str, status: TransferStatus | None = None) -> None:
        super().__init__(reason)
        self.status = status


async def relay_transfer(ctx: dict[str, Any], transfer_id: str) -> str:
    """Relay one transfer; returns what happened (arq does not keep it)."""
    relayer = relayer_context(ctx)
    extra = {"transfer_id": transfer_id}
    transfer = await store.load_transfer(relayer.pool, transfer_id)
    if transfer is None or transfer.status not in RELAY_PENDING:
        return _outcome("noop")
    if await store.route_paused(relayer.pool, transfer.route_id):
        log.info("route %s is paused; the transfer waits", transfer.route_id, extra=extra)
        return _outcome("paused")
    plan = plan_release(relayer, transfer)
    try:
        if isinstance(plan, str):
            raise Stopped(plan)
        return _outcome(await Relay(relayer, transfer, plan).run())
    except Stopped as stop:
        return await _stop(relayer, transfer, stop)
    except (Deferred, RpcUnavailable, RpcGarbage, RpcError) as exc:
        await store.record_error(relayer.pool, transfer_id, str(exc))
        delay = exc.delay if isinstance(exc, Deferred) and exc.delay is not None else _backoff(ctx)
        log.warning("relay deferred %.0fs: %s", delay, exc, extra=extra)
        _outcome("retry")
        raise Retry(defer=delay) from exc


def _outcome(outcome: str) -> str:
    RELAY_JOBS.labels(outcome).inc()
    return outcome


def _backoff(ctx: dict[str, Any]) -> float:
    tries = int(ctx.get("job_try", 1))
    return min(MAX_RETRY_DELAY, 2.0**tries)


async def _stop(relayer: RelayerContext, transfer: TransferRow, stop: Stopped) -> str:
    reason = str(stop)
    if stop.status is None:
        changes = await store.stop_transfer(relayer.pool, transfer, reason)
    else:
        changes = await store.move(relayer.pool, transfer.id, stop.status, reason)
    _count(transfer, changes)
    log.error("relay stopped: %s", reason, extra={"transfer_id": transfer.id})
    return _outcome(changes[0].to_status.value.lower() if changes else "noop")


def _count(transfer: TransferRow, changes: list[Change]) -> None:
    for change in changes:
        TRANSFER_TRANSITIONS.labels(transfer.route_id, change.to_status.value).inc()


class Relay:
    """One run of the relay job for one transfer (see the module docstring)."""

    def __init__(self, relayer: RelayerContext, transfer: TransferRow, plan: ReleasePlan) -> None:
        self.relayer = relayer
        self.pool = relayer.pool
        self.transfer = transfer
        self.plan = plan
        self.bridge = plan.bridge
        self.rpc = plan.bridge.rpc
        self.extra = {"transfer_id": transfer.id, "chain_id": plan.bridge.chain_id}

    async def run(self) -> str:
        # NOTE: any status: the indexer may move a SUBMITTED transfer back to CONFIRMED (a
        # reorg) while its release is still in flight; that transaction decides first.
        attempt = await store.last_attempt(self.pool, self.transfer.id)
        if attempt is not None and attempt.status == "SENT":
            return await self.follow(attempt, fresh=False)
        return await self.release_if_owed()

    async def release_if_owed(self) -> str:
        if await self.bridge.is_processed(self.plan.order):
            return await self.finish_already_processed()
        return await self.submit()

    async def submit(self) -> str:
        call = ReleaseCall(
            self.transfer.id, self.bridge.chain_id, self.bridge.address, await self.call_data()
        )
        try:
            attempt = await self.relayer.submitter.prepare(self.pool, self.rpc, call)
        except WouldRevert as refused:
            await store.record_error(self.pool, self.transfer.id, str(refused), count_try=True)
            return await self.on_revert(refused.reason)
        except Superseded as exc:
            log.info("%s", exc, extra=self.extra)
            return "superseded"
        log.info("release %s signed with nonce %d", attempt.tx_hash, attempt.account_nonce, extra=self.extra)
        return await self.follow(attempt, fresh=True)

    async def call_data(self) -> str:
        """``release(order, signatures)`` signed by ``threshold`` of the bridge's current signers."""
        signer_set = await self.bridge.signer_set()
        keys = [key for address, key in self.relayer.signers.items() if address in signer_set.signers]
        if len(keys) < signer_set.threshold:
            raise Stopped(
                f"the bridge on chain {self.bridge.chain_id} needs {signer_set.threshold} signatures, "
                f"but this relayer holds keys of only {len(keys)} of its current signers: "
                "configure FERRY_SIGNER_KEYS with current signer keys"
            )
        order = self.plan.order
        signatures = sign_release_order(
            order, self.bridge.chain_id, self.bridge.address, keys[: signer_set.threshold]
        )
        return encode_call("release", order.as_tuple(), signatures)

    async def follow(self, attempt: AttemptRow, *, fresh: bool) -> str:
        """Broadcast ``attempt`` if the node lacks it, wait for its receipt, settle it."""
        receipt = None if fresh else await self.receipt(attempt.tx_hash)
        if receipt is None and (fresh or not await self.node_knows(attempt.tx_hash)):
            outcome = await broadcast(self.rpc, attempt.raw_tx)
            RELEASES.labels(str(self.bridge.chain_id), "sent" if fresh else "rebroadcast").inc()
            if outcome is Broadcast.NONCE_TOO_LOW:
                receipt = await self.receipt(attempt.tx_hash)
                if receipt is None:
                    return await self.dropped(attempt)
        if receipt is None:
            receipt = await self.wait_for_receipt(attempt.tx_hash)
        return await self.settle(attempt, receipt)

    async def dropped(self, attempt: AttemptRow) -> str:
        error = "nonce too low: another transaction used the account nonce"
        await store.set_attempt_status(self.pool, attempt.id, "DROPPED", error=error)
        RELEASES.labels(str(self.bridge.chain_id), "dropped").inc()
        raise Deferred(f"release {attempt.tx_hash} was dropped ({error}); a new one will be signed", 0.5)

    async def receipt(self, tx_hash: str) -> dict[str, Any] | None:
        receipt = await self.rpc.call("eth_getTransactionReceipt", tx_hash)
        if receipt is not None and not isinstance(receipt, dict):
            raise RpcGarbage(f"eth_getTransactionReceipt answered a {type(receipt).__name__}")
        return receipt

    async def node_knows(self, tx_hash: str) -> bool:
        return await self.rpc.call("eth_getTransactionByHash", tx_hash) is not None

    async def wait_for_receipt(self, tx_hash: str) -> dict[str, Any]:
        timeout = self.relayer.settings.release_timeout
        interval = min(max(self.plan.chain.poll_interval, 0.05), 2.0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            receipt = await self.receipt(tx_hash)
            if receipt is not None:
                return receipt
            await asyncio.sleep(interval)
        raise Deferred(f"release {tx_hash} was not mined within {timeout:g} s; checking again", 1.0)

    async def settle(self, attempt: AttemptRow, receipt: dict[str, Any]) -> str:
        block = quantity(receipt.get("blockNumber"), "receipt blockNumber")
        if quantity(receipt.get("status"), "receipt status") == 1:
            released = Released(attempt.tx_hash, block, await self.block_time(block))
            return await self.finish(released, attempt.id)
        await store.set_attempt_status(self.pool, attempt.id, "REVERTED", block=block)
        RELEASES.labels(str(self.bridge.chain_id), "reverted").inc()
        if await self.bridge.is_processed(self.plan.order):
            return await self.finish_already_processed()
        reason = await self.bridge.revert_reason(self.relayer.submitter.address, await self.call_data())
        if reason is None:
            raise Deferred(f"release {attempt.tx_hash} reverted but would succeed now; retrying", 0.5)
        await store.record_error(self.pool, self.transfer.id, f"release {attempt.tx_hash} reverted: {reason}")
        return await self.on_revert(reason)

    async def on_revert(self, reason: ContractError | str) -> str:
        tries = await store.tries(self.pool, self.transfer.id)
        verdict = classify_revert(reason, tries)
        if verdict is Verdict.DONE and await self.bridge.is_processed(self.plan.order):
            return await self.finish_already_processed()
        if verdict is Verdict.PERMANENT:
            raise Stopped(f"the bridge refuses the release: {reason}", TransferStatus.FAILED)
        raise Deferred(f"the bridge refuses the release for now: {reason}")

    async def finish_already_processed(self) -> str:
        found = await self.bridge.find_release(
            self.plan.order, self.plan.deployment.start_block, self.plan.chain.log_range
        )
        if found is None:
            log.warning("released on chain, but no TransferReleased log was found", extra=self.extra)
            return await self.finish(Released(None, None, None), None)
        attempt = await store.attempt_by_hash(self.pool, found.tx_hash)
        released = Released(found.tx_hash, found.block_number, await self.block_time(found.block_number))
        return await self.finish(released, attempt.id if attempt is not None else None, ours=False)

    async def finish(self, released: Released, attempt_id: int | None, *, ours: bool = True) -> str:
        changes = await store.record_released(self.pool, self.transfer.id, released, attempt_id)
        _count(self.transfer, changes)
        if ours:
            RELEASES.labels(str(self.bridge.chain_id), "mined").inc()
        if changes and released.block_time is not None:
            seconds = (released.block_time - self.transfer.lock_block_time).total_seconds()
            LOCK_TO_RELEASE.labels(self.transfer.route_id).observe(max(seconds, 0.0))
        log.info("released in %s", released.tx_hash, extra=self.extra)
        return "released" if ours else "already_released"

    async def block_time(self, number: int) -> datetime | None:
        block = await self.rpc.get_block(number)
        if block is None:
            return None
        return datetime.fromtimestamp(quantity(block.get("timestamp"), "block timestamp"), UTC)
