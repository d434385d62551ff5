"""The pure reorg reconciliation: every fork point, branch length and kept history.

Chains are built from labelled hashes so a fork is simply a different label from
some height on. ``walk`` plays the follower: it feeds the node's blocks to
``reconcile`` one ``NeedBlock`` at a time, the way the follower fetches them.
"""

from __future__ import annotations

import itertools

import pytest

from indexer.reconcile import (
    BeyondHistory,
    BlockRef,
    Broken,
    Extends,
    NeedBlock,
    Reconciliation,
    Reorg,
    reconcile,
)

GENESIS_PARENT = "0x" + "00" * 32


def chain(length: int, fork_at: int | None = None, branch: str = "b", start: int = 0) -> list[BlockRef]:
    """Blocks ``start..length-1``; from ``fork_at`` on, the hashes belong to ``branch``."""
    blocks: list[BlockRef] = []
    parent = GENESIS_PARENT if start == 0 else _hash(start - 1, "a")
    for number in range(length):
        label = branch if fork_at is not None and number >= fork_at else "a"
        block = BlockRef(number, _hash(number, label), parent)
        parent = block.hash
        if number >= start:
            blocks.append(block)
    return blocks


def _hash(number: int, label: str) -> str:
    return f"0x{label}{number:063x}"


def walk(local: list[BlockRef], node: list[BlockRef], first: int) -> tuple[Reconciliation, int]:
    """Reconcile starting with the node's blocks from ``first`` up; returns (outcome, blocks fetched)."""
    by_number = {b.number: b for b in node}
    remote = [b for b in node if b.number >= first]
    while True:
        outcome = reconcile(local, remote)
        if not isinstance(outcome, NeedBlock):
            return outcome, len(remote)
        remote = [by_number[outcome.number], *remote]


LENGTH = 12


@pytest.mark.parametrize(
    ("fork_at", "node_length"),
    [(f, n) for f in range(1, LENGTH) for n in range(f + 1, LENGTH + 3)],
)
def test_every_fork_point_and_branch_length_finds_the_highest_common_ancestor(
    fork_at: int, node_length: int
) -> None:
    local = chain(LENGTH)
    node = chain(node_length, fork_at=fork_at)
    first = min(LENGTH, node_length - 1)

    outcome, _ = walk(local, node, first)

    assert isinstance(outcome, Reorg)
    assert outcome.ancestor == local[fork_at - 1]
    assert outcome.dropped == tuple(local[fork_at:])
    assert outcome.depth == LENGTH - fork_at


@pytest.mark.parametrize("extra", [1, 2, 5])
def test_blocks_that_build_on_the_tip_are_no_reorg(extra: int) -> None:
    local = chain(LENGTH)
    node = chain(LENGTH + extra)

    assert reconcile(local, node[LENGTH:]) == Extends(local[-1])


def test_remote_blocks_starting_above_the_tip_ask_for_the_blocks_in_between() -> None:
    local = chain(LENGTH)
    node = chain(LENGTH + 5)

    assert reconcile(local, node[LENGTH + 3 :]) == NeedBlock(LENGTH + 2)
    assert walk(local, node, LENGTH + 3)[0] == Extends(local[-1])


def test_the_node_reporting_the_indexed_tip_itself_is_no_reorg() -> None:
    local = chain(LENGTH)

    assert reconcile(local, local[-1:]) == Extends(local[-1])


@pytest.mark.parametrize("fork_at", range(1, LENGTH))
def test_a_shorter_branch_drops_every_block_above_the_ancestor(fork_at: int) -> None:
    local = chain(LENGTH)
    node = chain(fork_at + 1, fork_at=fork_at)

    outcome, _ = walk(local, node, fork_at)

    assert outcome == Reorg(local[fork_at - 1], tuple(local[fork_at:]))


@pytest.mark.parametrize(("fork_at", "kept"), list(itertools.product(range(1, LENGTH), [3, 6])))
def test_a_fork_below_the_kept_history_is_beyond_history(fork_at: int, kept: int) -> None:
    local = chain(LENGTH)[-kept:]
    node = chain(LENGTH + 1, fork_at=fork_at)

    outcome, _ = walk(local, node, LENGTH)

    if fork_at > LENGTH - kept:
        assert isinstance(outcome, Reorg)
        assert outcome.ancestor.number == fork_at - 1
    else:
        assert outcome == BeyondHistory(LENGTH - kept)


@pytest.mark.parametrize("fork_at", range(1, LENGTH))
def test_sparse_history_meets_the_highest_kept_block_below_the_fork(fork_at: int) -> None:
    full = chain(LENGTH)
    kept_numbers = {0, 3, 4, 7, *range(LENGTH - 2, LENGTH)}
    local = [b for b in full if b.number in kept_numbers]
    node = chain(LENGTH + 1, fork_at=fork_at)

    outcome, _ = walk(local, node, LENGTH)

    assert isinstance(outcome, Reorg)
    expected = max(n for n in kept_numbers if n < fork_at)
    assert outcome.ancestor == full[expected]
    assert outcome.dropped == tuple(b for b in local if b.number > expected)


def test_the_walk_stops_at_the_ancestor_without_fetching_more() -> None:
    local = chain(LENGTH)
    node = chain(LENGTH + 1, fork_at=LENGTH - 2)

    outcome, fetched = walk(local, node, LENGTH)

    assert isinstance(outcome, Reorg)
    assert fetched == 3  # blocks LENGTH-2, LENGTH-1 and LENGTH: nothing below the fork


def test_remote_blocks_whose_parent_does_not_link_are_broken() -> None:
    local = chain(LENGTH)
    node = chain(LENGTH + 3)
    liar = BlockRef(LENGTH + 1, node[LENGTH + 1].hash, _hash(99, "f"))

    outcome = reconcile(local, [node[LENGTH], liar, node[LENGTH + 2]])

    assert isinstance(outcome, Broken)
    assert "parent hash" in outcome.reason


def test_remote_blocks_with_a_gap_are_broken() -> None:
    local = chain(LENGTH)
    node = chain(LENGTH + 3)

    outcome = reconcile(local, [node[LENGTH], node[LENGTH + 2]])

    assert isinstance(outcome, Broken)
    assert "jump" in outcome.reason


def test_empty_inputs_are_programming_errors() -> None:
    with pytest.raises(ValueError, match="indexed tip"):
        reconcile([], chain(2))
    with pytest.raises(ValueError, match="remote block"):
        reconcile(chain(2), [])
