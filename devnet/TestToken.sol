// SPDX-License-Identifier: MIT
// A minimal ERC-20 for the local devnet (tests and the demo): anyone may mint, and batchTransfer pays
// several recipients in ONE transaction (one Transfer log each) so log ordinals can be tested.
//
// The compiled artifact test_token.json is committed; CI does not recompile it. To regenerate, from the
// repository root (solcjs 0.8.37 is installed by `npm ci`):
//   python -m devnet.evm_tools compile-token
// which runs `node_modules/.bin/solcjs --bin --abi --optimize -o <tmp> devnet/TestToken.sol` and
// writes {"abi": [...], "bytecode": "0x..."} to devnet/test_token.json.
pragma solidity ^0.8.20;

contract TestToken {
    string public name;
    string public symbol;
    uint8 public decimals;
    uint256 public totalSupply;
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);

    constructor(string memory name_, string memory symbol_, uint8 decimals_) {
        name = name_;
        symbol = symbol_;
        decimals = decimals_;
    }

    function mint(address to, uint256 amount) external {
        totalSupply += amount;
        balanceOf[to] += amount;
        emit Transfer(address(0), to, amount);
    }

    function transfer(address to, uint256 amount) external returns (bool) {
        _move(msg.sender, to, amount);
        return true;
    }

    function approve(address spender, uint256 amount) external returns (bool) {
        allowance[msg.sender][spender] = amount;
        emit Approval(msg.sender, spender, amount);
        return true;
    }

    function transferFrom(address from, address to, uint256 amount) external returns (bool) {
        uint256 allowed = allowance[from][msg.sender];
        require(allowed >= amount, "allowance");
        if (allowed != type(uint256).max) {
            allowance[from][msg.sender] = allowed - amount;
        }
        _move(from, to, amount);
        return true;
    }

    function batchTransfer(address[] calldata to, uint256[] calldata amounts) external returns (bool) {
        require(to.length == amounts.length, "length");
        for (uint256 i = 0; i < to.length; i++) {
            _move(msg.sender, to[i], amounts[i]);
        }
        return true;
    }

    function _move(address from, address to, uint256 amount) private {
        require(balanceOf[from] >= amount, "balance");
        balanceOf[from] -= amount;
        balanceOf[to] += amount;
        emit Transfer(from, to, amount);
    }
}
