"""Reconciling the indexed chain with what a node now reports: a pure function, no I/O.

The indexer keeps the recent blocks it has committed (number, hash, parent hash;
dense near the head, sparse below). When a node reports blocks that do not build
on the indexed tip, ``reconcile`` walks the node's blocks down by parent hash
until it meets a block the indexer also has: the common ancestor. Everything the
indexer holds above it left the canonical chain.

Inputs and outcomes:

- ``local``: the indexed blocks, ascending by number, possibly with gaps; the
  last one is the indexed tip (the cursor).
- ``remote``: blocks from the node, ascending and contiguous, each linking to the
  one before by ``parent_hash``; usually the new block(s) first, extended
  downwards by the caller when the walk asks for more (``NeedBlock``).

``reconcile`` answers one of:

- ``Extends``: the remote blocks build on the indexed tip (no reorg);
- ``Reorg``: the common ancestor and the indexed blocks above it, which were dropped;
- ``NeedBlock``: fetch the node's block ``number`` (just below the lowest remote
  block) and call again with it prepended;
- ``BeyondHistory``: the walk went below the oldest kept block without meeting
  the indexed chain: the reorg is deeper than the history the indexer keeps;
- ``Broken``: the remote blocks are not a chain (a gap, or a parent hash that
  does not link): the node answered garbage.

Invariant: a hash match at block N means every block below N matches too (a
block hash commits to its whole history), so the first match walking down is the
highest common ancestor.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BlockRef:
    """A block as the reorg check sees it."""

    number: int
    hash: str
    parent_hash: str


@dataclass(frozen=True, slots=True)
class Extends:
    """The remote blocks build on the indexed tip."""

    tip: BlockRef


@dataclass(frozen=True, slots=True)
class Reorg:
    """The indexed blocks above ``ancestor`` left the canonical chain."""

    ancestor: BlockRef
    dropped: tuple[BlockRef, ...]

    @property
    def depth(self) -> int:
        """How many indexed block heights were lost (the tip's number minus the ancestor's)."""
        return self.dropped[-1].number - self.ancestor.number


@dataclass(frozen=True, slots=True)
class NeedBlock:
    """The walk needs the node's block ``number`` to go on."""

    number: int


@dataclass(frozen=True, slots=True)
class BeyondHistory:
    """No common ancestor within the kept blocks (the oldest is ``oldest``)."""

    oldest: int


@dataclass(frozen=True, slots=True)
class Broken:
    """The remote blocks do not form a chain; ``reason`` says where."""

    reason: str


Reconciliation = Extends | Reorg | NeedBlock | BeyondHistory | Broken


def reconcile(local: Sequence[BlockRef], remote: Sequence[BlockRef]) -> Reconciliation:
    """Where ``remote`` joins ``local`` (see the module docstring for the outcomes)."""
    if not local:
        raise ValueError("reconcile needs at least the indexed tip in `local`")
    if not remote:
        raise ValueError("reconcile needs at least one remote block")
    broken = _broken(remote)
    if broken is not None:
        return broken
    by_number = {block.number: block for block in local}
    for block in reversed(remote):
        mine = by_number.get(block.number)
        if mine is not None and mine.hash == block.hash:
            return _joined(local, mine)
        parent = by_number.get(block.number - 1)
        if parent is not None and parent.hash == block.parent_hash:
            return _joined(local, parent)
        if block.number - 1 < local[0].number:
            return BeyondHistory(local[0].number)
    # NOTE: also when the remote blocks start above the tip: the blocks in between are needed.
    return NeedBlock(remote[0].number - 1)


def _joined(local: Sequence[BlockRef], ancestor: BlockRef) -> Extends | Reorg:
    dropped = tuple(block for block in local if block.number > ancestor.number)
    if not dropped:
        return Extends(ancestor)
    return Reorg(ancestor, dropped)


def _broken(remote: Sequence[BlockRef]) -> Broken | None:
    for below, above in itertools.pairwise(remote):
        if above.number != below.number + 1:
            return Broken(f"remote blocks jump from {below.number} to {above.number}")
        if above.parent_hash != below.hash:
            return Broken(f"block {above.number}'s parent hash is not block {below.number}'s hash")
    return None
