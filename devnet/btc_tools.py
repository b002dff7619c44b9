"""Helpers that drive a local bcoin regtest node (`BcoinNode`) for tests and the demo.

Synchronous and small on purpose (urllib + python-bitcoinlib), like evm_tools: they are called from
pytest fixtures and from async tests alike, and the node answers in milliseconds.

Amounts are integers in satoshi at this module's API. On the wire bcoin (like Core) wants BTC as JSON
numbers: `Btc(sats)` writes the exact decimal literal ("0.00012345") into the request, and answers are
parsed with `Decimal`, so no amount ever passes through a Python float.

python-bitcoinlib keeps its chain parameters in process-global state (`bitcoin.SelectParams`). The
helpers here select regtest only for the duration of each call (`regtest_params()`) and restore the
previous selection, so importing or using this module never changes what other code sees.

What the node does with the histories made here (bcoin 1.0.2 as patched by bcoin_node.js):

* `reorg(node, depth, include_txs)` replaces the newest `depth` blocks by `depth + extra_blocks` blocks
  built here (`build_block`) on the fork parent: the first new block holds `include_txs`, so a listed
  deposit is mined again under another block hash and height. Transactions of the replaced blocks that
  the new branch does not contain go back to the mempool (same txid, unconfirmed).
* `double_spend_reorg(node, txid)` does the same with a conflicting spend of the deposit's first input
  in the new branch: the deposit is then gone for good (not in the chain, not in the mempool). For a
  deposit still in the mempool (depth 0) it mines the conflict in a new block on the tip.
* `taproot_block(node, p2tr_script, sats)`: bcoin's wallet cannot pay to a `bcrt1p…` address, but a
  block whose transaction has such an output is consensus-valid (an unknown witness version) and is
  accepted by `submitblock`.

Funding: `fund(node)` leaves the wallet with confirmed NON-coinbase outputs only and `mine()` pays its
rewards to a throwaway address outside the wallet, so payments never spend coinbase outputs (stock
bcoin evicts coinbase spends from the mempool after every reorg; the launcher fixes that too).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any, Literal

import bitcoin
import bitcoin.core
from bitcoin.core import CBlock as _CBlock
from bitcoin.core import CBlockHeader as _CBlockHeader
from bitcoin.core import (
    COutPoint,
    CTransaction,
    CTxIn,
    CTxInWitness,
    CTxOut,
    CTxWitness,
    Hash,
    Hash160,
    b2lx,
    b2x,
    lx,
    x,
)
from bitcoin.core.script import (
    OP_0,
    OP_1,
    OP_CHECKMULTISIG,
    OP_CHECKSIG,
    OP_DUP,
    OP_EQUALVERIFY,
    OP_HASH160,
    SIGHASH_ALL,
    SIGVERSION_BASE,
    SIGVERSION_WITNESS_V0,
    CScript,
    CScriptWitness,
    SignatureHash,
)
from bitcoin.wallet import CBitcoinAddress, CBitcoinSecret

from devnet.bcoin import BcoinNode

SATS_PER_BTC = 100_000_000
# Regtest: every hash below 0x7fffff * 2**(8*29) passes, about every second nonce.
REGTEST_BITS = 0x207FFFFF
REGTEST_TARGET = 0x7FFFFF << (8 * (0x20 - 3))
BLOCK_VERSION = 0x20000000
HALVING_INTERVAL = 150  # regtest, Core and bcoin alike
COINBASE_MATURITY = 100
# Fee of the transactions built here: far above bcoin's 1 sat/vB minimum for the sizes used.
DEFAULT_FEE = 10_000
WITNESS_COMMITMENT_HEADER = bytes.fromhex("aa21a9ed")

AddressKind = Literal["p2pkh", "p2sh-p2wpkh", "p2wpkh", "p2wsh", "p2tr"]
ADDRESS_KINDS: tuple[AddressKind, ...] = ("p2pkh", "p2sh-p2wpkh", "p2wpkh", "p2wsh", "p2tr")
# Core's "not found" is -5; bcoin answers -1 for a missing tx or block.
NOT_FOUND_CODES = frozenset({-1, -5})


class BtcRpcError(RuntimeError):
    """The node answered a JSON-RPC error; keeps its code and message."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"{method}: {message} (code {code})")
        self.method = method
        self.code = code
        self.message = message


class BlockRejected(RuntimeError):
    """submitblock refused a block; `reason` is the node's answer (e.g. "rejected: bad-txns-inputs-...")."""

    def __init__(self, block_hash: str, reason: str) -> None:
        super().__init__(f"block {block_hash} rejected: {reason}")
        self.block_hash = block_hash
        self.reason = reason


# -------------------------------------------------------------------------------------- amounts


@dataclass(frozen=True, slots=True)
class Btc:
    """An amount in satoshi, written into a JSON-RPC request as an exact BTC number literal."""

    sats: int

    def literal(self) -> str:
        return sats_to_btc(self.sats)


def sats_to_btc(sats: int) -> str:
    """Exact decimal BTC string of an integer satoshi amount: 12345 -> "0.00012345"."""
    if isinstance(sats, bool) or not isinstance(sats, int):
        raise TypeError(f"satoshi amounts are int, not {type(sats).__name__}")
    sign = "-" if sats < 0 else ""
    whole, frac = divmod(abs(sats), SATS_PER_BTC)
    return f"{sign}{whole}.{frac:08d}"


def btc_to_sats(value: Decimal | str | int) -> int:
    """Exact satoshi amount of a BTC value from a node answer (parsed as Decimal, never float)."""
    if isinstance(value, float):
        raise TypeError("BTC amounts must not be floats; parse JSON with parse_float=Decimal")
    sats = Decimal(value) * SATS_PER_BTC
    if sats != sats.to_integral_value():
        raise ValueError(f"{value} BTC is not a whole number of satoshi")
    return int(sats)


def _json(value: Any) -> str:
    """JSON text of `value`, with every `Btc` written as a bare number literal."""
    if isinstance(value, Btc):
        return value.literal()
    if isinstance(value, Mapping):
        items = (f"{json.dumps(str(k))}:{_json(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_json(v) for v in value) + "]"
    return json.dumps(value)


# ------------------------------------------------------------------------------------------ rpc


def rpc(url: str, user: str, password: str, method: str, *params: Any) -> Any:
    """One JSON-RPC call (HTTP Basic auth); the result, or BtcRpcError with the node's code.

    bcoin answers errors with HTTP 200 and Core with HTTP 500: both bodies are read the same way.
    """
    body = _json({"jsonrpc": "1.0", "id": method, "method": method, "params": list(params)}).encode()
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    headers = {"Content-Type": "application/json", "Authorization": f"Basic {token}"}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
    except urllib.error.HTTPError as err:
        raw = err.read()
        if not raw.strip():
            raise BtcRpcError(method, -err.code, f"HTTP {err.code} {err.reason}") from err
    answer = json.loads(raw, parse_float=Decimal)
    error = answer.get("error")
    if error is not None:
        raise BtcRpcError(method, int(error.get("code", 0)), str(error.get("message", error)))
    return answer.get("result")


def node_rpc(node: BcoinNode, method: str, *params: Any) -> Any:
    """A call to the node's RPC (chain, mempool, raw transactions, mining)."""
    return rpc(node.rpc_url, node.rpc_user, node.rpc_password, method, *params)


def wallet_rpc(node: BcoinNode, method: str, *params: Any) -> Any:
    """A call to the node's wallet RPC (bcoin's "primary" wallet)."""
    return rpc(node.wallet_url, node.rpc_user, node.rpc_password, method, *params)


# ------------------------------------------------------------------------------------ chain state


def height(node: BcoinNode) -> int:
    return int(node_rpc(node, "getblockcount"))


def best_hash(node: BcoinNode) -> str:
    return str(node_rpc(node, "getbestblockhash"))


def block_hash(node: BcoinNode, at_height: int) -> str:
    return str(node_rpc(node, "getblockhash", at_height))


def mempool(node: BcoinNode) -> list[str]:
    return [str(txid) for txid in node_rpc(node, "getrawmempool")]


def raw_block(node: BcoinNode, hash_hex: str) -> Any:
    """The block as python-bitcoinlib CBlock, from `getblock HASH 0` (raw bytes, as on Core)."""
    return _CBlock.deserialize(x(node_rpc(node, "getblock", hash_hex, 0)))


def raw_transaction(node: BcoinNode, txid: str) -> Any:
    """The transaction as CTransaction (mempool or, with bcoin's tx index, mined)."""
    return CTransaction.deserialize(x(node_rpc(node, "getrawtransaction", txid, 0)))


def transaction(node: BcoinNode, txid: str) -> dict[str, Any] | None:
    """Verbose getrawtransaction, or None when the node does not know the txid.

    For a mempool tx bcoin sends `"blockhash": null, "confirmations": 0` (Core leaves the keys out).
    """
    try:
        info: dict[str, Any] = node_rpc(node, "getrawtransaction", txid, 1)
    except BtcRpcError as err:
        if err.code in NOT_FOUND_CODES:
            return None
        raise
    return info


def in_main_chain(node: BcoinNode, txid: str) -> str | None:
    """The hash of the main-chain block holding `txid`, else None (mempool, unknown or reorged out)."""
    info = transaction(node, txid)
    if info is None or not info.get("blockhash"):
        return None
    block = str(info["blockhash"])
    header = node_rpc(node, "getblockheader", block)
    if block_hash(node, int(header["height"])) != block:
        return None
    return block


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s} s")
        time.sleep(0.02)


# ------------------------------------------------------------------------------ keys, addresses


@contextmanager
def regtest_params() -> Iterator[None]:
    """python-bitcoinlib's regtest parameters for the duration of the block, then the previous ones."""
    saved = (bitcoin.params, bitcoin.core.coreparams)
    bitcoin.SelectParams("regtest")
    try:
        yield
    finally:
        bitcoin.params, bitcoin.core.coreparams = saved


def new_key(secret: bytes | None = None) -> Any:
    """A compressed-key CBitcoinSecret (regtest WIF, prefix 0xef); random unless `secret` (32 bytes)."""
    with regtest_params():
        return CBitcoinSecret.from_secret_bytes(secret if secret is not None else os.urandom(32), True)


def p2pkh_script(pubkey: bytes) -> bytes:
    return bytes(CScript([OP_DUP, OP_HASH160, Hash160(pubkey), OP_EQUALVERIFY, OP_CHECKSIG]))


@dataclass(frozen=True, slots=True)
class WatchedAddress:
    """A deposit address of `kind` whose key the test holds, in Bitcoin Core's regtest format.

    `redeem_script`: for p2sh-p2wpkh the P2SH redeem script (the P2WPKH program), for p2wsh the witness
    script (a 1-of-1 multisig of `key`); None otherwise. For p2tr the witness program is the x-only
    public key itself (no BIP-341 tweak): a valid output, enough for watching.
    """

    kind: AddressKind
    address: str
    script_pubkey: bytes
    key: Any
    redeem_script: bytes | None = None


def make_address(kind: AddressKind, key: Any = None) -> WatchedAddress:
    """A watched address of `kind` for `key` (a new random key by default)."""
    if key is None:
        key = new_key()
    pub = bytes(key.pub)
    redeem: bytes | None = None
    if kind == "p2pkh":
        spk = p2pkh_script(pub)
    elif kind == "p2wpkh":
        spk = bytes(CScript([OP_0, Hash160(pub)]))
    elif kind == "p2sh-p2wpkh":
        redeem = bytes(CScript([OP_0, Hash160(pub)]))
        spk = bytes(CScript(redeem).to_p2sh_scriptPubKey())
    elif kind == "p2wsh":
        redeem = bytes(CScript([OP_1, pub, OP_1, OP_CHECKMULTISIG]))
        spk = bytes(CScript([OP_0, hashlib.sha256(redeem).digest()]))
    elif kind == "p2tr":
        spk = bytes(CScript([OP_1, pub[1:33]]))
    else:
        raise ValueError(f"unknown address kind {kind!r}")
    return WatchedAddress(kind, address_of(spk), spk, key, redeem)


def make_addresses(key: Any = None) -> dict[AddressKind, WatchedAddress]:
    """One watched address of every kind: each with a new key, or all for `key`.

    Addresses of one key share its HASH160 (p2pkh and p2wpkh), and bcoin's sendmany refuses two
    outputs with the same hash ("Invalid parameter."): pay_many them with separate keys.
    """
    return {kind: make_address(kind, key) for kind in ADDRESS_KINDS}


def address_of(script_pubkey: bytes) -> str:
    """Core regtest address of a scriptPubKey (m/n…, 2…, bcrt1q…, bcrt1p…)."""
    spk = bytes(script_pubkey)
    version = _witness_version(spk)
    if version is not None:
        return encode_segwit_address("bcrt", version, spk[2:])
    with regtest_params():
        return str(CBitcoinAddress.from_scriptPubKey(CScript(spk)))


def script_of(address: str) -> bytes:
    """scriptPubKey of a Core regtest address (segwit v0 and base58 only; for tests' cross-checks)."""
    with regtest_params():
        return bytes(CBitcoinAddress(address).to_scriptPubKey())


def _witness_version(spk: bytes) -> int | None:
    if len(spk) < 4 or len(spk) > 42 or spk[1] != len(spk) - 2:
        return None
    if spk[0] == 0:
        return 0
    if 0x51 <= spk[0] <= 0x60:
        return spk[0] - 0x50
    return None


# BIP-173 (bech32, witness v0) and BIP-350 (bech32m, v1+) encoder; tests build addresses with it.
_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_CONST = 1
_BECH32M_CONST = 0x2BC830A3


def _polymod(values: Iterable[int]) -> int:
    generator = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            chk ^= generator[i] if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _to_5bit(data: bytes) -> list[int]:
    acc = bits = 0
    out: list[int] = []
    for byte in data:
        acc = (acc << 8) | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            out.append((acc >> bits) & 31)
    if bits:
        out.append((acc << (5 - bits)) & 31)
    return out


def encode_segwit_address(hrp: str, version: int, program: bytes) -> str:
    """Segwit address: bech32 for version 0, bech32m for versions 1-16 (BIP-350)."""
    if not 0 <= version <= 16:
        raise ValueError(f"witness version {version} out of range")
    if not 2 <= len(program) <= 40 or (version == 0 and len(program) not in (20, 32)):
        raise ValueError(f"bad witness program length {len(program)} for version {version}")
    data = [version, *_to_5bit(program)]
    const = _BECH32_CONST if version == 0 else _BECH32M_CONST
    polymod = _polymod([*_hrp_expand(hrp), *data, 0, 0, 0, 0, 0, 0]) ^ const
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[d] for d in data + checksum)


@cache
def burn_script() -> bytes:
    """scriptPubKey of a fixed P2WPKH nobody spends: where `mine()` and built blocks pay by default."""
    return bytes(CScript([OP_0, Hash160(bytes(new_key(b"\x01" * 32).pub))]))


def burn_address() -> str:
    return address_of(burn_script())


# ------------------------------------------------------------------------------ mining, paying


def mine(node: BcoinNode, n: int = 1, address: str | None = None) -> list[str]:
    """Mine `n` blocks (to `address`, else to `burn_address()`); their hashes."""
    target = address if address is not None else burn_address()
    return [str(h) for h in node_rpc(node, "generatetoaddress", n, target)]


def fund(node: BcoinNode, *, coinbase_blocks: int = 5, outputs: int = 20) -> int:
    """Give the wallet confirmed non-coinbase outputs; the total funded, in satoshi.

    Mines `coinbase_blocks` rewards to the wallet and 100 more blocks elsewhere so all are mature,
    then sends almost all of it to `outputs` new wallet addresses in one transaction and mines it.
    Every later wallet payment then spends non-coinbase outputs. Adds coinbase_blocks + 101 blocks.
    """
    start = height(node)
    mine(node, coinbase_blocks, str(wallet_rpc(node, "getnewaddress")))
    mine(node, COINBASE_MATURITY)
    rewards = sum(_subsidy(h) for h in range(start + 1, start + coinbase_blocks + 1))
    # One BTC stays behind for the fee and the change.
    each = (rewards - SATS_PER_BTC) // outputs
    targets = {str(wallet_rpc(node, "getnewaddress")): each for _ in range(outputs)}
    pay_many(node, targets)
    mine(node, 1)
    return each * outputs


def pay(node: BcoinNode, address: str, sats: int) -> str:
    """The wallet pays `sats` to `address` (sendtoaddress); the txid. The tx is in the mempool."""
    return str(wallet_rpc(node, "sendtoaddress", address, Btc(sats)))


def pay_many(node: BcoinNode, payments: Mapping[str, int]) -> str:
    """One wallet transaction with one output per address (sendmany); the txid.

    bcoin refuses two addresses with the same HASH160 in one call (e.g. p2pkh and p2wpkh of one key).
    """
    return str(wallet_rpc(node, "sendmany", "", {addr: Btc(sats) for addr, sats in payments.items()}))


# ------------------------------------------------------------------- transactions signed here


@dataclass(frozen=True, slots=True)
class Utxo:
    """An unspent output the test can spend with its own key."""

    txid: str
    vout: int
    value: int
    script_pubkey: bytes

    @property
    def outpoint(self) -> Any:
        return COutPoint(lx(self.txid), self.vout)


def find_output(tx: Any, script_pubkey: bytes) -> int:
    """Index of the first output of `tx` paying `script_pubkey`."""
    for index, out in enumerate(tx.vout):
        if bytes(out.scriptPubKey) == bytes(script_pubkey):
            return index
    raise ValueError("no output pays that script")


def funded_key_utxo(
    node: BcoinNode, sats: int, *, kind: Literal["p2pkh", "p2wpkh"] = "p2pkh"
) -> tuple[Any, Utxo]:
    """A new key and a confirmed UTXO of `sats` paying it (the wallet pays, one block is mined)."""
    watched = make_address(kind)
    txid = pay(node, watched.address, sats)
    mine(node, 1)
    vout = find_output(raw_transaction(node, txid), watched.script_pubkey)
    return watched.key, Utxo(txid, vout, sats, watched.script_pubkey)


def build_payment(
    utxo: Utxo | Sequence[Utxo], key: Any, outputs: Sequence[tuple[bytes, int]], *, locktime: int = 0
) -> Any:
    """A signed CTransaction spending `utxo` (P2PKH, P2WPKH or P2SH-P2WPKH of `key`) to `outputs`.

    The inputs' value minus the outputs' is the fee; at least DEFAULT_FEE is a safe choice.
    """
    utxos = [utxo] if isinstance(utxo, Utxo) else list(utxo)
    if sum(u.value for u in utxos) < sum(sats for _, sats in outputs):
        raise ValueError("outputs exceed the inputs' value")
    pub = bytes(key.pub)
    vin = [CTxIn(u.outpoint, nSequence=0xFFFFFFFF) for u in utxos]
    vout = [CTxOut(sats, CScript(spk)) for spk, sats in outputs]
    unsigned = CTransaction(vin, vout, nLockTime=locktime, nVersion=1)
    script_sigs: list[Any] = []
    witnesses: list[Any] = []
    for index, u in enumerate(utxos):
        spk = bytes(u.script_pubkey)
        p2wpkh = bytes(CScript([OP_0, Hash160(pub)]))
        if spk == p2pkh_script(pub):
            digest = SignatureHash(CScript(spk), unsigned, index, SIGHASH_ALL, sigversion=SIGVERSION_BASE)
            script_sigs.append(CScript([key.sign(digest) + bytes([SIGHASH_ALL]), pub]))
            witnesses.append(CTxInWitness(CScriptWitness([])))
            continue
        if spk == p2wpkh:
            script_sig = CScript()
        elif spk == bytes(CScript(p2wpkh).to_p2sh_scriptPubKey()):
            script_sig = CScript([p2wpkh])
        else:
            raise ValueError(f"input {index}: cannot sign script {spk.hex()} with this key")
        digest = SignatureHash(
            CScript(p2pkh_script(pub)),
            unsigned,
            index,
            SIGHASH_ALL,
            amount=u.value,
            sigversion=SIGVERSION_WITNESS_V0,
        )
        script_sigs.append(script_sig)
        witnesses.append(CTxInWitness(CScriptWitness([key.sign(digest) + bytes([SIGHASH_ALL]), pub])))
    signed_vin = [
        CTxIn(txin.prevout, sig, txin.nSequence) for txin, sig in zip(vin, script_sigs, strict=True)
    ]
    has_witness = any(len(w.scriptWitness.stack) for w in witnesses)
    witness = CTxWitness(witnesses) if has_witness else CTxWitness()
    return CTransaction(signed_vin, vout, nLockTime=locktime, nVersion=1, witness=witness)


def send_raw(node: BcoinNode, tx: Any) -> str:
    """sendrawtransaction; the txid, or BtcRpcError (-25 missing/spent inputs, -26 rejected, -27 known)."""
    return str(node_rpc(node, "sendrawtransaction", b2x(tx.serialize())))


# ---------------------------------------------------------------------------------------- blocks


def _subsidy(at_height: int) -> int:
    halvings = at_height // HALVING_INTERVAL
    return 0 if halvings >= 64 else (50 * SATS_PER_BTC) >> halvings


def _resolve_tx(node: BcoinNode, tx: Any) -> Any:
    return raw_transaction(node, tx) if isinstance(tx, str) else CTransaction.from_tx(tx)


def build_block(
    node: BcoinNode,
    parent_hash: str,
    txs: Sequence[Any] = (),
    *,
    coinbase_to: bytes | None = None,
    block_time: int | None = None,
) -> Any:
    """A valid regtest CBlock on `parent_hash` holding `txs` (CTransaction or txid strings), not submitted.

    Coinbase: BIP-34 height and a random extra nonce (two blocks at one height never share a coinbase
    txid), the subsidy (fees are left unclaimed) paid to `coinbase_to` (default `burn_script()`), and
    the BIP-141 witness commitment when a transaction has witness data.
    """
    parent = node_rpc(node, "getblockheader", parent_hash)
    new_height = int(parent["height"]) + 1
    body = [_resolve_tx(node, tx) for tx in txs]
    has_witness = any(tx.has_witness() for tx in body)

    coinbase_in = CTxIn(COutPoint(), CScript([new_height, os.urandom(8)]), 0xFFFFFFFF)
    coinbase_out = [CTxOut(_subsidy(new_height), CScript(coinbase_to if coinbase_to else burn_script()))]
    coinbase_witness = CTxWitness()
    if has_witness:
        nonce = b"\x00" * 32
        wtxids = [b"\x00" * 32] + [tx.GetHash() for tx in body]
        witness_root = _CBlock.build_merkle_tree_from_txids(wtxids)[-1]
        commitment = Hash(witness_root + nonce)
        coinbase_out.append(CTxOut(0, CScript(b"\x6a\x24" + WITNESS_COMMITMENT_HEADER + commitment)))
        coinbase_witness = CTxWitness([CTxInWitness(CScriptWitness([nonce]))])
    coinbase = CTransaction([coinbase_in], coinbase_out, nLockTime=0, nVersion=1, witness=coinbase_witness)
    vtx = [coinbase, *body]

    merkle_root = _CBlock.build_merkle_tree_from_txs(vtx)[-1]
    if block_time is None:
        block_time = max(int(parent["time"]) + 1, int(time.time()))
    prev = lx(parent_hash)
    for nonce_value in range(1 << 32):
        header = _CBlockHeader(BLOCK_VERSION, prev, merkle_root, block_time, REGTEST_BITS, nonce_value)
        if int.from_bytes(header.GetHash(), "little") <= REGTEST_TARGET:
            break
    return _CBlock(BLOCK_VERSION, prev, merkle_root, block_time, REGTEST_BITS, nonce_value, vtx)


def submit_block(node: BcoinNode, block: Any) -> str:
    """submitblock; the block hash, or BlockRejected with the node's reason."""
    hash_hex = str(b2lx(block.GetHash()))
    result = node_rpc(node, "submitblock", b2x(block.serialize()))
    if result is not None:
        raise BlockRejected(hash_hex, str(result))
    return hash_hex


def reorg(
    node: BcoinNode,
    depth: int,
    include_txs: Sequence[Any] = (),
    extra_blocks: int = 1,
    *,
    coinbase_to: bytes | None = None,
) -> list[str]:
    """Replace the newest `depth` blocks by `depth + extra_blocks` new ones; the new blocks' hashes.

    The first new block (at the height of the first replaced one) holds `include_txs` (CTransaction
    or txids, fetched before the reorg). Depth 0 just adds `extra_blocks` built blocks on the tip.
    """
    if depth < 0 or extra_blocks < 1:
        raise ValueError("depth must be >= 0 and extra_blocks >= 1")
    tip = height(node)
    if depth > tip:
        raise ValueError(f"cannot replace {depth} blocks of a chain of height {tip}")
    txs = [_resolve_tx(node, tx) for tx in include_txs]
    parent = block_hash(node, tip - depth)
    new_hashes: list[str] = []
    for index in range(depth + extra_blocks):
        block = build_block(node, parent, txs if index == 0 else (), coinbase_to=coinbase_to)
        parent = submit_block(node, block)
        new_hashes.append(parent)
    if best_hash(node) != parent:
        raise RuntimeError(f"the new branch did not become the main chain (tip {best_hash(node)})")
    return new_hashes


def conflicting_spend(node: BcoinNode, txid: str, *, key: Any = None, pay_to: bytes | None = None) -> Any:
    """A signed tx spending the first input of `txid` elsewhere (to `pay_to`, default `burn_script()`).

    The input must be P2PKH/P2WPKH/P2SH-P2WPKH of `key`, or of a wallet key (fetched with dumpprivkey).
    """
    spent = raw_transaction(node, txid).vin[0].prevout
    parent = transaction(node, b2lx(spent.hash))
    if parent is None:
        raise ValueError(f"the input of {txid} spends an unknown transaction")
    output = parent["vout"][spent.n]
    if key is None:
        with regtest_params():
            key = CBitcoinSecret(str(wallet_rpc(node, "dumpprivkey", output["scriptPubKey"]["addresses"][0])))
    value = btc_to_sats(output["value"])
    utxo = Utxo(b2lx(spent.hash), spent.n, value, x(output["scriptPubKey"]["hex"]))
    return build_payment(utxo, key, [(pay_to if pay_to else burn_script(), value - DEFAULT_FEE)])


def double_spend_reorg(
    node: BcoinNode, txid: str, *, key: Any = None, pay_to: bytes | None = None, extra_blocks: int = 1
) -> tuple[str, list[str]]:
    """Replace the deposit `txid` by a conflicting spend of its first input; (conflict txid, new blocks).

    A mined deposit: its block and all later ones are replaced by a longer branch whose first block
    holds the conflict; the deposit returns to no mempool (its input is spent). A deposit still in the
    mempool: the conflict is mined in new blocks on the tip and evicts it.
    """
    conflict = conflicting_spend(node, txid, key=key, pay_to=pay_to)
    info = transaction(node, txid)
    depth = 0
    if info is not None and info.get("blockhash"):
        mined_at = int(node_rpc(node, "getblockheader", info["blockhash"])["height"])
        depth = height(node) - mined_at + 1
    new_hashes = reorg(node, depth, [conflict], extra_blocks)
    return str(b2lx(conflict.GetTxid())), new_hashes


def taproot_block(node: BcoinNode, p2tr_script: bytes, sats: int) -> tuple[str, str]:
    """Mine a block whose transaction pays `sats` to a P2TR output; (block hash, txid).

    bcoin 1.0.2 predates taproot: its wallet cannot pay bcrt1p…, but a witness v1 output is an unknown
    witness version to it, valid by consensus, so a block built here is accepted like Core would.
    """
    key, utxo = funded_key_utxo(node, sats + DEFAULT_FEE)
    tx = build_payment(utxo, key, [(bytes(p2tr_script), sats)])
    hash_hex = submit_block(node, build_block(node, best_hash(node), [tx]))
    return hash_hex, str(b2lx(tx.GetTxid()))


# ------------------------------------------------------------------------------------------ p2p


def connect_nodes(node: BcoinNode, peer: BcoinNode, timeout_s: float = 10.0) -> None:
    """Connect `node` to `peer` (started with listen=True) over loopback P2P and wait for the link."""
    node_rpc(node, "addnode", f"127.0.0.1:{peer.p2p_port}", "onetry")

    def linked() -> bool:
        return all(int(node_rpc(n, "getconnectioncount")) > 0 for n in (node, peer))

    wait_until(linked, timeout_s, "P2P connection")


def wait_same_tip(nodes: Sequence[BcoinNode], timeout_s: float = 10.0) -> str:
    """Wait until all `nodes` have the same best block; its hash."""
    wait_until(lambda: len({best_hash(n) for n in nodes}) == 1, timeout_s, "same tip on all nodes")
    return best_hash(nodes[0])
