"""Deploy and drive the Ferry contracts with synchronous web3 (dev chains, demos, tests).

Every transaction is built with an explicit nonce (`get_transaction_count(...,
"pending")`), signed locally with eth_account and sent raw, so this works against
any JSON-RPC node, not only ones that hold unlocked accounts. Each helper waits
for the receipt and raises `TransactionFailed` with the decoded custom error when
the contract refuses; keys and endpoint URLs never appear in its messages.

This is not the relayer's submitter: it sends one transaction at a time and
waits, which is right for set-up and demos and wrong for throughput.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from web3 import Web3
from web3.contract.contract import ContractConstructor, ContractFunction
from web3.exceptions import ContractLogicError
from web3.types import TxParams, TxReceipt

from ferry.contracts import TOKENS_LOCKED_TOPIC, decode_contract_error, load_artifact

#: A private key as 32 bytes or 0x-prefixed hex.
PrivateKey = str | bytes

RECEIPT_TIMEOUT_SECONDS = 120.0


class TransactionFailed(RuntimeError):
    """A transaction could not be sent, or was mined and reverted."""


@dataclass(frozen=True)
class DeployedBridge:
    """A FerryBridge deployment: where it lives and the block to index from."""

    chain_id: int
    token: str
    bridge: str
    deploy_block: int


@dataclass(frozen=True)
class LockReceipt:
    """A mined `lockTokens` call and the lock nonce the bridge assigned to it."""

    tx_hash: str
    block_number: int
    nonce: int


def _account(key: PrivateKey) -> LocalAccount:
    account: LocalAccount = Account.from_key(key)
    return account


def _describe_revert(error: ContractLogicError) -> str:
    decoded = decode_contract_error(error.data if isinstance(error.data, str) else None)
    return str(decoded) if decoded is not None else (error.message or "reverted without a reason")


def send_transaction(
    w3: Web3, sender_key: PrivateKey, call: ContractFunction | ContractConstructor, what: str
) -> TxReceipt:
    """Build, sign and send `call` from the key's account; return the successful receipt."""
    account = _account(sender_key)
    params: TxParams = {
        "from": account.address,
        "nonce": w3.eth.get_transaction_count(account.address, "pending"),
    }
    try:
        tx = call.build_transaction(params)
    except ContractLogicError as error:
        raise TransactionFailed(f"{what} would revert: {_describe_revert(error)}") from error
    signed = account.sign_transaction(cast("dict[str, Any]", tx))
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT_SECONDS)
    if receipt["status"] != 1:
        raise TransactionFailed(
            f"{what} reverted in transaction {tx_hash.to_0x_hex()} (block {receipt['blockNumber']})"
        )
    return receipt


def _deploy(w3: Web3, deployer_key: PrivateKey, artifact_name: str, *args: Any) -> TxReceipt:
    artifact = load_artifact(artifact_name)
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    receipt = send_transaction(w3, deployer_key, factory.constructor(*args), f"deploying {artifact_name}")
    if receipt["contractAddress"] is None:
        raise TransactionFailed(f"deploying {artifact_name} produced no contract address")
    return receipt


def deploy_contract(w3: Web3, deployer_key: PrivateKey, artifact_name: str, *args: Any) -> str:
    """Deploy the committed artifact `artifact_name` with constructor `args`; return its address."""
    return str(_deploy(w3, deployer_key, artifact_name, *args)["contractAddress"])


def deploy_test_token(
    w3: Web3, deployer_key: PrivateKey, name: str = "Ferry Test Token", symbol: str = "FTT"
) -> str:
    """Deploy a mintable 18-decimal TestToken; return its address."""
    return deploy_contract(w3, deployer_key, "TestToken", name, symbol)


def deploy_bridge(
    w3: Web3, deployer_key: PrivateKey, token: str, owner: str, signers: Sequence[str], threshold: int
) -> DeployedBridge:
    """Deploy a FerryBridge for `token`, owned by `owner`, with a `threshold`-of-`signers` set."""
    receipt = _deploy(
        w3,
        deployer_key,
        "FerryBridge",
        to_checksum_address(token),
        to_checksum_address(owner),
        [to_checksum_address(signer) for signer in signers],
        threshold,
    )
    return DeployedBridge(
        chain_id=w3.eth.chain_id,
        token=to_checksum_address(token),
        bridge=str(receipt["contractAddress"]),
        deploy_block=receipt["blockNumber"],
    )


def token_contract(w3: Web3, token: str) -> Any:
    """A web3 contract object for the TestToken (any ERC-20) at `token`."""
    return w3.eth.contract(address=to_checksum_address(token), abi=load_artifact("TestToken").abi)


def bridge_contract(w3: Web3, bridge: str) -> Any:
    """A web3 contract object for the FerryBridge at `bridge`."""
    return w3.eth.contract(address=to_checksum_address(bridge), abi=load_artifact("FerryBridge").abi)


def mint(w3: Web3, minter_key: PrivateKey, token: str, to: str, amount: int) -> str:
    """Mint `amount` TestToken units to `to`; return the transaction hash."""
    call = token_contract(w3, token).functions.mint(to_checksum_address(to), amount)
    receipt = send_transaction(w3, minter_key, call, "minting test tokens")
    return receipt["transactionHash"].to_0x_hex()


def lock_tokens(
    w3: Web3,
    user_key: PrivateKey,
    token: str,
    bridge: str,
    amount: int,
    target_address: str,
    target_chain_id: int,
) -> LockReceipt:
    """Approve the bridge (when the allowance is short) and lock `amount` for the target chain."""
    user = _account(user_key).address
    erc20 = token_contract(w3, token)
    bridge_address = to_checksum_address(bridge)
    if erc20.functions.allowance(user, bridge_address).call() < amount:
        send_transaction(
            w3, user_key, erc20.functions.approve(bridge_address, amount), "approving the bridge"
        )
    call = bridge_contract(w3, bridge_address).functions.lockTokens(
        amount, to_checksum_address(target_address), target_chain_id
    )
    receipt = send_transaction(w3, user_key, call, "locking tokens")
    for log in receipt["logs"]:
        topics = log["topics"]
        if log["address"] == bridge_address and topics and topics[0].to_0x_hex() == TOKENS_LOCKED_TOPIC:
            return LockReceipt(
                tx_hash=receipt["transactionHash"].to_0x_hex(),
                block_number=receipt["blockNumber"],
                nonce=int.from_bytes(topics[2], "big"),
            )
    raise TransactionFailed(f"locking tokens emitted no TokensLocked event from {bridge_address}")


def deploy_from_cli(args: Any) -> None:
    """``ferry deploy``: a test token and a bridge on one chain; prints the chains-file entry.

    The deployer's key comes from the environment variable named by
    ``--deployer-key-env`` (never from the command line, where it would reach the
    shell history and the process list).
    """
    import os

    from web3 import HTTPProvider

    from ferry.settings import ConfigError

    key = os.environ.get(args.deployer_key_env)
    if not key:
        raise ConfigError(f"set {args.deployer_key_env} to the deployer's hex private key")
    signers = [s.strip() for s in args.signers.split(",") if s.strip()]
    if not signers or not 0 < args.threshold <= len(signers):
        raise ConfigError("--threshold must be between 1 and the number of --signers")
    w3 = Web3(HTTPProvider(args.rpc_url, request_kwargs={"timeout": 30}))
    deployer = _account(key).address
    token = deploy_test_token(w3, key, symbol=args.token_symbol)
    deployed = deploy_bridge(w3, key, token, deployer, signers, args.threshold)
    print(
        f"chain {deployed.chain_id}: bridges:\n"
        f'  {args.token_symbol}: {{bridge: "{deployed.bridge}", token: "{deployed.token}", '
        f"start_block: {deployed.deploy_block}}}"
    )
