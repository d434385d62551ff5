// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title LegacyBridge
/// @notice The release side of bridges deployed by the original design, for tests of
/// Ferry's `legacy` adapter: one signer approves `ReleaseTokens(user, amount, nonce)`
/// (EIP-712 domain "CrossChainBridge", version "1") and the bridge pays `user`, the
/// sender of the lock on the source chain. Each nonce pays at most once.
contract LegacyBridge is EIP712 {
    using SafeERC20 for IERC20;

    bytes32 private constant RELEASE_TOKENS_TYPEHASH =
        keccak256("ReleaseTokens(address user,uint256 amount,uint256 nonce)");

    IERC20 private immutable _token;
    address private immutable _signer;
    mapping(uint256 => bool) private _released;

    event TokensReleased(address indexed user, uint256 amount, uint256 indexed nonce);

    error NonceAlreadyReleased(uint256 nonce);
    error InvalidReleaseSigner(address recovered);

    constructor(IERC20 token_, address signer_) EIP712("CrossChainBridge", "1") {
        _token = token_;
        _signer = signer_;
    }

    /// @notice Pay `amount` to `user` for lock `nonce`, approved by the signer.
    function releaseTokens(address user, uint256 amount, uint256 nonce, bytes calldata signature) external {
        if (_released[nonce]) revert NonceAlreadyReleased(nonce);
        bytes32 digest = _hashTypedDataV4(keccak256(abi.encode(RELEASE_TOKENS_TYPEHASH, user, amount, nonce)));
        address recovered = ECDSA.recover(digest, signature);
        if (recovered != _signer) revert InvalidReleaseSigner(recovered);
        _released[nonce] = true;
        _token.safeTransfer(user, amount);
        emit TokensReleased(user, amount, nonce);
    }
}
