"""FerryBridge on a real anvil chain: lock, release, replay protection, batches, rotation, pause."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from eth_typing import HexStr
from web3 import HTTPProvider, Web3
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from ferry.contracts import ContractError, decode_contract_error
from ferry.deploy import (
    DeployedBridge,
    TransactionFailed,
    bridge_contract,
    deploy_bridge,
    deploy_test_token,
    lock_tokens,
    mint,
    send_transaction,
    token_contract,
)
from ferry.devchain import DEV_ACCOUNTS, AnvilProcess, free_port
from relayer.eip712 import ReleaseOrder, release_order_digest, sign_release_order

CHAIN_ID = 31337
SOURCE_CHAIN_ID = 10
SOURCE_BRIDGE = Web3.to_checksum_address("0x" + "5b" * 20)
OWNER, OWNER_KEY = DEV_ACCOUNTS[0]
USER, USER_KEY = DEV_ACCOUNTS[4]
RECIPIENT = DEV_ACCOUNTS[5][0]
SUBMITTER_KEY = DEV_ACCOUNTS[6][1]  # anyone may submit a correctly signed release
SIGNER_KEYS = [bytes.fromhex(key[2:]) for _, key in DEV_ACCOUNTS[1:4]]
SIGNERS = [address for address, _ in DEV_ACCOUNTS[1:4]]
NEW_SIGNER_KEYS = [bytes.fromhex(key[2:]) for _, key in DEV_ACCOUNTS[7:10]]
NEW_SIGNERS = [address for address, _ in DEV_ACCOUNTS[7:10]]
LIQUIDITY = 1_000 * 10**18


@dataclass
class Bridge:
    w3: Web3
    deployed: DeployedBridge
    contract: Any
    token: Any

    def order(self, nonce: int, amount: int = 10**18, recipient: str = RECIPIENT) -> ReleaseOrder:
        return ReleaseOrder(SOURCE_CHAIN_ID, SOURCE_BRIDGE, nonce, recipient, amount)

    def sign(self, order: ReleaseOrder, keys: list[bytes]) -> list[bytes]:
        return sign_release_order(order, CHAIN_ID, self.deployed.bridge, keys)

    def balance(self, account: str) -> int:
        balance: int = self.token.functions.balanceOf(account).call()
        return balance

    def release(self, order: ReleaseOrder, signatures: list[bytes]) -> Any:
        call = self.contract.functions.release(order.as_tuple(), signatures)
        return send_transaction(self.w3, SUBMITTER_KEY, call, "releasing")


def revert_error(call: Any, sender: str = OWNER) -> ContractError:
    """Simulate `call` and return the custom error it reverts with."""
    with pytest.raises(ContractLogicError) as raised:
        call.call({"from": sender})
    decoded = decode_contract_error(raised.value.data if isinstance(raised.value.data, str) else None)
    assert decoded is not None, f"not a known custom error: {raised.value!r}"
    return decoded


@pytest.fixture(scope="module")
def chain() -> Iterator[AnvilProcess]:
    with AnvilProcess.start(CHAIN_ID, free_port()) as anvil:
        yield anvil


@pytest.fixture
def bridge(chain: AnvilProcess) -> Bridge:
    """A fresh token and 2-of-3 bridge per test, with liquidity and a funded user."""
    w3 = Web3(HTTPProvider(chain.url))
    token = deploy_test_token(w3, OWNER_KEY)
    deployed = deploy_bridge(w3, OWNER_KEY, token, OWNER, SIGNERS, 2)
    mint(w3, OWNER_KEY, token, deployed.bridge, LIQUIDITY)
    mint(w3, OWNER_KEY, token, USER, 100 * 10**18)
    return Bridge(w3, deployed, bridge_contract(w3, deployed.bridge), token_contract(w3, token))


def test_dev_accounts_are_the_ones_anvil_funds(chain: AnvilProcess) -> None:
    w3 = Web3(HTTPProvider(chain.url))
    assert list(w3.eth.accounts) == [address for address, _ in DEV_ACCOUNTS]
    for address, key in DEV_ACCOUNTS:
        assert w3.eth.account.from_key(key).address == address


def test_deployment_reports_its_configuration(bridge: Bridge) -> None:
    assert bridge.deployed.chain_id == CHAIN_ID
    assert bridge.deployed.deploy_block > 0
    assert bridge.contract.functions.getSigners().call() == SIGNERS
    assert bridge.contract.functions.threshold().call() == 2
    assert bridge.contract.functions.isSigner(SIGNERS[0]).call()
    assert not bridge.contract.functions.isSigner(OWNER).call()
    assert bridge.contract.functions.lockNonce().call() == 0


def test_contract_digest_matches_python(bridge: Bridge) -> None:
    for order in (bridge.order(1), bridge.order(2**255, amount=7, recipient=USER)):
        on_chain = bytes(bridge.contract.functions.hashOrder(order.as_tuple()).call())
        assert on_chain == release_order_digest(order, CHAIN_ID, bridge.deployed.bridge)


def test_lock_emits_tokens_locked_with_increasing_nonces(bridge: Bridge) -> None:
    first = lock_tokens(
        bridge.w3, USER_KEY, bridge.token.address, bridge.deployed.bridge, 3 * 10**18, RECIPIENT, 5
    )
    second = lock_tokens(
        bridge.w3, USER_KEY, bridge.token.address, bridge.deployed.bridge, 10**18, RECIPIENT, 5
    )
    assert (first.nonce, second.nonce) == (1, 2)
    receipt = bridge.w3.eth.get_transaction_receipt(HexStr(first.tx_hash))
    (event,) = bridge.contract.events.TokensLocked().process_receipt(receipt, errors=DISCARD)
    assert dict(event["args"]) == {
        "user": USER,
        "amount": 3 * 10**18,
        "nonce": 1,
        "targetAddress": RECIPIENT,
        "targetChainId": 5,
    }
    assert bridge.contract.functions.lockNonce().call() == 2
    assert bridge.balance(bridge.deployed.bridge) == LIQUIDITY + 4 * 10**18


def test_lock_refuses_zero_amount_address_and_chain(bridge: Bridge) -> None:
    lock = bridge.contract.functions.lockTokens
    assert revert_error(lock(0, RECIPIENT, 5), USER).name == "ZeroAmount"
    assert revert_error(lock(1, "0x" + "00" * 20, 5), USER).name == "ZeroAddress"
    assert revert_error(lock(1, RECIPIENT, 0), USER).name == "ZeroChainId"


def test_release_with_two_sorted_signatures_pays_recipient(bridge: Bridge) -> None:
    order = bridge.order(1, amount=25 * 10**18)
    before = bridge.balance(RECIPIENT)
    receipt = bridge.release(order, bridge.sign(order, SIGNER_KEYS[:2]))
    assert bridge.balance(RECIPIENT) == before + 25 * 10**18
    (event,) = bridge.contract.events.TransferReleased().process_receipt(receipt, errors=DISCARD)
    assert dict(event["args"]) == {
        "sourceChainId": SOURCE_CHAIN_ID,
        "nonce": 1,
        "recipient": RECIPIENT,
        "amount": 25 * 10**18,
        "sourceBridge": order.source_bridge,
    }
    assert bridge.contract.functions.isProcessed(SOURCE_CHAIN_ID, SOURCE_BRIDGE, 1).call()
    assert not bridge.contract.functions.isProcessed(SOURCE_CHAIN_ID, SOURCE_BRIDGE, 2).call()


def test_replay_reverts_with_already_processed(bridge: Bridge) -> None:
    order = bridge.order(7)
    signatures = bridge.sign(order, SIGNER_KEYS)
    bridge.release(order, signatures)
    error = revert_error(bridge.contract.functions.release(order.as_tuple(), signatures))
    assert error == ContractError("AlreadyProcessed", (SOURCE_CHAIN_ID, order.source_bridge, 7))
    with pytest.raises(TransactionFailed, match="AlreadyProcessed"):
        bridge.release(order, signatures)


def test_bad_signature_sets_revert_with_the_right_error(bridge: Bridge) -> None:
    order = bridge.order(3)
    release = bridge.contract.functions.release
    signatures = bridge.sign(order, SIGNER_KEYS[:2])

    unsorted = revert_error(release(order.as_tuple(), list(reversed(signatures))))
    assert unsorted.name == "SignaturesNotSorted"
    duplicated = revert_error(release(order.as_tuple(), [signatures[0], signatures[0]]))
    assert duplicated.name == "SignaturesNotSorted"

    stranger = bytes.fromhex(DEV_ACCOUNTS[9][1][2:])
    unknown = revert_error(release(order.as_tuple(), bridge.sign(order, [SIGNER_KEYS[0], stranger])))
    assert unknown == ContractError("UnknownSigner", (DEV_ACCOUNTS[9][0],))

    too_few = revert_error(release(order.as_tuple(), signatures[:1]))
    assert too_few == ContractError("NotEnoughSignatures", (1, 2))

    other_order = bridge.sign(bridge.order(4), SIGNER_KEYS[:2])  # valid signers, wrong digest
    assert revert_error(release(order.as_tuple(), other_order)).name in (
        "UnknownSigner",
        "SignaturesNotSorted",
    )
    assert not bridge.contract.functions.isProcessed(SOURCE_CHAIN_ID, SOURCE_BRIDGE, 3).call()


def test_release_refuses_zero_recipient_zero_amount_and_missing_liquidity(bridge: Bridge) -> None:
    release = bridge.contract.functions.release
    zero_recipient = bridge.order(1, recipient="0x" + "00" * 20)
    assert revert_error(
        release(zero_recipient.as_tuple(), bridge.sign(zero_recipient, SIGNER_KEYS))
    ).name == ("ZeroAddress")
    zero_amount = bridge.order(1, amount=0)
    assert (
        revert_error(release(zero_amount.as_tuple(), bridge.sign(zero_amount, SIGNER_KEYS))).name
        == "ZeroAmount"
    )
    too_big = bridge.order(1, amount=LIQUIDITY + 1)
    error = revert_error(release(too_big.as_tuple(), bridge.sign(too_big, SIGNER_KEYS)))
    assert error == ContractError("InsufficientLiquidity", (LIQUIDITY, LIQUIDITY + 1))


def test_release_batch_skips_processed_orders_and_pays_the_rest(bridge: Bridge) -> None:
    done, fresh_a, fresh_b = (
        bridge.order(1, amount=1),
        bridge.order(2, amount=20),
        bridge.order(3, amount=300),
    )
    bridge.release(done, bridge.sign(done, SIGNER_KEYS[:2]))
    before = bridge.balance(RECIPIENT)

    orders = [done, fresh_a, fresh_b]
    signatures = [bridge.sign(order, SIGNER_KEYS[1:]) for order in orders]
    call = bridge.contract.functions.releaseBatch([order.as_tuple() for order in orders], signatures)
    receipt = send_transaction(bridge.w3, SUBMITTER_KEY, call, "releasing a batch")

    assert bridge.balance(RECIPIENT) == before + 320
    events = bridge.contract.events.TransferReleased().process_receipt(receipt, errors=DISCARD)
    assert [event["args"]["nonce"] for event in events] == [2, 3]
    again = bridge.contract.functions.releaseBatch([order.as_tuple() for order in orders], signatures)
    receipt = send_transaction(bridge.w3, SUBMITTER_KEY, again, "replaying a batch")
    assert bridge.contract.events.TransferReleased().process_receipt(receipt, errors=DISCARD) == ()
    assert bridge.balance(RECIPIENT) == before + 320


def test_release_batch_reverts_whole_on_any_other_error(bridge: Bridge) -> None:
    good, bad = bridge.order(1), bridge.order(2)
    batch = bridge.contract.functions.releaseBatch
    error = revert_error(batch([good.as_tuple(), bad.as_tuple()], [bridge.sign(good, SIGNER_KEYS), []]))
    assert error == ContractError("NotEnoughSignatures", (0, 2))
    mismatch = revert_error(batch([good.as_tuple()], []))
    assert mismatch == ContractError("LengthMismatch", (1, 0))
    assert not bridge.contract.functions.isProcessed(SOURCE_CHAIN_ID, SOURCE_BRIDGE, 1).call()


def test_set_signers_rotates_keys_and_old_signatures_stop_working(bridge: Bridge) -> None:
    functions = bridge.contract.functions
    assert revert_error(functions.setSigners(NEW_SIGNERS, 2), USER).name == "OwnableUnauthorizedAccount"
    assert revert_error(functions.setSigners(NEW_SIGNERS, 4)) == ContractError("InvalidThreshold", (4, 3))
    assert revert_error(functions.setSigners(NEW_SIGNERS, 0)) == ContractError("InvalidThreshold", (0, 3))
    assert revert_error(functions.setSigners([NEW_SIGNERS[0]] * 2, 1)).name == "DuplicateSigner"
    assert revert_error(functions.setSigners(["0x" + "00" * 20], 1)).name == "ZeroAddress"

    receipt = send_transaction(bridge.w3, OWNER_KEY, functions.setSigners(NEW_SIGNERS, 3), "rotating signers")
    (event,) = bridge.contract.events.SignersUpdated().process_receipt(receipt, errors=DISCARD)
    assert (event["args"]["signers"], event["args"]["threshold"]) == (NEW_SIGNERS, 3)
    assert functions.getSigners().call() == NEW_SIGNERS
    assert not functions.isSigner(SIGNERS[0]).call()

    order = bridge.order(11)
    old = revert_error(functions.release(order.as_tuple(), bridge.sign(order, SIGNER_KEYS)))
    assert old.name == "UnknownSigner"
    assert revert_error(functions.release(order.as_tuple(), bridge.sign(order, NEW_SIGNER_KEYS[:2]))) == (
        ContractError("NotEnoughSignatures", (2, 3))
    )
    bridge.release(order, bridge.sign(order, NEW_SIGNER_KEYS))
    assert functions.isProcessed(SOURCE_CHAIN_ID, SOURCE_BRIDGE, 11).call()


def test_pause_blocks_lock_and_release_until_unpaused(bridge: Bridge) -> None:
    functions = bridge.contract.functions
    assert revert_error(functions.pause(), USER).name == "OwnableUnauthorizedAccount"
    send_transaction(bridge.w3, OWNER_KEY, functions.pause(), "pausing")
    assert functions.paused().call()

    order = bridge.order(1)
    signatures = bridge.sign(order, SIGNER_KEYS[:2])
    send_transaction(
        bridge.w3, USER_KEY, bridge.token.functions.approve(bridge.deployed.bridge, 10**18), "approving"
    )
    assert revert_error(functions.lockTokens(10**18, RECIPIENT, 5), USER).name == "EnforcedPause"
    assert revert_error(functions.release(order.as_tuple(), signatures)).name == "EnforcedPause"
    assert revert_error(functions.releaseBatch([order.as_tuple()], [signatures])).name == "EnforcedPause"

    send_transaction(bridge.w3, OWNER_KEY, functions.unpause(), "unpausing")
    bridge.release(order, signatures)
    lock = lock_tokens(
        bridge.w3, USER_KEY, bridge.token.address, bridge.deployed.bridge, 10**18, RECIPIENT, 5
    )
    assert lock.nonce == 1
