"""Finding a reorg: walk the node's blocks down to the common ancestor, then get a second opinion.

The follower calls ``find_reorg`` when the node's blocks do not build on the
indexed tip. It drives the pure ``reconcile`` with headers fetched from the same
endpoint, then, before anything is rolled back, asks another configured endpoint
(when there is one that can judge) whether the lowest dropped block is really
gone. Two rules keep a lagging or lying node from being taken for a reorg:

- the follower never starts this on an endpoint whose head is below the indexed
  block (``EndpointLagging``);
- when a second endpoint still has the indexed block, nothing is rolled back
  (``NodesDisagree``) and the follower moves away from the first endpoint.
"""

from __future__ import annotations

import logging

import asyncpg

from ferry.rpc import RpcClient, RpcError, RpcGarbage, RpcUnavailable
from ferry.settings import ChainConfig
from indexer import store
from indexer.chain import BlockHeader, ChainReader
from indexer.reconcile import BeyondHistory, BlockRef, Broken, Extends, NeedBlock, Reorg, reconcile

log = logging.getLogger(__name__)

#: Kept blocks loaded for the walk; deeper reorgs are ``ReorgBeyondHistory``.
HISTORY_BLOCKS = 4_096


class EndpointLagging(RpcGarbage):
    """The endpoint's head is below the indexed block: it is behind, not reorged."""


class NodesDisagree(RpcGarbage):
    """Another endpoint still has the block this endpoint dropped: no rollback on its word."""


class ReorgBeyondHistory(Exception):
    """The node's chain meets the indexed one below every kept block: an operator must look."""


def block_ref(header: BlockHeader) -> BlockRef:
    return BlockRef(header.number, header.hash, header.parent_hash)


async def find_reorg(
    conn: asyncpg.Connection,
    chain: ChainConfig,
    reader: ChainReader,
    rpc: RpcClient,
    cursor: store.Cursor,
    disputed: BlockHeader,
) -> Reorg | None:
    """The reorg that ``disputed`` reveals (confirmed by a witness), or None when it builds on the tip."""
    local = await store.recent_blocks(conn, chain.id, cursor.block, HISTORY_BLOCKS)
    if not local or local[-1].number != cursor.block:
        local.append(BlockRef(cursor.block, (cursor.hash or "").lower(), ""))
    remote = [block_ref(disputed)]
    while True:
        outcome = reconcile(local, remote)
        if isinstance(outcome, NeedBlock):
            remote.insert(0, block_ref(await reader.header(rpc, outcome.number)))
        elif isinstance(outcome, Broken):
            raise RpcGarbage(f"{rpc.name}: {outcome.reason}")
        elif isinstance(outcome, BeyondHistory):
            raise ReorgBeyondHistory(
                f"chain {chain.name}: {rpc.name} reports a chain that leaves the indexed one below block "
                f"{outcome.oldest}, the oldest block kept; check the node, then the transfers above it"
            )
        elif isinstance(outcome, Extends):
            return None
        else:
            await _confirm(chain, reader, rpc, outcome)
            return outcome


async def _confirm(chain: ChainConfig, reader: ChainReader, rpc: RpcClient, reorg: Reorg) -> None:
    """Raise ``NodesDisagree`` when a witness endpoint still has the lowest dropped block."""
    lowest = reorg.dropped[0]
    for witness in await reader.endpoints.witnesses():
        try:
            if await witness.block_number() < reorg.dropped[-1].number:
                continue  # NOTE: a lagging witness cannot judge; ask the next one
            seen = await reader.header(witness, lowest.number)
        except (RpcError, RpcUnavailable, RpcGarbage):
            continue
        if seen.hash == lowest.hash:
            raise NodesDisagree(
                f"{rpc.name} dropped block {lowest.number} of chain {chain.name}, but {witness.name} "
                "still has it; not rolling back on the word of one node"
            )
        log.info(
            "chain %s: %s confirms the reorg above block %d",
            chain.name,
            witness.name,
            reorg.ancestor.number,
            extra={"chain_id": chain.id},
        )
        return
    log.info("chain %s: no second endpoint could confirm the reorg; trusting %s", chain.name, rpc.name)
