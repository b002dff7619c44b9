"""Helpers that drive a local anvil for tests and the demo: deploy the test token, pay, mine, reorganise.

Synchronous and dependency-light on purpose (urllib + eth_abi): they are called from pytest fixtures and
from async tests alike, and anvil answers in well under a millisecond. Senders are anvil's prefunded,
unlocked dev accounts (`accounts(url)`), so no keys are handled here.

Every sending helper takes `wait`: True waits for the receipt, False returns the txid at once, None (the
default) waits only when anvil auto-mines. That wait matters: with auto-mining anvil answers
eth_sendTransaction before the block is visible; in a test here eth_getTransactionByHash still showed no
block number right after sending in 5 of 30 tries.

How anvil 1.7.1 rewrites history (measured, see the report of the EVM adapter work):

* `anvil_reorg [depth, [[tx, offset], ...]]` replaces the newest `depth` blocks by `depth` new blocks:
  the height stays the same, the hashes change. Transactions of the removed blocks are GONE (not back
  in the pool: eth_getTransactionByHash returns null, txpool_status is empty, the sender's nonce is
  rolled back), except those listed. A listed tx is either a request object ({"from": dev account, ...},
  signed by anvil) or a raw signed tx hex; `offset` counts from the first new block (0 = height
  head-depth+1). Listing the raw bytes of a removed tx re-includes the SAME txid in another block
  (scenario b); listing a request with the removed tx's sender and nonce replaces it (scenario a).
* `anvil_rollback depth` removes the newest `depth` blocks and the height goes down; their
  transactions are gone the same way (null, empty pool, nonce rolled back). A new transaction with the
  same sender and nonce can be sent afterwards and is mined normally.
* `evm_snapshot` / `evm_revert id` behave like a rollback to the snapshot: later blocks and their
  transactions are gone, nonces are rolled back, the pool is empty.
* `anvil_dropTransaction txid` removes a pending transaction from the pool (the nonce stays unused);
  sending another tx with the same nonce and a higher fee replaces a pending one in the pool at once
  (the old txid becomes unknown to eth_getTransactionByHash).

So the two scenarios the follower needs are produced by:
  (a) removed for good: `reorg_drop` (tx gone, nonce unused: tx_fate says UNKNOWN), `reorg_replace` (a
      self-transfer with the same sender and nonce takes its place: REPLACED), and for a pending tx
      `drop_transaction` / `replace_pending`;
  (b) re-included elsewhere: `reorg_reinclude` (same txid, another block and height: MINED).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eth_abi.abi import decode, encode
from eth_utils.crypto import keccak

from chains.evm.address import parse_evm_address, to_checksum
from devnet import REPO_ROOT

ARTIFACT = Path(__file__).with_name("test_token.json")
SOURCE = Path(__file__).with_name("TestToken.sol")
# PUSH1 0 PUSH1 0 REVERT: any call to an address holding this code fails, so a value tx to it reverts.
REVERTING_CODE = "0x60006000fd"
# Enough for a plain transfer and for hitting REVERTING_CODE; fixed so anvil does not estimate gas
# (estimation of a transaction that reverts is refused, and the test needs that transaction mined).
ETH_TRANSFER_GAS = 60_000


class RpcError(RuntimeError):
    """anvil answered with a JSON-RPC error."""


# ------------------------------------------------------------------------------------------- rpc


def rpc(url: str, method: str, *params: Any) -> Any:
    """One JSON-RPC call; RpcError if the node answers with an error."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    if answer.get("error") is not None:
        raise RpcError(f"{method}: {answer['error']}")
    return answer.get("result")


def accounts(url: str) -> list[str]:
    """anvil's prefunded, unlocked dev accounts (checksum form)."""
    return [to_checksum(parse_evm_address(a)) for a in rpc(url, "eth_accounts")]


def head_height(url: str) -> int:
    return int(rpc(url, "eth_blockNumber"), 16)


def mine(url: str, blocks: int = 1) -> None:
    rpc(url, "anvil_mine", hex(blocks))


def automine(url: str) -> bool:
    return bool(rpc(url, "anvil_getAutomine"))


def set_automine(url: str, enabled: bool) -> None:
    """Switch between mining every transaction at once and mining only on `mine`."""
    rpc(url, "evm_setAutomine", enabled)


def wait_mined(url: str, txid: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The receipt of `txid` once its block is visible; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        receipt = rpc(url, "eth_getTransactionReceipt", txid)
        if receipt is not None and rpc(url, "eth_getTransactionByHash", txid).get("blockNumber"):
            return dict(receipt)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{txid} not mined within {timeout_s} s")
        time.sleep(0.01)


def send_tx(url: str, tx: dict[str, Any], *, wait: bool | None = None) -> str:
    """eth_sendTransaction from an unlocked account; see the module docstring for `wait`."""
    txid = str(rpc(url, "eth_sendTransaction", tx))
    if wait or (wait is None and automine(url)):
        wait_mined(url, txid)
    return txid


# ------------------------------------------------------------------------------------------ ETH


def send_eth(
    url: str, sender: str, to: str, wei: int, *, nonce: int | None = None, wait: bool | None = None
) -> str:
    """Pay `wei` from a dev account; the txid. Uses a fixed gas limit so a reverting receiver works."""
    tx: dict[str, Any] = {"from": sender, "to": to, "value": hex(wei), "gas": hex(ETH_TRANSFER_GAS)}
    if nonce is not None:
        tx["nonce"] = hex(nonce)
    return send_tx(url, tx, wait=wait)


def make_reverting(url: str, address: str) -> None:
    """Give `address` code that always reverts: a value transaction to it is mined with status 0."""
    rpc(url, "anvil_setCode", address, REVERTING_CODE)


# ---------------------------------------------------------------------------------------- token


def load_token_artifact() -> dict[str, Any]:
    """{"abi": [...], "bytecode": "0x..."} of TestToken.sol (committed, see compile_token)."""
    artifact: dict[str, Any] = json.loads(ARTIFACT.read_text())
    return artifact


def _calldata(signature: str, types: Sequence[str], args: Sequence[Any]) -> str:
    return "0x" + (keccak(text=signature)[:4] + encode(list(types), list(args))).hex()


def deploy_token(url: str, name: str, symbol: str, decimals: int, *, sender: str | None = None) -> str:
    """Deploy a TestToken and return its checksum address. Mines a block if anvil does not auto-mine."""
    sender = sender or accounts(url)[0]
    args = encode(["string", "string", "uint8"], [name, symbol, decimals]).hex()
    txid = str(
        rpc(url, "eth_sendTransaction", {"from": sender, "data": load_token_artifact()["bytecode"] + args})
    )
    if not automine(url):
        mine(url)
    receipt = wait_mined(url, txid)
    if receipt.get("status") != "0x1" or not receipt.get("contractAddress"):
        raise RpcError(f"deploying {symbol} failed: {receipt}")
    return to_checksum(parse_evm_address(receipt["contractAddress"]))


def mint(
    url: str, token: str, to: str, amount: int, *, sender: str | None = None, wait: bool | None = None
) -> str:
    data = _calldata("mint(address,uint256)", ["address", "uint256"], [to, amount])
    return send_tx(url, {"from": sender or accounts(url)[0], "to": token, "data": data}, wait=wait)


def token_transfer(
    url: str, token: str, sender: str, to: str, amount: int, *, wait: bool | None = None
) -> str:
    data = _calldata("transfer(address,uint256)", ["address", "uint256"], [to, amount])
    return send_tx(url, {"from": sender, "to": token, "data": data}, wait=wait)


def token_batch_transfer(
    url: str,
    token: str,
    sender: str,
    recipients: Sequence[str],
    amounts: Sequence[int],
    *,
    wait: bool | None = None,
) -> str:
    """One transaction emitting one Transfer log per recipient, in the order given."""
    data = _calldata(
        "batchTransfer(address[],uint256[])", ["address[]", "uint256[]"], [list(recipients), list(amounts)]
    )
    return send_tx(url, {"from": sender, "to": token, "data": data}, wait=wait)


def token_balance(url: str, token: str, holder: str) -> int:
    answer = rpc(
        url, "eth_call", {"to": token, "data": _calldata("balanceOf(address)", ["address"], [holder])}
    )
    (balance,) = decode(["uint256"], bytes.fromhex(answer[2:]))
    return int(balance)


# -------------------------------------------------------------------------------- history changes


def snapshot(url: str) -> str:
    """An evm_snapshot id; `revert` to it removes later blocks and their transactions for good."""
    return str(rpc(url, "evm_snapshot"))


def revert(url: str, snapshot_id: str) -> None:
    if rpc(url, "evm_revert", snapshot_id) is not True:
        raise RpcError(f"evm_revert {snapshot_id} refused")


def rollback(url: str, depth: int) -> None:
    """Remove the newest `depth` blocks; the height goes down and their transactions are gone."""
    rpc(url, "anvil_rollback", depth)


def drop_transaction(url: str, txid: str) -> None:
    """Remove a pending transaction from anvil's pool (its nonce stays unused)."""
    rpc(url, "anvil_dropTransaction", txid)


def replace_pending(url: str, txid: str) -> str:
    """Replace a pending transaction by a zero-value self-transfer with the same sender and nonce and a
    higher fee; the new txid. The old one becomes unknown to the node at once."""
    old = rpc(url, "eth_getTransactionByHash", txid)
    if old is None or old.get("blockNumber") is not None:
        raise RpcError(f"{txid} is not pending")
    fee = 2 * int(old.get("maxFeePerGas") or old["gasPrice"], 16) + 1
    tip = 2 * int(old.get("maxPriorityFeePerGas") or old["gasPrice"], 16) + 1
    tx = {"from": old["from"], "to": old["from"], "value": "0x0", "nonce": old["nonce"]}
    tx |= {"maxFeePerGas": hex(fee), "maxPriorityFeePerGas": hex(tip)}
    return str(rpc(url, "eth_sendTransaction", tx))


def reorg_drop(url: str, depth: int) -> None:
    """Replace the newest `depth` blocks by as many empty ones: their transactions are gone for good."""
    rpc(url, "anvil_reorg", depth, [])


def reorg_replace(url: str, depth: int, txid: str, *, offset: int = 0) -> str:
    """Reorganise the newest `depth` blocks so that a zero-value self-transfer with the same sender and
    nonce as `txid` takes its place `offset` blocks after the fork point; the new txid."""
    old = _mined_tx(url, txid, depth)
    replacement = {"from": old["from"], "to": old["from"], "value": "0x0", "nonce": old["nonce"]}
    rpc(url, "anvil_reorg", depth, [[replacement, offset]])
    return _find_tx(url, depth, old["from"], old["nonce"])


def reorg_reinclude(url: str, depth: int, txids: Sequence[str], *, offset: int = 1) -> None:
    """Reorganise the newest `depth` blocks, mining `txids` again (same txids) `offset` blocks after
    the fork point; other transactions of those blocks are gone."""
    if not 0 <= offset < depth:
        raise ValueError(f"offset {offset} must be within the {depth} new blocks")
    raw = []
    for txid in txids:
        _mined_tx(url, txid, depth)
        raw.append([rpc(url, "eth_getRawTransactionByHash", txid), offset])
    rpc(url, "anvil_reorg", depth, raw)


def _mined_tx(url: str, txid: str, depth: int) -> dict[str, Any]:
    tx = rpc(url, "eth_getTransactionByHash", txid)
    if tx is None or tx.get("blockNumber") is None:
        raise RpcError(f"{txid} is not mined")
    if int(tx["blockNumber"], 16) <= head_height(url) - depth:
        raise RpcError(f"{txid} is deeper than the {depth} blocks to reorganise")
    return dict(tx)


def _find_tx(url: str, depth: int, sender: str, nonce: str) -> str:
    top = head_height(url)
    for height in range(top - depth + 1, top + 1):
        block = rpc(url, "eth_getBlockByNumber", hex(height), True)
        for tx in block["transactions"]:
            if tx["from"].lower() == sender.lower() and tx["nonce"] == nonce:
                return str(tx["hash"])
    raise RpcError(f"no transaction of {sender} with nonce {nonce} in the new blocks")


# ------------------------------------------------------------------------------------ compiling


def compile_token(out: Path = ARTIFACT) -> None:
    """Compile TestToken.sol with the repository's solcjs (npm ci) and write the artifact."""
    solcjs = REPO_ROOT / "node_modules" / ".bin" / "solcjs"
    with tempfile.TemporaryDirectory() as tmp:
        source = SOURCE.resolve().relative_to(REPO_ROOT)
        subprocess.run(
            [str(solcjs), "--bin", "--abi", "--optimize", "-o", tmp, str(source)], cwd=REPO_ROOT, check=True
        )
        (abi_file,) = Path(tmp).glob("*TestToken.abi")
        (bin_file,) = Path(tmp).glob("*TestToken.bin")
        artifact = {"abi": json.loads(abi_file.read_text()), "bytecode": "0x" + bin_file.read_text().strip()}
    out.write_text(json.dumps(artifact, indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["compile-token"]:
        sys.exit("usage: python -m devnet.evm_tools compile-token")
    compile_token()
