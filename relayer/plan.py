"""From a transfer row to a release plan, or the reason it must not be released.

A transfer is released only when everything about it matches this relayer's
configuration: its route is configured, its source bridge is the configured
bridge for its token, the target bridge it names (if any) is the configured one,
and its recipient, amount and nonce make a valid ``ReleaseOrder``. Anything else
is an unsafe condition for an operator (HELD with the reason), never a guess.

``classify_revert`` decides what a refusal by the target bridge means:

- *done*: ``AlreadyProcessed`` — someone released it; that is success.
- *transient* (retry later, the transfer stays owed): ``InsufficientLiquidity``
  (liquidity arrives with locks the other way), ``EnforcedPause`` (the owner
  paused the bridge), ``ReentrancyGuardReentrantCall`` and
  ``SafeERC20FailedOperation`` (a token-side problem that can clear), and a
  revert the relayer cannot decode, until the transfer has ``MAX_RELEASE_TRIES``
  tries; then it is FAILED.
- *permanent* (FAILED, an operator must look): the signatures are wrong
  (``NotEnoughSignatures``, ``UnknownSigner``, ``SignaturesNotSorted``,
  ``ECDSAInvalidSignature*``) or the order itself is (``ZeroAddress``,
  ``ZeroAmount``). Re-signing the same order with the same keys cannot help.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from eth_utils.address import is_address

from ferry.contracts import ContractError
from ferry.settings import BridgeDeployment, ChainConfig, ChainsConfig, route_id
from relayer.bridge import TargetBridge
from relayer.eip712 import ReleaseOrder
from relayer.store import TransferRow

if TYPE_CHECKING:
    from relayer.context import RelayerContext

ZERO_ADDRESS = "0x" + "00" * 20
#: Tries (signed or refused at estimation) after which an undecodable revert is permanent.
MAX_RELEASE_TRIES = 5

TRANSIENT_ERRORS = frozenset(
    {"InsufficientLiquidity", "EnforcedPause", "ReentrancyGuardReentrantCall", "SafeERC20FailedOperation"}
)
PERMANENT_ERRORS = frozenset(
    {
        "NotEnoughSignatures",
        "UnknownSigner",
        "SignaturesNotSorted",
        "ECDSAInvalidSignature",
        "ECDSAInvalidSignatureLength",
        "ECDSAInvalidSignatureS",
        "ZeroAddress",
        "ZeroAmount",
        "InvalidReleaseSigner",
    }
)


class Verdict(enum.Enum):
    DONE = "done"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


def classify_revert(reason: ContractError | str, tries: int) -> Verdict:
    """What a revert means for the transfer, given how many tries it has had."""
    name = reason.name if isinstance(reason, ContractError) else None
    if name in ("AlreadyProcessed", "NonceAlreadyReleased"):
        return Verdict.DONE
    if name in TRANSIENT_ERRORS:
        return Verdict.TRANSIENT
    if name in PERMANENT_ERRORS or tries >= MAX_RELEASE_TRIES:
        return Verdict.PERMANENT
    return Verdict.TRANSIENT


@dataclass(frozen=True)
class ReleasePlan:
    """The order to release and where: the target bridge and its chain's settings."""

    order: ReleaseOrder
    bridge: TargetBridge
    chain: ChainConfig
    deployment: BridgeDeployment


def plan_release(relayer: RelayerContext, transfer: TransferRow) -> ReleasePlan | str:
    """The release plan for ``transfer``, or a sentence saying why it must be held."""
    chains = relayer.chains
    reason = _route_problem(chains, transfer) or _field_problem(transfer)
    if reason is not None:
        return reason
    target = chains.chain_by_id[transfer.target_chain_id]
    deployment = target.bridges[transfer.token]
    if transfer.target_bridge and transfer.target_bridge.lower() != deployment.bridge.lower():
        return (
            f"the transfer names target bridge {transfer.target_bridge}, but the configured "
            f"{transfer.token} bridge on chain {target.id} is {deployment.bridge}"
        )
    order = ReleaseOrder(
        transfer.source_chain_id,
        transfer.source_bridge,
        int(transfer.nonce),
        transfer.recipient,
        int(transfer.amount),
    )
    bridge = TargetBridge(relayer.rpc[target.id], target.id, deployment.bridge)
    return ReleasePlan(order, bridge, target, deployment)


def _route_problem(chains: ChainsConfig, transfer: TransferRow) -> str | None:
    source, target, token = transfer.source_chain_id, transfer.target_chain_id, transfer.token
    if chains.route(token, source, target) is None:
        return f"route {route_id(token, source, target)} is not configured on this relayer"
    owner = chains.bridge_owner(source, transfer.source_bridge)
    if owner is None or owner[0] != token:
        return (
            f"the lock came from {transfer.source_bridge} on chain {source}, "
            f"which is not the configured {token} bridge there"
        )
    return None


def _field_problem(transfer: TransferRow) -> str | None:
    if not is_address(transfer.recipient) or transfer.recipient.lower() == ZERO_ADDRESS:
        return f"the recipient {transfer.recipient!r} is not an address tokens can be released to"
    if not 0 < transfer.amount < 2**256:
        return f"the amount {transfer.amount} is not a positive uint256"
    if not 0 <= transfer.nonce < 2**256:
        return f"the lock nonce {transfer.nonce} is not a uint256"
    return None
