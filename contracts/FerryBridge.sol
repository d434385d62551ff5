// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title FerryBridge
/// @notice One bridge per (chain, token), using a lock/release liquidity model.
///
/// Users lock tokens with `lockTokens`; the Ferry backend sees `TokensLocked` and,
/// on the target chain, calls `release` with an EIP-712 `ReleaseOrder` signed by at
/// least `threshold` of the current signers. Locked tokens are the liquidity that
/// pays releases coming the other way.
///
/// Invariants:
/// - a release order, keyed by (sourceChainId, sourceBridge, nonce), pays at most once;
/// - signatures are accepted only in strictly ascending signer order, so one signer
///   can never count twice;
/// - the signature binds the order to this chain and this contract (EIP-712 domain).
contract FerryBridge is EIP712, Ownable, Pausable, ReentrancyGuard {
    using SafeERC20 for IERC20;

    /// @notice What the signers approve: pay `amount` to `recipient` for lock `nonce`
    /// of the bridge `sourceBridge` on chain `sourceChainId`.
    struct ReleaseOrder {
        uint256 sourceChainId;
        address sourceBridge;
        uint256 nonce;
        address recipient;
        uint256 amount;
    }

    bytes32 public constant RELEASE_ORDER_TYPEHASH = keccak256(
        "ReleaseOrder(uint256 sourceChainId,address sourceBridge,uint256 nonce,address recipient,uint256 amount)"
    );

    /// @notice The token this bridge locks and releases.
    IERC20 public immutable token;

    /// @notice The last lock nonce used (0 before the first lock).
    uint256 public lockNonce;

    /// @notice How many distinct current signers must sign a release order.
    uint256 public threshold;

    address[] private _signers;
    mapping(address signer => bool) private _isSigner;
    mapping(bytes32 replayKey => bool) private _processed;

    event TokensLocked(
        address indexed user, uint256 amount, uint256 indexed nonce, address targetAddress, uint256 targetChainId
    );
    event TransferReleased(
        uint256 indexed sourceChainId,
        uint256 indexed nonce,
        address indexed recipient,
        uint256 amount,
        address sourceBridge
    );
    event SignersUpdated(address[] signers, uint256 threshold);

    error ZeroAmount();
    error ZeroAddress();
    error ZeroChainId();
    error SignaturesNotSorted();
    error UnknownSigner(address signer);
    error NotEnoughSignatures(uint256 got, uint256 needed);
    error AlreadyProcessed(uint256 sourceChainId, address sourceBridge, uint256 nonce);
    error InsufficientLiquidity(uint256 available, uint256 needed);
    error LengthMismatch(uint256 orders, uint256 signatureSets);
    error InvalidThreshold(uint256 threshold, uint256 signerCount);
    error DuplicateSigner(address signer);

    constructor(IERC20 token_, address owner_, address[] memory signers_, uint256 threshold_)
        EIP712("FerryBridge", "1")
        Ownable(owner_)
    {
        if (address(token_) == address(0)) revert ZeroAddress();
        token = token_;
        _setSigners(signers_, threshold_);
    }

    // ---------------------------------------------------------------- lock side

    /// @notice Lock `amount` tokens (approved beforehand) to be released to
    /// `targetAddress` on chain `targetChainId`.
    /// @dev The event carries the amount actually received, so a token that takes a
    /// fee on transfer can never make the bridge release more than it holds.
    function lockTokens(uint256 amount, address targetAddress, uint256 targetChainId)
        external
        whenNotPaused
        nonReentrant
    {
        if (amount == 0) revert ZeroAmount();
        if (targetAddress == address(0)) revert ZeroAddress();
        if (targetChainId == 0) revert ZeroChainId();

        uint256 balanceBefore = token.balanceOf(address(this));
        token.safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = token.balanceOf(address(this)) - balanceBefore;
        if (received == 0) revert ZeroAmount();

        uint256 nonce = ++lockNonce;
        emit TokensLocked(msg.sender, received, nonce, targetAddress, targetChainId);
    }

    // ------------------------------------------------------------- release side

    /// @notice Pay out one release order signed by at least `threshold` signers,
    /// given in strictly ascending signer-address order.
    function release(ReleaseOrder calldata order, bytes[] calldata signatures)
        external
        whenNotPaused
        nonReentrant
    {
        bytes32 replayKey = _replayKey(order);
        if (_processed[replayKey]) {
            revert AlreadyProcessed(order.sourceChainId, order.sourceBridge, order.nonce);
        }
        _release(order, signatures, replayKey);
    }

    /// @notice Pay out several release orders; orders already processed are skipped
    /// silently (no revert, no event), any other failure reverts the whole batch.
    function releaseBatch(ReleaseOrder[] calldata orders, bytes[][] calldata signatures)
        external
        whenNotPaused
        nonReentrant
    {
        if (orders.length != signatures.length) revert LengthMismatch(orders.length, signatures.length);
        for (uint256 i = 0; i < orders.length; ++i) {
            bytes32 replayKey = _replayKey(orders[i]);
            if (_processed[replayKey]) continue;
            _release(orders[i], signatures[i], replayKey);
        }
    }

    // ------------------------------------------------------------------- admin

    /// @notice Replace the whole signer set and threshold (key rotation).
    function setSigners(address[] calldata signers_, uint256 threshold_) external onlyOwner {
        _setSigners(signers_, threshold_);
    }

    function pause() external onlyOwner {
        _pause();
    }

    function unpause() external onlyOwner {
        _unpause();
    }

    // ------------------------------------------------------------------- views

    function isProcessed(uint256 sourceChainId, address sourceBridge, uint256 nonce) external view returns (bool) {
        return _processed[keccak256(abi.encode(sourceChainId, sourceBridge, nonce))];
    }

    /// @notice The full EIP-712 digest the signers sign for `order`.
    function hashOrder(ReleaseOrder calldata order) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    RELEASE_ORDER_TYPEHASH,
                    order.sourceChainId,
                    order.sourceBridge,
                    order.nonce,
                    order.recipient,
                    order.amount
                )
            )
        );
    }

    function getSigners() external view returns (address[] memory) {
        return _signers;
    }

    function isSigner(address account) external view returns (bool) {
        return _isSigner[account];
    }

    // ---------------------------------------------------------------- internals

    function _replayKey(ReleaseOrder calldata order) private pure returns (bytes32) {
        return keccak256(abi.encode(order.sourceChainId, order.sourceBridge, order.nonce));
    }

    function _release(ReleaseOrder calldata order, bytes[] calldata signatures, bytes32 replayKey) private {
        if (order.recipient == address(0)) revert ZeroAddress();
        if (order.amount == 0) revert ZeroAmount();
        _checkSignatures(hashOrder(order), signatures);

        uint256 available = token.balanceOf(address(this));
        if (available < order.amount) revert InsufficientLiquidity(available, order.amount);

        _processed[replayKey] = true;
        token.safeTransfer(order.recipient, order.amount);
        emit TransferReleased(order.sourceChainId, order.nonce, order.recipient, order.amount, order.sourceBridge);
    }

    function _checkSignatures(bytes32 digest, bytes[] calldata signatures) private view {
        uint256 needed = threshold;
        if (signatures.length < needed) revert NotEnoughSignatures(signatures.length, needed);
        address previous = address(0);
        for (uint256 i = 0; i < signatures.length; ++i) {
            address signer = ECDSA.recoverCalldata(digest, signatures[i]);
            if (signer <= previous) revert SignaturesNotSorted();
            if (!_isSigner[signer]) revert UnknownSigner(signer);
            previous = signer;
        }
    }

    function _setSigners(address[] memory signers_, uint256 threshold_) private {
        if (threshold_ == 0 || threshold_ > signers_.length) revert InvalidThreshold(threshold_, signers_.length);
        uint256 oldCount = _signers.length;
        for (uint256 i = 0; i < oldCount; ++i) {
            _isSigner[_signers[i]] = false;
        }
        delete _signers;
        for (uint256 i = 0; i < signers_.length; ++i) {
            address signer = signers_[i];
            if (signer == address(0)) revert ZeroAddress();
            if (_isSigner[signer]) revert DuplicateSigner(signer);
            _isSigner[signer] = true;
            _signers.push(signer);
        }
        threshold = threshold_;
        emit SignersUpdated(signers_, threshold_);
    }
}
