// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title TestToken
/// @notice An ERC-20 with 18 decimals that anyone can mint: for local chains, demos
/// and tests only. Never deploy it where tokens are meant to have value.
contract TestToken is ERC20 {
    constructor(string memory name_, string memory symbol_) ERC20(name_, symbol_) {}

    /// @notice Create `amount` new tokens for `to`.
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }
}
