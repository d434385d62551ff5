"""Domain words shared by every process: transfer states, ids and the lifecycle.

The lifecycle (ARCHITECTURE.md) is PENDING -> CONFIRMED -> SUBMITTED -> RELEASED ->
FINALIZED, with ORPHANED (reorged out before confirmation), HELD (needs an
operator) and FAILED (dead letter) on the side. ``ALLOWED_FROM`` is the one table
of which moves are legal; writers pass it to ``ferry.transitions.move_transfers``
so an out-of-order or duplicate update is a no-op instead of a regression.
"""

from __future__ import annotations

import enum


class TransferStatus(enum.StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    ORPHANED = "ORPHANED"
    HELD = "HELD"
    SUBMITTED = "SUBMITTED"
    RELEASED = "RELEASED"
    FINALIZED = "FINALIZED"
    FAILED = "FAILED"


S = TransferStatus

#: For each target state, the states a transfer may move to it from.
ALLOWED_FROM: dict[TransferStatus, frozenset[TransferStatus]] = {
    S.PENDING: frozenset({S.ORPHANED}),
    S.CONFIRMED: frozenset({S.PENDING, S.SUBMITTED, S.HELD, S.FAILED, S.RELEASED}),
    # NOTE: CONFIRMED and HELD only under the indexer's `rollback` deep-reorg policy.
    S.ORPHANED: frozenset({S.PENDING, S.CONFIRMED, S.HELD}),
    S.HELD: frozenset({S.CONFIRMED}),
    S.SUBMITTED: frozenset({S.CONFIRMED}),
    S.RELEASED: frozenset({S.CONFIRMED, S.SUBMITTED, S.HELD, S.FAILED}),
    S.FINALIZED: frozenset({S.RELEASED}),
    S.FAILED: frozenset({S.CONFIRMED, S.SUBMITTED, S.HELD}),
}

#: States in which the relayer still owes the transfer work.
RELAY_PENDING: frozenset[TransferStatus] = frozenset({S.CONFIRMED, S.SUBMITTED})


def transfer_id(source_chain_id: int, source_bridge: str, nonce: int) -> str:
    """The public, deterministic id of a transfer: ``<chain>:<bridge lowercase>:<nonce>``.

    Deterministic so a wallet can compute it from its own lock event and
    subscribe before the indexer has even seen the lock.
    """
    return f"{source_chain_id}:{source_bridge.lower()}:{nonce}"


def parse_transfer_id(value: str) -> tuple[int, str, int]:
    """Inverse of ``transfer_id``; ValueError with a clear message on a malformed id."""
    parts = value.split(":")
    if len(parts) != 3:
        raise ValueError("a transfer id has the form <sourceChainId>:<sourceBridge>:<nonce>")
    chain, bridge, nonce = parts
    if not chain.isdigit() or not nonce.isdigit():
        raise ValueError("a transfer id's chain id and nonce are decimal integers")
    if len(bridge) != 42 or not bridge.startswith("0x"):
        raise ValueError("a transfer id's bridge is a 0x-prefixed 20-byte hex address")
    try:
        int(bridge, 16)
    except ValueError:
        raise ValueError("a transfer id's bridge is a 0x-prefixed 20-byte hex address") from None
    return int(chain), bridge.lower(), int(nonce)


#: The channel on which writers announce committed state changes. The payload is the
#: highest history id the transaction wrote; listeners read history after their cursor.
CHANGES_CHANNEL = "ferry_transfer_changes"
