"""The bcoin regtest harness against real nodes: each launcher fix (bcoin_node.js) and each btc_tools helper.

Quirk numbers are those of the launcher's header (devnet/bcoin_node.js).
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest
from bitcoin.base58 import CBase58Data
from bitcoin.core import CBlock, CTransaction, CTxIn, b2lx, x
from bitcoin.core.script import CScript

from devnet import bcoin as bcoin_module
from devnet import btc_tools as bt
from devnet.bcoin import BcoinError, BcoinNode

SEED_PORT = 48444  # stock bcoin's regtest port, dialed on 127.0.0.1 by an unpatched node

# ------------------------------------------------------------------------------- pure helpers

# BIP-350's valid address vectors (bech32 for v0, bech32m for v1+).
BIP350_VECTORS = [
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    (
        "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
        "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262",
    ),
    (
        "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",
        "5128751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45d1b3a323f1433bd6",
    ),
    ("bc1sw50qgdz25j", "6002751e"),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs", "5210751e76e8199196d454941c45d1b3a323"),
    (
        "tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c",
        "5120000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433",
    ),
    (
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
        "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798",
    ),
]


@pytest.mark.parametrize(("address", "script_hex"), BIP350_VECTORS)
def test_segwit_encoder_matches_bip350(address: str, script_hex: str) -> None:
    script = bytes.fromhex(script_hex)
    version = 0 if script[0] == 0 else script[0] - 0x50
    assert bt.encode_segwit_address(address[:2], version, script[2:]) == address


@pytest.mark.parametrize(
    ("sats", "btc"),
    [
        (0, "0.00000000"),
        (1, "0.00000001"),
        (12_345, "0.00012345"),
        (100_000_000, "1.00000000"),
        (2_099_999_997_690_000, "20999999.97690000"),
        (-5, "-0.00000005"),
    ],
)
def test_amounts_are_exact(sats: int, btc: str) -> None:
    assert bt.sats_to_btc(sats) == btc
    assert bt.btc_to_sats(Decimal(btc)) == sats
    assert bt._json([bt.Btc(sats)]) == f"[{btc}]"


def test_amounts_refuse_floats_and_fractions_of_a_satoshi() -> None:
    with pytest.raises(TypeError):
        bt.btc_to_sats(0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="satoshi"):
        bt.btc_to_sats(Decimal("0.000000001"))


def test_missing_bcoin_names_npm_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        bcoin_module, "BCOIN_PACKAGE", bcoin_module.REPO_ROOT / "no-such-dir" / "package.json"
    )
    with pytest.raises(BcoinError, match="npm ci"):
        BcoinNode().start()


# ------------------------------------------------------------------ quirks 1, 2: address formats


def test_core_regtest_address_formats(bcoin: BcoinNode) -> None:
    watched = bt.make_addresses()
    assert watched["p2pkh"].address[0] in "mn"
    assert watched["p2sh-p2wpkh"].address.startswith("2")
    assert watched["p2wpkh"].address.startswith("bcrt1q") and len(watched["p2wpkh"].address) == 44
    assert watched["p2wsh"].address.startswith("bcrt1q") and len(watched["p2wsh"].address) == 64
    assert watched["p2tr"].address.startswith("bcrt1p")
    for kind in ("p2pkh", "p2sh-p2wpkh", "p2wpkh", "p2wsh"):
        address = watched[kind].address
        assert bt.node_rpc(bcoin, "validateaddress", address)["isvalid"] is True, kind
        assert bt.script_of(address) == watched[kind].script_pubkey
    # Stock regtest's own formats (P2PKH 0x3c "R…", HRP "rb") are now refused.
    stock_p2pkh = str(CBase58Data.from_bytes(bytes(20), 0x3C))
    assert bt.node_rpc(bcoin, "validateaddress", stock_p2pkh)["isvalid"] is False
    assert (
        bt.node_rpc(bcoin, "validateaddress", bt.encode_segwit_address("rb", 0, bytes(20)))["isvalid"]
        is False
    )

    # The wallet prints Core's regtest formats too, and its WIF has Core's regtest prefix (0xef: "c…").
    new_address = str(bt.wallet_rpc(bcoin, "getnewaddress"))
    assert new_address[0] in "mn"
    assert str(bt.wallet_rpc(bcoin, "dumpprivkey", new_address))[0] == "c"


# ------------------------------------------------------------------------- quirk 3: no dialing


@pytest.fixture
def seed_listener() -> Iterator[socket.socket | None]:
    """A listener on stock bcoin's seed address 127.0.0.1:48444, or None if something else holds it."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", SEED_PORT))
    except OSError as err:
        listener.close()
        if err.errno != errno.EADDRINUSE:
            raise
        yield None
        return
    listener.listen()
    listener.setblocking(False)
    try:
        yield listener
    finally:
        listener.close()


def test_nodes_never_dial_out(bcoin: BcoinNode, seed_listener: socket.socket | None) -> None:
    # An unpatched node dials 127.0.0.1:48444 about 0.5 s after starting (measured); wait 3 times that.
    with BcoinNode() as second:
        time.sleep(1.5)
        for node in (bcoin, second):
            assert bt.node_rpc(node, "getconnectioncount") == 0
            assert bt.node_rpc(node, "getpeerinfo") == []
        if seed_listener is not None:
            with pytest.raises(BlockingIOError):
                seed_listener.accept()


def test_explicit_p2p_link_still_works() -> None:
    with BcoinNode(listen=True) as first, BcoinNode(listen=True) as second:
        bt.connect_nodes(first, second)
        bt.mine(first, 3)
        assert bt.wait_same_tip([first, second]) == bt.best_hash(first)
        assert bt.height(second) == 3


def test_invalidateblock_works_with_the_pool_open(fresh_bcoin: BcoinNode) -> None:
    tip, tip_height = bt.best_hash(fresh_bcoin), bt.height(fresh_bcoin)
    bt.node_rpc(fresh_bcoin, "invalidateblock", tip)
    assert bt.height(fresh_bcoin) == tip_height - 1
    assert bt.best_hash(fresh_bcoin) != tip


# --------------------------------------------------------------- quirk 4, 7: mempool after reorgs


def test_tx_of_disconnected_block_returns_to_an_empty_mempool(fresh_bcoin: BcoinNode) -> None:
    txid = bt.pay(fresh_bcoin, bt.make_address("p2wpkh").address, 70_000)
    [mined_in] = bt.mine(fresh_bcoin)
    assert bt.mempool(fresh_bcoin) == []

    new_blocks = bt.reorg(fresh_bcoin, depth=1)

    assert bt.block_hash(fresh_bcoin, bt.height(fresh_bcoin) - 1) == new_blocks[0] != mined_in
    assert bt.mempool(fresh_bcoin) == [txid]
    assert bt.in_main_chain(fresh_bcoin, txid) is None
    # Back in the mempool, the verbose tx says so with null/0 fields (Core would omit them).
    info = bt.transaction(fresh_bcoin, txid)
    assert info is not None
    assert (info["blockhash"], info["confirmations"]) == (None, 0)
    # The stale block is still known and, unlike the chain, claims confirmations.
    assert bt.node_rpc(fresh_bcoin, "getblockheader", mined_in)["confirmations"] > 0


def test_mature_coinbase_spend_survives_a_reorg(fresh_bcoin: BcoinNode) -> None:
    key = bt.new_key()
    script = bt.p2pkh_script(bytes(key.pub))
    block = bt.build_block(fresh_bcoin, bt.best_hash(fresh_bcoin), coinbase_to=script)
    bt.submit_block(fresh_bcoin, block)
    bt.mine(fresh_bcoin, bt.COINBASE_MATURITY)
    coinbase = block.vtx[0]
    utxo = bt.Utxo(b2lx(coinbase.GetTxid()), 0, coinbase.vout[0].nValue, script)
    spend = bt.build_payment(utxo, key, [(bt.burn_script(), utxo.value - bt.DEFAULT_FEE)])
    txid = bt.send_raw(fresh_bcoin, spend)

    bt.reorg(fresh_bcoin, depth=1)

    assert txid in bt.mempool(fresh_bcoin)


# ----------------------------------------------------------------- quirk 5: sendrawtransaction


def test_sendrawtransaction_answers_core_error_codes(bcoin: BcoinNode) -> None:
    key, utxo = bt.funded_key_utxo(bcoin, 100_000)
    first = bt.build_payment(utxo, key, [(bt.burn_script(), 80_000)])
    txid = bt.send_raw(bcoin, first)
    assert txid == b2lx(first.GetTxid())
    assert bt.send_raw(bcoin, first) == txid  # already in the mempool: the txid again, as on Core

    conflict = bt.build_payment(utxo, key, [(bt.burn_script(), 70_000)])
    with pytest.raises(bt.BtcRpcError) as in_mempool:
        bt.send_raw(bcoin, conflict)
    assert (in_mempool.value.code, in_mempool.value.message) == (-26, "txn-mempool-conflict")

    bt.mine(bcoin)
    with pytest.raises(bt.BtcRpcError) as spent:
        bt.send_raw(bcoin, conflict)
    assert (spent.value.code, spent.value.message) == (-25, "bad-txns-inputs-missingorspent")

    missing = bt.Utxo("ab" * 32, 0, 100_000, utxo.script_pubkey)
    with pytest.raises(bt.BtcRpcError) as unknown:
        bt.send_raw(bcoin, bt.build_payment(missing, key, [(bt.burn_script(), 80_000)]))
    assert unknown.value.code == -25
    assert b2lx(bt.build_payment(missing, key, [(bt.burn_script(), 80_000)]).GetTxid()) not in bt.mempool(
        bcoin
    )

    with pytest.raises(bt.BtcRpcError) as known:
        bt.send_raw(bcoin, first)
    assert known.value.code == -27

    # A signature made for other outputs: consensus-invalid, rejected with -26 like Core.
    key2, utxo2 = bt.funded_key_utxo(bcoin, 100_000)
    signed = bt.build_payment(utxo2, key2, [(bt.burn_script(), 80_000)])
    other = bt.build_payment(utxo2, key2, [(bt.burn_script(), 70_000)])
    spliced = CTransaction([CTxIn(signed.vin[0].prevout, other.vin[0].scriptSig)], signed.vout)
    with pytest.raises(bt.BtcRpcError) as bad_signature:
        bt.send_raw(bcoin, spliced)
    assert bad_signature.value.code == -26


# ------------------------------------------------------------------------ raw blocks, segwit


def test_raw_block_decodes_and_reserialises_identically(bcoin: BcoinNode) -> None:
    # Segwit is active from genesis (fix 8): a P2WPKH input is spendable at this low height.
    key, utxo = bt.funded_key_utxo(bcoin, 200_000, kind="p2wpkh")
    witness_tx = bt.build_payment(utxo, key, [(bt.make_address("p2wsh").script_pubkey, 150_000)])
    assert witness_tx.has_witness()
    txid = bt.send_raw(bcoin, witness_tx)
    legacy_txid = bt.pay(bcoin, bt.make_address("p2sh-p2wpkh").address, 12_345)
    [block_hash] = bt.mine(bcoin)

    raw_hex = bt.node_rpc(bcoin, "getblock", block_hash, 0)
    block = CBlock.deserialize(x(raw_hex))
    assert block.serialize().hex() == raw_hex
    assert b2lx(block.GetHash()) == block_hash
    assert {b2lx(tx.GetTxid()) for tx in block.vtx[1:]} == {txid, legacy_txid}
    assert list(block.vtx[0].wit.vtxinwit[0].scriptWitness.stack) == [b"\x00" * 32]  # witness nonce


# ------------------------------------------------------------------------------------ reorgs


def test_reorg_moves_a_tx_to_another_block(fresh_bcoin: BcoinNode) -> None:
    txid = bt.pay(fresh_bcoin, bt.make_address("p2pkh").address, 55_555)
    [old_block] = bt.mine(fresh_bcoin)
    bt.mine(fresh_bcoin)
    old_height = bt.height(fresh_bcoin) - 1

    new_blocks = bt.reorg(fresh_bcoin, depth=2, include_txs=[txid])

    assert len(new_blocks) == 3
    assert bt.block_hash(fresh_bcoin, old_height) == new_blocks[0] != old_block
    assert old_block not in {bt.block_hash(fresh_bcoin, h) for h in range(bt.height(fresh_bcoin) + 1)}
    assert bt.in_main_chain(fresh_bcoin, txid) == new_blocks[0]
    assert bt.mempool(fresh_bcoin) == []


def test_double_spend_reorg_removes_the_deposit_for_good(fresh_bcoin: BcoinNode) -> None:
    key, utxo = bt.funded_key_utxo(fresh_bcoin, 40_000)
    deposit = bt.pay(fresh_bcoin, bt.make_address("p2wpkh").address, 90_000)
    bystander = bt.send_raw(fresh_bcoin, bt.build_payment(utxo, key, [(bt.burn_script(), 30_000)]))
    bt.mine(fresh_bcoin, 2)

    conflict, new_blocks = bt.double_spend_reorg(fresh_bcoin, deposit)

    assert len(new_blocks) == 3
    assert bt.in_main_chain(fresh_bcoin, conflict) == new_blocks[0]
    assert bt.in_main_chain(fresh_bcoin, deposit) is None
    assert deposit not in bt.mempool(fresh_bcoin)
    # Another tx of the replaced block, independent of the deposit, is back in the mempool.
    assert bt.mempool(fresh_bcoin) == [bystander]


def test_double_spend_of_a_mempool_deposit(fresh_bcoin: BcoinNode) -> None:
    key, utxo = bt.funded_key_utxo(fresh_bcoin, 60_000)
    deposit = bt.send_raw(
        fresh_bcoin, bt.build_payment(utxo, key, [(bt.make_address("p2tr").script_pubkey, 50_000)])
    )

    conflict, [block_hash] = bt.double_spend_reorg(fresh_bcoin, deposit, key=key)

    assert bt.in_main_chain(fresh_bcoin, conflict) == block_hash == bt.best_hash(fresh_bcoin)
    assert deposit not in bt.mempool(fresh_bcoin)
    assert bt.in_main_chain(fresh_bcoin, deposit) is None


# ---------------------------------------------------------------------------- taproot, sendmany


def test_taproot_output_in_a_built_block_is_accepted(bcoin: BcoinNode) -> None:
    watched = bt.make_address("p2tr")
    block_hash, txid = bt.taproot_block(bcoin, watched.script_pubkey, 33_333)

    assert bt.best_hash(bcoin) == block_hash
    assert bt.in_main_chain(bcoin, txid) == block_hash
    block = bt.raw_block(bcoin, block_hash)
    [tx] = [tx for tx in block.vtx if b2lx(tx.GetTxid()) == txid]
    assert [(bytes(out.scriptPubKey), out.nValue) for out in tx.vout] == [(watched.script_pubkey, 33_333)]
    assert bt.address_of(bytes(tx.vout[0].scriptPubKey)) == watched.address
    # bcoin has no bech32m: its verbose answer spells the v1 address with a bech32 checksum.
    output = bt.transaction(bcoin, txid)["vout"][0]  # type: ignore[index]
    assert output["scriptPubKey"]["hex"] == watched.script_pubkey.hex()
    assert output["scriptPubKey"]["addresses"] != [watched.address]


def test_pay_many_makes_one_tx_with_several_outputs(bcoin: BcoinNode) -> None:
    watched = bt.make_addresses()
    payments = {w.address: 10_000 + i for i, w in enumerate(watched.values()) if w.kind != "p2tr"}

    txid = bt.pay_many(bcoin, payments)

    assert txid in bt.mempool(bcoin)
    tx = bt.raw_transaction(bcoin, txid)
    paid = {bt.address_of(bytes(out.scriptPubKey)): out.nValue for out in tx.vout}
    assert {a: paid[a] for a in payments} == payments
    assert len(tx.vout) == len(payments) + 1  # and the wallet's change
    verbose = bt.transaction(bcoin, txid)
    assert verbose is not None
    values = {out["scriptPubKey"]["hex"]: out["value"] for out in verbose["vout"]}
    for w in watched.values():
        if w.address in payments:
            assert bt.btc_to_sats(values[w.script_pubkey.hex()]) == payments[w.address]
    assert isinstance(CScript(watched["p2wsh"].redeem_script), CScript)
