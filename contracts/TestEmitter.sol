// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title TestEmitter
/// @notice Test and benchmark helper, never deployed anywhere real: emits many
/// FerryBridge-shaped `TokensLocked` events per transaction (no tokens move), so
/// a benchmark can put 100,000 locks on a local chain in a few hundred blocks.
/// Point a chain's bridge entry at this contract's address to index it.
contract TestEmitter {
    event TokensLocked(
        address indexed user, uint256 amount, uint256 indexed nonce, address targetAddress, uint256 targetChainId
    );

    /// @notice The nonce of the last emitted lock (the next one is `lockNonce + 1`).
    uint256 public lockNonce;

    /// @notice Emit `count` locks from the caller: amounts `amount`, `amount + 1`, ...
    function emitLocks(uint256 count, uint256 amount, address targetAddress, uint256 targetChainId) external {
        uint256 nonce = lockNonce;
        for (uint256 i = 0; i < count; ++i) {
            unchecked {
                ++nonce;
            }
            emit TokensLocked(msg.sender, amount + i, nonce, targetAddress, targetChainId);
        }
        lockNonce = nonce;
    }
}
