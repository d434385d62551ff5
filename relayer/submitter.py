"""The submitter: one serial owner of a signing account's nonce on one target chain.

Objectives, in order (modelled on Hyperlane's per-destination submitter):

1. **Never reuse or skip an account nonce.** Each worker process runs a
   ``ChainSubmitter`` per target chain, but only the one holding a session-level
   PostgreSQL advisory lock on (chain, account) works; the others stand by and
   take over when its connection dies. On taking over, the leader resumes from
   the database and the node: the next nonce is ``max(highest nonce stored + 1,
   node's pending count)``, and stored transactions the node has forgotten are
   re-sent unchanged (gap repair, ``relayer.confirmer``). A ``relay_txs`` row per
   (chain, account, nonce) makes reuse impossible even with two leaders.
2. **Persist before broadcasting.** The signed transaction, the transfers it
   carries and their move to SUBMITTED commit in one transaction *before*
   ``eth_sendRawTransaction``: a crash after COMMIT leaves a transaction to
   re-send, never an unknown one.
3. **Pipeline.** Transactions go out back to back without waiting for receipts
   (at most ``max_in_flight`` unmined per account); ``relayer.confirmer``
   follows them, re-prices the stuck ones, settles the mined ones and watches
   them until final.
4. **Batch.** Up to ``batch_size`` ready transfers for one bridge go in one
   ``releaseBatch``; a partial batch waits at most ``batch_linger`` seconds from
   its oldest transfer's hand-off (``relayer.batcher``).

The leader runs four loops side by side, a pipeline of two stages, the pricer and the follower:

- the builder (``send_round``): picks ready transfers not already claimed by a
  batch further down the pipeline, builds up to ``MAX_BATCHES_PER_ROUND`` batches
  at once (signatures in worker threads; every batch's ``eth_call`` and one gas
  estimate per bridge in one JSON-RPC request, ``Batcher.build_round``) and hands them to
- the storer, through a bounded queue (``PIPELINE_DEPTH`` rounds): it prices,
  signs and persists a round's batches in nonce order in one COMMIT, then
  broadcasts them in one JSON-RPC batch. The builder works on the next round
  meanwhile; a transfer stays claimed (in memory: only the leader submits) until
  its batch is stored or left out, so it is never built twice;
- the pricer (``price_loop``): while rounds are being stored, keeps a fee quote
  (``FeePricer``) fresh, so the storer takes it instead of reading the latest
  block on its own path (a quote older than ``QUOTE_MAX_AGE`` is read anew);
- the follower (``relayer.confirmer`` every ``FOLLOW_SECONDS`` at most), so
  settling receipts never holds up sending.

``tick`` (tests) runs one round of each, without the queue.

Wake-ups: vetting NOTIFYs ``ferry_relay_ready`` when it hands transfers over, the
follower wakes the sender when transactions leave the pipeline; otherwise the
sender polls every chain ``poll_interval`` (or sooner, when a partial batch's
linger ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from ferry.metrics import BATCH_SIZE, QUEUE_DEPTH, RELEASES, SUBMITTER_BALANCE, SUBMITTER_LOW_BALANCE
from ferry.rpc import RpcClient, RpcError, RpcGarbage, RpcUnavailable, quantity
from ferry.settings import ChainConfig, Settings
from relayer import txstore
from relayer.batcher import Batch, Batcher
from relayer.confirmer import Confirmer
from relayer.fees import FeePricer, Fees, capped
from relayer.txstore import ReadyTransfer, SignedTx, TxRow

log = logging.getLogger(__name__)

#: The channel relay jobs NOTIFY (payload: target chain id) when they hand a transfer over.
READY_CHANNEL = "ferry_relay_ready"
STANDBY_SECONDS = 1.0
LEASE_CHECK_SECONDS = 1.0
BALANCE_CHECK_SECONDS = 5.0
MAX_ERROR_PAUSE = 10.0
MIN_ROUND_SECONDS = 0.05
#: Longest pause between two looks at the head and the receipts of what is in flight.
FOLLOW_SECONDS = 0.25
#: Most batches one round builds and sends; the round after follows at once. Keeps rounds short,
#: so receipts are followed (and transfers marked RELEASED) while a backlog drains.
MAX_BATCHES_PER_ROUND = 12
#: Built rounds waiting for the storer; the builder waits when the queue is full.
PIPELINE_DEPTH = 2
#: Oldest fee quote of the pricing loop a round may use; an older one is read on the round's path.
QUOTE_MAX_AGE = 3.0
#: Seconds after a round was stored during which the pricing loop keeps a fresh quote.
PRICING_WARM_SECONDS = 10.0


@dataclass
class BuiltRound:
    """Batches built by one round of the builder, for the storer; ``error`` raises after storing them."""

    batches: list[Batch]
    error: BaseException | None = None


class Broadcast(enum.Enum):
    """A node's known refusals of a raw transaction (``judge_refusal``)."""

    ALREADY_KNOWN = "already known"
    NONCE_TOO_LOW = "nonce too low"
    UNDERPRICED = "underpriced"


class LostLease(Exception):
    """The advisory lock's connection is gone: another process may lead now."""


def nonce_lock_key(chain_id: int, account: str) -> int:
    """A signed 64-bit advisory-lock key for one (chain, submitting account)."""
    digest = keccak(text=f"ferry:nonce:{chain_id}:{account.lower()}")
    return int.from_bytes(digest[:8], "big", signed=True)


class TxSigner:
    """Signs EIP-1559 transactions for the submitting account (the key never leaves it)."""

    def __init__(self, private_key: bytes) -> None:
        self._account: LocalAccount = Account.from_key(private_key)
        self.address: str = self._account.address

    def __repr__(self) -> str:
        return f"TxSigner({self.address})"

    def sign(
        self, chain_id: int, nonce: int, to: str, data: bytes, gas: int, fees: Fees
    ) -> tuple[str, bytes]:
        transaction: dict[str, Any] = {
            "type": 2,
            "chainId": chain_id,
            "nonce": nonce,
            "to": to,
            "value": 0,
            "data": data,
            "gas": gas,
            "maxFeePerGas": fees.max_fee_per_gas,
            "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
        }
        signed = self._account.sign_transaction(transaction)
        return signed.hash.to_0x_hex(), bytes(signed.raw_transaction)


def judge_refusal(exc: RpcError) -> Broadcast | None:
    """What a node's refusal of a raw transaction means, or None when it is none of the known ones."""
    message = exc.message.lower()
    if "already known" in message or "already imported" in message or "known transaction" in message:
        return Broadcast.ALREADY_KNOWN
    if "nonce too low" in message or "nonce is too low" in message:
        return Broadcast.NONCE_TOO_LOW
    if "underpriced" in message:
        return Broadcast.UNDERPRICED
    return None


@contextlib.asynccontextmanager
async def lease(dsn: str, key: int) -> AsyncIterator[asyncpg.Connection | None]:
    """The (chain, account) advisory lock on a connection of its own; None when another holds it."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn, timeout=10)
    try:
        held = await conn.fetchval("SELECT pg_try_advisory_lock($1)", key)
        yield conn if held else None
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await conn.close()
        conn.terminate()


class ChainSubmitter:
    """Submits and follows release transactions of one account on one target chain."""

    def __init__(
        self,
        chain: ChainConfig,
        rpc: RpcClient,
        pool: asyncpg.Pool,
        settings: Settings,
        signer: TxSigner,
        signers: dict[str, bytes],
        legacy: dict[str, str] | None = None,
    ) -> None:
        self.chain = chain
        self.rpc = rpc
        self.pool = pool
        self.settings = settings
        self.signer = signer
        self.batcher = Batcher(chain, rpc, pool, settings, signer.address, signers, legacy or {})
        self.confirmer = Confirmer(self)
        self.pricer = FeePricer(rpc, signer.address)
        self.wake = asyncio.Event()
        self.open: dict[int, TxRow] = {}
        self.next_nonce = 0
        self.leading = False
        #: Transfers in batches built but not stored yet (the pipeline's queue and the storer).
        self.claimed: set[str] = set()
        self.built_batches = 0
        self._stage: asyncio.Queue[BuiltRound] | None = None
        self._next_balance_check = 0.0
        #: The pricing loop's latest quote and when it was asked for (event-loop time).
        self._quote: tuple[Fees, float] | None = None
        self._price_until = 0.0
        self._label = chain.name

    # ------------------------------------------------------------ leadership

    async def run(self) -> None:
        """Stand by, lead when the lock is free, and start over after any failure."""
        key = nonce_lock_key(self.chain.id, self.signer.address)
        dsn = self.settings.database_url.get_secret_value()
        failures = 0
        while True:
            try:
                async with lease(dsn, key) as conn:
                    if conn is not None:
                        failures = 0
                        await self.lead(conn)
                await asyncio.sleep(STANDBY_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NOTE: outlive node and database outages; start over
                failures += 1
                pause = min(MAX_ERROR_PAUSE, 0.2 * 2**failures) * random.uniform(0.5, 1.0)  # noqa: S311
                log.warning(
                    "submitter for chain %s restarts in %.1f s: %s: %s",
                    self.chain.id,
                    pause,
                    type(exc).__name__,
                    exc,
                )
                await asyncio.sleep(pause)
            finally:
                self.leading = False

    async def lead(self, conn: asyncpg.Connection) -> None:
        self.leading = True
        await self.resume()
        log.info(
            "submitting on chain %s from %s, next nonce %d",
            self.chain.id,
            self.signer.address,
            self.next_nonce,
        )
        # NOTE: sending and following run side by side: settling a block's receipts (database
        # work per transaction) never delays the next batches, and the reverse.
        self.claimed, self.built_batches = set(), 0
        self._stage = asyncio.Queue(PIPELINE_DEPTH)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.keep_lease(conn))
                group.create_task(self.follow_loop())
                group.create_task(self.store_loop())
                group.create_task(self.price_loop())
                group.create_task(self.send_loop())
        finally:
            self._stage = None
            self._quote = None
            self.claimed, self.built_batches = set(), 0

    async def keep_lease(self, conn: asyncpg.Connection) -> None:
        while True:
            if conn.is_closed():
                raise LostLease("the advisory lock's connection closed")
            async with asyncio.timeout(5):
                await conn.fetchval("SELECT 1")
            await asyncio.sleep(LEASE_CHECK_SECONDS)

    async def follow_loop(self) -> None:
        """Follow what is in flight; wake the sender when transactions left the pipeline."""
        while True:
            in_flight = self.in_flight()
            await self.confirmer.check()
            if self.in_flight() < in_flight:
                self.wake.set()
            await asyncio.sleep(min(self.chain.poll_interval, FOLLOW_SECONDS))

    async def send_loop(self) -> None:
        while True:
            wait = await self.send_round()
            # NOTE: a burst of hand-offs must not make the submitter spin: rounds are at least
            # MIN_ROUND_SECONDS apart (partial batches linger anyway).
            await asyncio.sleep(MIN_ROUND_SECONDS)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait - MIN_ROUND_SECONDS, 0)):
                    await self.wake.wait()
            self.wake.clear()

    async def price_loop(self) -> None:
        """Keep a fee quote (``FeePricer``: a read of the latest block per head) while rounds are stored.

        NOTE: pricing on the storer's path took 0.2-2.5 s of a 0.5-4 s round under a lock burst
        (the latest block is read with its transactions); here it overlaps building and storing.
        It runs only within ``PRICING_WARM_SECONDS`` of a stored round: an idle relayer reads nothing.
        """
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() < self._price_until:
                asked = loop.time()
                try:
                    self._quote = (await self.pricer.fees(), asked)
                except (RpcUnavailable, RpcGarbage, RpcError) as exc:
                    # NOTE: the storer then reads the fees itself, and a node outage restarts it
                    log.debug("chain %s: no fee quote this time: %s", self.chain.id, exc)
            await asyncio.sleep(FOLLOW_SECONDS)

    async def round_fees(self) -> Fees:
        """The pricing loop's quote when fresh enough, else one read now."""
        loop = asyncio.get_running_loop()
        self._price_until = loop.time() + PRICING_WARM_SECONDS
        if self._quote is not None and loop.time() - self._quote[1] <= QUOTE_MAX_AGE:
            return self._quote[0]
        return await self.pricer.fees()

    async def store_loop(self) -> None:
        """The pipeline's second stage: store each built round in one COMMIT, then broadcast it."""
        assert self._stage is not None
        while True:
            built = await self._stage.get()
            try:
                await self.store(built.batches)
            finally:
                self.release_claims(built.batches)
            self.wake.set()  # NOTE: the builder may have waited for room in the pipeline
            if built.error is not None:
                raise built.error  # NOTE: after sending what could go; the leader starts over

    def release_claims(self, batches: Sequence[Batch]) -> None:
        for batch in batches:
            self.claimed.difference_update(t.id for t in batch.transfers)
        self.built_batches -= len(batches)

    def in_flight(self) -> int:
        return sum(1 for tx in self.open.values() if tx.status == "SENT")

    async def resume(self) -> None:
        """Reload open transactions and the next nonce from the database and the node."""
        self.open = {
            tx.nonce: tx for tx in await txstore.open_txs(self.pool, self.chain.id, self.signer.address)
        }
        pending = await self.account_nonce("pending")
        stored = await txstore.next_nonce_in_db(self.pool, self.chain.id, self.signer.address)
        self.next_nonce = max(pending, stored or 0)

    async def account_nonce(self, block: str) -> int:
        answer = await self.rpc.call("eth_getTransactionCount", self.signer.address, block)
        return quantity(answer, "eth_getTransactionCount")

    # ------------------------------------------------------------- the loop

    async def tick(self) -> float:
        """One round of both halves (tests drive the submitter with it): follow, then send."""
        await self.confirmer.check()
        return await self.send_round()

    async def send_round(self) -> float:
        """Send what is ready; returns seconds until the next round is due."""
        linger = await self.fill()
        await self.check_balance()
        return min(self.chain.poll_interval, linger)

    async def fill(self) -> float:
        """Send every full batch and every partial one that has lingered; seconds until the next is due.

        Pipelined in three steps so a round costs a few round trips, not a few per batch:
        every due batch is built at once (``Batcher.build_round``: one JSON-RPC request checks
        them all), then each is signed as a transaction and persisted in nonce order, then all
        are broadcast at once.
        """
        room = self.settings.max_in_flight - self.in_flight() - self.built_batches
        if room <= 0:
            return self.chain.poll_interval
        limit = self.settings.batch_size * min(room, MAX_BATCHES_PER_ROUND)
        claimed = set(self.claimed)
        ready = await txstore.ready_transfers(self.pool, self.chain.id, limit + len(claimed))
        unclaimed = [t for t in ready if t.id not in claimed]
        more = len(ready) == limit + len(claimed)
        ready = unclaimed[:limit]
        due, wait = self.due_chunks(ready)
        depth = len(ready)
        if more or len(unclaimed) > limit:
            depth = await txstore.count_ready(self.pool, self.chain.id) - len(claimed)
            if due:
                wait = 0.0  # NOTE: more are ready than one round takes: the next round follows at once
        QUEUE_DEPTH.labels(self._label).set(depth)
        if not due:
            return max(wait, 0.01)
        if len(due) > min(room, MAX_BATCHES_PER_ROUND):
            due, wait = due[: min(room, MAX_BATCHES_PER_ROUND)], 0.0
        loop = asyncio.get_running_loop()
        started = loop.time()
        built = await self.batcher.build_round(due)
        log.debug("chain %s: %d batches built in %.3f s", self.chain.id, len(due), loop.time() - started)
        batches = [batch for batch in built if isinstance(batch, Batch)]
        failed = next((error for error in built if isinstance(error, BaseException)), None)
        if self._stage is None:
            await self.store(batches)
            if failed is not None:
                raise failed  # NOTE: after sending what could go; the round starts over
            return max(wait, 0.01)
        for batch in batches:
            self.claimed.update(t.id for t in batch.transfers)
        self.built_batches += len(batches)
        # NOTE: the storer raises ``failed`` after storing what was built with it.
        await self._stage.put(BuiltRound(batches, failed))
        if failed is not None:
            await asyncio.Event().wait()  # NOTE: the storer raises it and the leader starts over
        return max(wait, 0.01)

    async def store(self, batches: list[Batch]) -> None:
        """Price, sign and persist ``batches`` in one COMMIT, then broadcast them in one request."""
        if not batches:
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        fees = capped(await self.round_fees(), self.settings.max_fee_per_gas)
        priced = loop.time()
        persisted = await self.persist(batches, fees)
        stored = loop.time()
        await self.transmit_all(persisted, "sent")
        log.debug(
            "chain %s: %d batches priced in %.3f s, stored in %.3f s, broadcast in %.3f s",
            self.chain.id,
            len(persisted),
            priced - started,
            stored - priced,
            loop.time() - stored,
        )

    def due_chunks(self, ready: list[ReadyTransfer]) -> tuple[list[list[ReadyTransfer]], float]:
        """Ready transfers cut into batches due now (full, or lingered enough); seconds until the next."""
        size = self.settings.batch_size
        groups: dict[str, list[ReadyTransfer]] = {}
        for transfer in ready:
            groups.setdefault(self.batcher.bridge_of(transfer), []).append(transfer)
        wait = self.chain.poll_interval
        due: list[list[ReadyTransfer]] = []
        for bridge, group in groups.items():
            step = 1 if bridge in self.batcher.legacy else size  # NOTE: legacy bridges have no batch call
            for start in range(0, len(group), step):
                chunk = group[start : start + step]
                oldest = max(t.waited for t in chunk)
                if len(chunk) < step and oldest < self.settings.batch_linger:
                    wait = min(wait, self.settings.batch_linger - oldest)
                    continue
                due.append(chunk)
        return due, wait

    async def persist(self, batches: list[Batch], fees: Fees) -> list[TxRow]:
        """Sign ``batches`` with the next nonces and store them in one COMMIT (not broadcast yet)."""
        if not batches:
            return []
        by_ids = {tuple(t.id for t in batch.transfers): batch for batch in batches}

        def sign(nonce: int, transfer_ids: Sequence[str]) -> SignedTx:
            batch = by_ids[tuple(transfer_ids)]
            data = bytes.fromhex(batch.call_data.removeprefix("0x"))
            tx_hash, raw = self.signer.sign(self.chain.id, nonce, batch.bridge, data, batch.gas, fees)
            return SignedTx(
                self.chain.id, self.signer.address, nonce, batch.bridge, tx_hash, data, batch.gas, raw, fees
            )

        try:
            stored = await txstore.persist_txs(self.pool, list(by_ids), self.next_nonce, sign)
        except asyncpg.UniqueViolationError:
            log.warning(
                "nonce %d on chain %s is taken; resuming from the database", self.next_nonce, self.chain.id
            )
            await self.resume()
            return []
        # NOTE: a batch left out (a transfer moved on meanwhile) took no nonce; the next round
        # builds a fresh one.
        now = asyncio.get_running_loop().time()
        for tx in stored:
            self.next_nonce = tx.nonce + 1
            tx.sent_at = now
            self.open[tx.nonce] = tx
            BATCH_SIZE.labels(self._label).observe(len(tx.transfer_ids))
            log.info(
                "release batch of %d signed as %s (nonce %d)", len(tx.transfer_ids), tx.tx_hash, tx.nonce
            )
        return stored

    async def transmit_all(self, txs: Sequence[TxRow], outcome: str) -> None:
        """Broadcast ``txs`` in one JSON-RPC batch, each answer judged alone (``judge_refusal``):
        "already known" is fine, a node outage or an unknown refusal leaves it for gap repair.

        The batch ends with ``eth_blockNumber``: a block above that head was built after the node
        took the transactions (``TxRow.broadcast_head``, what the follower judges outbid releases by).
        """
        if not txs:
            return
        calls = [("eth_sendRawTransaction", ["0x" + tx.raw_tx.hex()]) for tx in txs]
        try:
            *answers, head = await self.rpc.batch_results([*calls, ("eth_blockNumber", [])])
        except (RpcUnavailable, RpcGarbage) as exc:
            log.warning("broadcast of %d releases failed, will re-send: %s", len(txs), exc)
            return
        try:
            broadcast_head = quantity(head, "eth_blockNumber")
        except RpcGarbage:
            # NOTE: the node may be a block past the follower's last look: judged from the one after
            broadcast_head = self.confirmer.last_head + 1
        for tx, answer in zip(txs, answers, strict=True):
            if isinstance(answer, RpcError):
                verdict = judge_refusal(answer)
                if verdict is None:
                    log.warning("broadcast of %s failed, will re-send: %s", tx.tx_hash, answer)
                    continue
                if verdict is not Broadcast.ALREADY_KNOWN:
                    # NOTE: nonce too low: the follower checks it by receipt (or DROPPED);
                    # underpriced: the next re-pricing bumps it.
                    log.warning("broadcast of %s refused: %s", tx.tx_hash, verdict.value)
            tx.broadcast_head = broadcast_head
            RELEASES.labels(self._label, outcome).inc()

    async def check_balance(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_balance_check:
            return
        self._next_balance_check = loop.time() + BALANCE_CHECK_SECONDS
        balance = quantity(
            await self.rpc.call("eth_getBalance", self.signer.address, "latest"), "eth_getBalance"
        )
        SUBMITTER_BALANCE.labels(self._label).set(balance)
        low = balance < self.settings.min_submitter_balance
        SUBMITTER_LOW_BALANCE.labels(self._label).set(1 if low else 0)
        if low:
            log.error(
                "the submitting account %s has %d wei on chain %s, below min_submitter_balance: top it up",
                self.signer.address,
                balance,
                self.chain.id,
            )
