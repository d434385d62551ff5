"""Following release transactions on the target chain: receipts, re-pricing, gaps, finality.

Each round of the submitter (``ChainSubmitter.tick``) calls ``Confirmer.check``:

1. Read the account's mined nonce count first, then the receipts of every SENT
   transaction below it (all hashes of a nonce: an earlier, cheaper version may
   be the one that was mined; one at or above the count cannot be mined yet).
   Reading the count first means a transaction mined in between is seen by its
   receipt, never mistaken for a dropped one. Everything found in one look is
   recorded in one database transaction (``txstore.record_settled``).
2. Mined and succeeded: MINED, and each order it carries is RELEASED with this
   transaction, or, when its ``TransferReleased`` is not in the receipt (the
   batch skipped it: someone released it first), with the transaction that did
   release it ("already processed" is success). Mined and reverted: its
   transfers go back to CONFIRMED; the batcher finds out why before re-sending.
3. MINED transactions are watched, by the canonical block hash at their height,
   until they have the chain's confirmations (then FINAL, and their transfers
   FINALIZED, all of one look in one database transaction) or until their block
   leaves the chain: then the transaction is SENT again, re-broadcast unchanged (same
   nonce, the bridge refuses replays), and its transfers go back to CONFIRMED.
4. Gap repair: a SENT transaction at or above the mined count that the node
   does not know (anvil can drop one and keep later nonces queued; a node
   restart forgets its pool) is re-sent unchanged. One below it that still has
   no receipt at a later head lost its nonce to another transaction: DROPPED,
   transfers CONFIRMED. Not at the first look: anvil 1.7.1 answers the new mined
   count before the new block's receipts (measured: a whole block of releases,
   11 transactions, taken for dropped and sent again), and a load-balanced
   endpoint can do the same.
5. Re-pricing: a SENT transaction older than ``replace_after`` is re-signed with
   the same nonce and fees raised per ``relayer.fees.replacement_fees``; at the
   cap it stays and ``ferry_relayer_stuck_at_fee_cap`` counts it until it is mined.
   So is, at once, one that a new full block left out while other senders there
   offered more (``relayer.fees.outbid_in``), when that block holds none of the
   account's transactions and the node had the release before the block was built:
   every later nonce of the account waits behind it.
   A release priced from a block before a burst of better-paying transactions
   arrived would otherwise wait out the burst, or ``replace_after`` (30 s by default).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ferry.contracts import TRANSFER_RELEASED_TOPIC
from ferry.domain import parse_transfer_id
from ferry.metrics import (
    GAS_SPENT,
    LOCK_TO_RELEASE,
    RELEASES,
    REPLACEMENTS,
    STUCK_AT_FEE_CAP,
    TXS_IN_FLIGHT,
)
from ferry.rpc import RpcError, RpcGarbage, RpcUnavailable, block_timestamp, quantity
from ferry.transitions import Change
from relayer import legacy, txstore
from relayer.bridge import LockKey, TargetBridge, checksummed
from relayer.fees import Fees, outbid_in, replacement_fees, suggest_fees
from relayer.txstore import Inclusion, Released, Settlement, TxRow

if TYPE_CHECKING:
    from relayer.submitter import ChainSubmitter

log = logging.getLogger(__name__)

#: Seconds between gap checks while the head does not move.
GAP_CHECK_SECONDS = 2.0


class Confirmer:
    def __init__(self, submitter: ChainSubmitter) -> None:
        self.s = submitter
        self.label = submitter.chain.name
        self._block_times: dict[int, datetime] = {}
        self._next_gap_check = 0.0
        self._last_head = -1
        #: SENT transactions (by id) below the mined count without a receipt: the head then.
        self._unreceipted: dict[int, int] = {}
        #: SENT transactions (by id) found due for re-pricing but already at max_fee_per_gas.
        self._at_cap: set[int] = set()
        #: The account's mined nonce count at the last look.
        self._last_mined_count = -1

    @property
    def last_head(self) -> int:
        """The head at the follower's last look (-1 before the first)."""
        return self._last_head

    async def check(self) -> None:
        """Follow receipts when the head moved (or every few seconds), re-price when due.

        The head and the account's mined nonce count are read together; receipts after them.
        Asking the node about transactions it may have lost costs a request per transaction,
        so that runs every ``GAP_CHECK_SECONDS`` only.
        """
        if not self.s.open:
            TXS_IN_FLIGHT.labels(self.label).set(0)
            self._at_cap.clear()
            STUCK_AT_FEE_CAP.labels(self.label).set(0)
            return
        loop = asyncio.get_running_loop()
        # NOTE: the mined count is read before the receipts: a transaction mined in
        # between shows up by its receipt and is never taken for a dropped one.
        head, mined_count = await asyncio.gather(self.s.rpc.block_number(), self.s.account_nonce("latest"))
        gap_check = loop.time() >= self._next_gap_check
        moved = head != self._last_head
        if moved or gap_check:
            log.debug(
                "chain %s head %d, mined nonces %d, %d open", self.label, head, mined_count, len(self.s.open)
            )
            started = loop.time()
            await self.follow(head, mined_count)
            followed = loop.time()
            await self.repair_gaps(mined_count, head, ask_node=gap_check)
            log.debug(
                "chain %s: followed in %.3f s, gaps checked in %.3f s",
                self.label,
                followed - started,
                loop.time() - followed,
            )
            if gap_check:
                self._next_gap_check = loop.time() + GAP_CHECK_SECONDS
            self._last_head = head
        await self.reprice(head if moved else None, mined_count)
        TXS_IN_FLIGHT.labels(self.label).set(sum(1 for tx in self.s.open.values() if tx.status == "SENT"))

    # ------------------------------------------------------------- receipts

    async def follow(self, head: int, mined_count: int) -> None:
        """Settle what was mined since the last look; watch what is mined until final or reorged out.

        NOTE: receipts are asked only for SENT transactions below the account's mined nonce
        count (read before them): one at or above it cannot be in a block yet. A MINED one is
        watched through its block's hash at its height (a block hash commits to its
        transactions): a few small headers per look instead of every receipt again.
        """
        txs = sorted(self.s.open.values(), key=lambda tx: tx.nonce)
        due = [tx for tx in txs if tx.status == "SENT" and tx.nonce < mined_count]
        mined = [tx for tx in txs if tx.status == "MINED"]
        calls: list[tuple[str, list[Any]]] = []
        owners: list[TxRow] = []
        for tx in due:
            for tx_hash in tx.hashes:
                calls.append(("eth_getTransactionReceipt", [tx_hash]))
                owners.append(tx)
        heights = sorted({tx.block_number for tx in mined if tx.block_number is not None})
        calls += [("eth_getBlockByNumber", [hex(number), False]) for number in heights]
        loop = asyncio.get_running_loop()
        started = loop.time()
        answers = await self.s.rpc.batch(calls)
        asked = loop.time()
        found: dict[int, dict[str, Any]] = {}
        for tx, receipt in zip(owners, answers, strict=False):
            if isinstance(receipt, dict):
                found.setdefault(tx.id, receipt)
            elif receipt is not None:
                raise RpcGarbage(f"eth_getTransactionReceipt answered a {type(receipt).__name__}")
        canonical: dict[int, str] = {}
        for number, block in zip(heights, answers[len(owners) :], strict=True):
            if isinstance(block, dict):
                canonical[number] = str(block.get("hash"))
            elif block is not None:
                raise RpcGarbage(f"eth_getBlockByNumber answered a {type(block).__name__}")
        settled = [await self.settlement(tx, found[tx.id]) for tx in due if tx.id in found]
        read = loop.time()
        await self.settle(settled)
        recorded = loop.time()
        final = [tx for tx in mined if await self.watch(tx, canonical.get(tx.block_number or -1), head)]
        if final:
            await txstore.record_finals(self.s.pool, final)
            for tx in final:
                self.s.open.pop(tx.nonce, None)
        log.debug(
            "chain %s: %d receipts and %d blocks in %.3f s, %d settled (read %.3f s, recorded %.3f s), "
            "%d final in %.3f s",
            self.label,
            len(owners),
            len(heights),
            asked - started,
            len(settled),
            read - asked,
            recorded - read,
            len(final),
            loop.time() - recorded,
        )

    async def settlement(self, tx: TxRow, receipt: dict[str, Any]) -> Settlement:
        """What a receipt says about ``tx`` and its orders (chain reads only, nothing written)."""
        inclusion = Inclusion(
            str(receipt["transactionHash"]),
            quantity(receipt.get("blockNumber"), "receipt blockNumber"),
            str(receipt.get("blockHash")),
            quantity(receipt.get("status"), "receipt status") == 1,
            quantity(receipt.get("gasUsed"), "receipt gasUsed"),
            quantity(receipt.get("effectiveGasPrice", "0x0"), "receipt effectiveGasPrice"),
        )
        if not inclusion.succeeded:
            error = f"release transaction {inclusion.tx_hash} reverted in block {inclusion.block_number}"
            return Settlement(tx, inclusion, [], list(tx.transfer_ids), error)
        released, missing = await self.released_orders(tx, receipt, inclusion)
        error = f"release {inclusion.tx_hash} skipped the order; sending it again"
        return Settlement(tx, inclusion, released, missing, error)

    async def settle(self, settled: list[Settlement]) -> None:
        """Record every transaction found in a block since the last look, in one COMMIT."""
        if not settled:
            return
        routes = await self.routes_for([tid for item in settled for tid in item.tx.transfer_ids])
        changes = await txstore.record_settled(self.s.pool, settled)
        for item in settled:
            tx, inclusion = item.tx, item.inclusion
            self.count_gas({tid: routes[tid] for tid in tx.transfer_ids if tid in routes}, inclusion)
            if not inclusion.succeeded:
                self.s.open.pop(tx.nonce, None)
                RELEASES.labels(self.label, "reverted").inc()
                log.warning("%s; its %d transfers go back to be checked", item.error, len(tx.transfer_ids))
                continue
            tx.status, tx.mined_hash = "MINED", inclusion.tx_hash
            tx.block_number, tx.block_hash = inclusion.block_number, inclusion.block_hash
            RELEASES.labels(self.label, "mined").inc()
        self.observe_latency(changes, [r for item in settled for r in item.released], routes)

    async def released_orders(
        self, tx: TxRow, receipt: dict[str, Any], inclusion: Inclusion
    ) -> tuple[list[Released], list[str]]:
        """Each carried transfer's release: this transaction, another one, or none (``missing``)."""
        if tx.bridge in self.s.batcher.legacy:
            return await self.released_legacy(tx, receipt, inclusion)
        in_receipt = released_keys(receipt.get("logs") or [], tx.bridge)
        block_time = await self.block_time(inclusion.block_number)
        released: list[Released] = []
        missing: list[str] = []
        bridge = TargetBridge(self.s.rpc, self.s.chain.id, tx.bridge)
        for transfer_id in tx.transfer_ids:
            key = lock_key(transfer_id)
            if (key.source_chain_id, key.source_bridge.lower(), key.nonce) in in_receipt:
                released.append(Released(transfer_id, inclusion.tx_hash, inclusion.block_number, block_time))
                continue
            start = min((d.start_block for d in self.s.chain.bridges.values()), default=0)
            found = await bridge.find_release(key, start, self.s.chain.log_range)
            if found is None:
                missing.append(transfer_id)
            else:
                when = await self.block_time(found.block_number)
                released.append(Released(transfer_id, found.tx_hash, found.block_number, when))
        return released, missing

    async def released_legacy(
        self, tx: TxRow, receipt: dict[str, Any], inclusion: Inclusion
    ) -> tuple[list[Released], list[str]]:
        """A legacy ``releaseTokens`` carries one transfer, identified on chain by its nonce."""
        paid = legacy.released_nonces(receipt.get("logs") or [], tx.bridge)
        released: list[Released] = []
        missing: list[str] = []
        for transfer_id in tx.transfer_ids:
            nonce = lock_key(transfer_id).nonce
            if nonce in paid:
                when = await self.block_time(inclusion.block_number)
                released.append(Released(transfer_id, inclusion.tx_hash, inclusion.block_number, when))
                continue
            start = min((d.start_block for d in self.s.chain.bridges.values()), default=0)
            found = await legacy.find_release(self.s.rpc, tx.bridge, nonce, start, self.s.chain.log_range)
            if found is None:
                missing.append(transfer_id)
            else:
                when = await self.block_time(found.block_number)
                released.append(Released(transfer_id, found.tx_hash, found.block_number, when))
        return released, missing

    async def watch(self, tx: TxRow, block_hash: str | None, head: int) -> bool:
        """A MINED transaction: True when final (the caller records it), SENT again if reorged out.

        ``block_hash``: the canonical block's at the transaction's height (None: no block there).
        """
        if block_hash is None or block_hash.lower() != (tx.block_hash or "").lower():
            log.warning("release %s left the chain (reorg); sending it again", tx.mined_hash)
            await txstore.record_reorged(self.s.pool, tx)
            tx.status, tx.mined_hash, tx.block_number, tx.block_hash = "SENT", None, None, None
            tx.sent_at = asyncio.get_running_loop().time()
            RELEASES.labels(self.label, "reorged").inc()
            await self.s.transmit_all([tx], "rebroadcast")
            return False
        assert tx.block_number is not None
        return head - tx.block_number + 1 >= self.s.chain.confirmations

    # ------------------------------------------------------ gaps and fees

    async def repair_gaps(self, mined_count: int, head: int, *, ask_node: bool = True) -> None:
        sent = sorted((tx for tx in self.s.open.values() if tx.status == "SENT"), key=lambda tx: tx.nonce)
        waiting = [tx for tx in sent if tx.nonce >= mined_count]
        unreceipted = {tx.id: self._unreceipted.get(tx.id, head) for tx in sent if tx.nonce < mined_count}
        self._unreceipted = unreceipted
        for tx in sent:
            # NOTE: no receipt at the first look below the mined count may only mean the node
            # has not stored the new block's receipts yet: dropped only if still none at a later head.
            if tx.nonce < mined_count and unreceipted[tx.id] < head:
                del unreceipted[tx.id]
                error = f"nonce {tx.nonce} was used by another transaction; the transfers are sent again"
                await txstore.record_dropped(self.s.pool, tx, error)
                self.s.open.pop(tx.nonce, None)
                RELEASES.labels(self.label, "dropped").inc()
                log.warning("release %s dropped: %s", tx.tx_hash, error)
        if not waiting or not ask_node:
            return
        calls = [("eth_getTransactionByHash", [h]) for tx in waiting for h in tx.hashes]
        known = {str(t["hash"]).lower() for t in await self.s.rpc.batch(calls) if isinstance(t, dict)}
        log.debug("chain %s: the node knows %d of %d waiting releases", self.label, len(known), len(waiting))
        lost = [tx for tx in waiting if not any(h.lower() in known for h in tx.hashes)]
        for tx in lost:
            log.warning("the node lost release %s (nonce %d); re-sending it", tx.tx_hash, tx.nonce)
        await self.s.transmit_all(lost, "rebroadcast")

    async def reprice(self, new_head: int | None = None, mined_count: int = 0) -> None:
        """Re-price what waited ``replace_after``, and what the new head's block left out for better
        offers (``new_head``: the head when it just moved, else None); keep the at-cap gauge."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        settings = self.s.settings
        moved_queue = mined_count != self._last_mined_count
        self._last_mined_count = mined_count
        sent = [tx for tx in self.s.open.values() if tx.status == "SENT" and tx.nonce >= mined_count]
        self._at_cap &= {tx.id for tx in sent}
        due = {tx.id: tx for tx in sent if now - tx.sent_at >= settings.replace_after}
        overdue = set(due)
        quote: Fees | None = None
        if new_head is not None and not moved_queue:
            quote = await self.outbid(new_head, sent, due)
        if due:
            await self.replace(sorted(due.values(), key=lambda tx: tx.nonce), overdue, quote, now)
        STUCK_AT_FEE_CAP.labels(self.label).set(len(self._at_cap))

    async def outbid(self, head: int, sent: list[TxRow], due: dict[int, TxRow]) -> Fees | None:
        """Add to ``due`` the releases block ``head`` left out for better offers; the quote read.

        Only releases the node had before this block was built (``TxRow.broadcast_head`` below
        it), and only when the block holds none of the account's transactions: a block that
        took some of them and left the rest out for lack of room was not outbidding them (a
        backlog of releases fills blocks itself). The caller asks only when the account's mined
        nonce count did not move since the last look (no request: in a backlog it moves every
        block, and the follower would otherwise read every full block with its transactions);
        the block's own contents decide. Best effort: a failed read leaves re-pricing to
        ``replace_after``.
        """
        waited = [tx for tx in sent if tx.broadcast_head is not None and tx.broadcast_head < head]
        if not waited:
            return None
        try:
            quote = await self.s.pricer.fees()
        except (RpcUnavailable, RpcGarbage, RpcError) as exc:
            log.debug("chain %s: no fee quote to judge block %d by: %s", self.label, head, exc)
            return None
        competition = self.s.pricer.latest
        if competition is None or competition.block_number != head or competition.own:
            return quote
        for tx in waited:
            if outbid_in(tx.fees, tx.gas, competition):
                due.setdefault(tx.id, tx)
        return quote

    async def replace(self, due: list[TxRow], overdue: set[int], quote: Fees | None, now: float) -> None:
        """Re-sign each of ``due`` with the same nonce and bumped fees, store them, broadcast them."""
        settings = self.s.settings
        suggested = quote or await suggest_fees(self.s.rpc)
        replaced: list[tuple[TxRow, str, bytes, Fees]] = []
        for tx in due:
            fees = replacement_fees(tx.fees, suggested, settings.fee_bump_percent, settings.max_fee_per_gas)
            if fees is None and tx.id not in overdue:
                continue  # NOTE: outbid at the cap: the overdue path alerts, once per replace_after
            if fees is None:
                self._at_cap.add(tx.id)
                tx.sent_at = now  # NOTE: look again after another replace_after; the gauge says so meanwhile
                log.error(
                    "release %s (nonce %d) is not mined and already priced at max_fee_per_gas: it stays",
                    tx.tx_hash,
                    tx.nonce,
                )
                continue
            tx_hash, raw = self.s.signer.sign(tx.chain_id, tx.nonce, tx.bridge, tx.call_data, tx.gas, fees)
            replaced.append((tx, tx_hash, raw, fees))
        await txstore.record_replacements(self.s.pool, replaced)
        for tx, tx_hash, raw, fees in replaced:
            tx.earlier_hashes.insert(0, tx.tx_hash)
            tx.tx_hash, tx.raw_tx, tx.fees, tx.replacements, tx.sent_at = (
                tx_hash,
                raw,
                fees,
                tx.replacements + 1,
                now,
            )
            REPLACEMENTS.labels(self.label, "overdue" if tx.id in overdue else "outbid").inc()
            log.warning(
                "release nonce %d re-priced as %s (%d gwei cap)",
                tx.nonce,
                tx_hash,
                fees.max_fee_per_gas // 10**9,
            )
        await self.s.transmit_all([tx for tx, *_ in replaced], "replaced")

    # ------------------------------------------------------------- helpers

    async def block_time(self, number: int) -> datetime | None:
        cached = self._block_times.get(number)
        if cached is None:
            block = await self.s.rpc.get_block(number)
            if block is None:
                return None
            cached = block_timestamp(block.get("timestamp"))
            if len(self._block_times) > 256:
                self._block_times.clear()
            self._block_times[number] = cached
        return cached

    async def routes_of(self, tx: TxRow) -> dict[str, tuple[str, datetime]]:
        return await self.routes_for(tx.transfer_ids)

    async def routes_for(self, transfer_ids: list[str]) -> dict[str, tuple[str, datetime]]:
        rows = await self.s.pool.fetch(
            "SELECT id, route_id, lock_block_time FROM transfers WHERE id = ANY($1::text[])", transfer_ids
        )
        return {row["id"]: (row["route_id"], row["lock_block_time"]) for row in rows}

    def count_gas(self, routes: dict[str, tuple[str, datetime]], inclusion: Inclusion) -> None:
        if not routes:
            return
        share = inclusion.gas_used * inclusion.gas_price / len(routes)
        for route, _ in routes.values():
            GAS_SPENT.labels(route).inc(share)

    def observe_latency(
        self, changes: list[Change], released: list[Released], routes: dict[str, tuple[str, datetime]]
    ) -> None:
        """Lock block time to release block time, for transfers this settlement moved to RELEASED."""
        moved = {c.transfer_id for c in changes if c.to_status.value == "RELEASED"}
        for item in released:
            route_and_lock = routes.get(item.transfer_id)
            if item.transfer_id in moved and item.block_time is not None and route_and_lock is not None:
                seconds = (item.block_time - route_and_lock[1]).total_seconds()
                LOCK_TO_RELEASE.labels(route_and_lock[0]).observe(max(seconds, 0.0))


def lock_key(transfer_id: str) -> LockKey:
    chain, bridge, nonce = parse_transfer_id(transfer_id)
    return LockKey(chain, checksummed(bridge), nonce)


def released_keys(logs: list[dict[str, Any]], bridge: str) -> set[tuple[int, str, int]]:
    """(source chain, source bridge lowercase, nonce) of every ``TransferReleased`` ``bridge`` emitted."""
    keys: set[tuple[int, str, int]] = set()
    for log_entry in logs:
        topics = log_entry.get("topics") or []
        if str(log_entry.get("address", "")).lower() != bridge.lower() or len(topics) != 4:
            continue
        if str(topics[0]).lower() != TRANSFER_RELEASED_TOPIC.lower() or log_entry.get("removed"):
            continue
        data = bytes.fromhex(str(log_entry.get("data", "0x")).removeprefix("0x"))
        if len(data) != 64:
            continue
        source_bridge = "0x" + data[44:64].hex()
        keys.add((int(str(topics[1]), 16), source_bridge, int(str(topics[2]), 16)))
    return keys
