"""The raw block and transaction walk against python-bitcoinlib: blocks built with python-bitcoinlib
(legacy and segwit transactions, every output type, long compact sizes) must give the same payments,
vouts, values, txids (GetTxid, not the wtxid) and spends; malformed bytes must raise ChainDataError, and
property-based fuzzing checks that whatever the walk accepts, python-bitcoinlib reads the same way."""

from __future__ import annotations

import math
import random
import struct

import pytest
from bitcoin.core import (
    CBlock,
    COutPoint,
    CScriptWitness,
    CTransaction,
    CTxIn,
    CTxInWitness,
    CTxOut,
    CTxWitness,
    b2lx,
)
from bitcoin.core.script import CScript
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import bitcoin_scan as bench
from chains.base import ChainDataError
from chains.bitcoin import rawblock
from chains.bitcoin.address import p2pkh_script, p2sh_script, witness_script

RNG = random.Random(7)


def rand(n: int) -> bytes:
    return RNG.randbytes(n)


SCRIPTS = {
    "p2pkh": p2pkh_script(rand(20)),
    "p2sh": p2sh_script(rand(20)),
    "p2wpkh": witness_script(0, rand(20)),
    "p2wsh": witness_script(0, rand(32)),
    "p2tr": witness_script(1, rand(32)),
    "op_return": b"\x6a\x0bhello world",
    "bare_multisig": b"\x51\x21\x02" + rand(32) + b"\x21\x03" + rand(32) + b"\x52\xae",
    "p2pk": b"\x21\x02" + rand(32) + b"\xac",
    "long": b"\x6a\x4d\x2c\x01" + rand(300),  # 304 bytes: its length needs a 0xfd compact size
}


def legacy_tx(outputs: list[tuple[int, bytes]], prevouts: list[COutPoint] | None = None) -> CTransaction:
    vin = [CTxIn(p, CScript(rand(107)), 0xFFFFFFFF) for p in prevouts or [COutPoint(rand(32), 1)]]
    return CTransaction(vin, [CTxOut(v, CScript(s)) for v, s in outputs], 0, 1)


def segwit_tx(outputs: list[tuple[int, bytes]], prevouts: list[COutPoint] | None = None) -> CTransaction:
    prevouts = prevouts or [COutPoint(rand(32), 0), COutPoint(rand(32), 3)]
    vin = [CTxIn(p, CScript(), 0xFFFFFFFD) for p in prevouts]
    witness = CTxWitness([CTxInWitness(CScriptWitness([rand(72), rand(33)])) for _ in prevouts])
    return CTransaction(vin, [CTxOut(v, CScript(s)) for v, s in outputs], 500_000, 2, witness)


def coinbase(outputs: list[tuple[int, bytes]]) -> CTransaction:
    vin = [CTxIn(COutPoint(), CScript(b"\x03\x01\x02\x03coinbase"), 0xFFFFFFFF)]
    return CTransaction(vin, [CTxOut(v, CScript(s)) for v, s in outputs], 0, 2)


def make_block(txs: list[CTransaction], parent: bytes | None = None) -> bytes:
    block = CBlock(nVersion=0x20000000, hashPrevBlock=parent or rand(32), nBits=0x207FFFFF, nTime=1, vtx=txs)
    return block.serialize()


def mixed_block() -> tuple[bytes, list[CTransaction]]:
    s = SCRIPTS
    txs = [
        coinbase([(625_000_000, s["p2wpkh"]), (0, s["op_return"])]),
        legacy_tx([(1, s["p2pkh"]), (2, s["bare_multisig"]), (3, s["p2pk"])]),
        segwit_tx([(10_000, s["p2tr"]), (20_000, s["p2wsh"]), (30_000, s["p2sh"]), (0, s["op_return"])]),
        segwit_tx([(21_000_000 * 100_000_000, s["p2wpkh"]), (5, s["long"])]),
        legacy_tx([(7, s["p2tr"])], [COutPoint(rand(32), 0), COutPoint(rand(32), 70_000)]),
        # 300 outputs: the output count needs a 0xfd compact size.
        segwit_tx([(i + 1, rand(22)) for i in range(299)] + [(77, s["p2wpkh"])]),
    ]
    return make_block(txs), txs


# ------------------------------------------------------------------------------------ reference


def key_of(prevout: COutPoint) -> bytes:
    return prevout.hash + struct.pack("<I", prevout.n)


def text_of(prevout: COutPoint) -> str:
    return f"{b2lx(prevout.hash)}:{prevout.n}"


def reference_payments(txs: list[CTransaction], scripts: dict[bytes, int]) -> list[rawblock.Payment]:
    """What the walk must find, computed from python-bitcoinlib's objects."""
    found = []
    for tx in txs:
        inputs = tuple(text_of(i.prevout) for i in tx.vin if not i.prevout.is_null())
        for vout, out in enumerate(tx.vout):
            script = bytes(out.scriptPubKey)
            if script in scripts:
                txid = b2lx(tx.GetTxid())
                found.append(rawblock.Payment(txid, vout, out.nValue, script, scripts[script], inputs))
    return found


def reference_spends(txs: list[CTransaction], watched: set[bytes]) -> list[rawblock.OutpointSpend]:
    return [
        rawblock.OutpointSpend(text_of(i.prevout), b2lx(tx.GetTxid()))
        for tx in txs
        for i in tx.vin
        if key_of(i.prevout) in watched
    ]


def reference_block(raw: bytes, scripts: dict[bytes, int], watched: set[bytes]) -> rawblock.BlockMatches:
    block = CBlock.deserialize(raw)
    header = rawblock.BlockHeader(b2lx(block.GetHash()), b2lx(block.hashPrevBlock))
    txs = list(block.vtx)
    payments = tuple(reference_payments(txs, scripts))
    return rawblock.BlockMatches(header, len(txs), payments, tuple(reference_spends(txs, watched)))


# ------------------------------------------------------------------------------------ blocks


def test_finds_every_output_type_with_vouts_values_and_txids() -> None:
    raw, _ = mixed_block()
    scripts = {script: i for i, script in enumerate(SCRIPTS.values(), start=1)}
    matches = rawblock.walk_block(raw, scripts)
    assert matches == reference_block(raw, scripts, set())
    kinds = {name for name, script in SCRIPTS.items() for p in matches.payments if p.script == script}
    assert kinds == set(SCRIPTS)  # every type was found, P2TR, OP_RETURN and bare multisig included
    assert len(matches.payments) == 13
    assert matches.tx_count == 6


def test_block_header() -> None:
    parent = rand(32)
    raw = make_block([coinbase([(1, SCRIPTS["p2wpkh"])])], parent)
    header = rawblock.walk_block(raw, {}).header
    assert header.parent_hash == parent[::-1].hex()
    assert header.block_hash == b2lx(CBlock.deserialize(raw).GetHash())
    assert rawblock.parse_header(raw) == header


def test_segwit_txid_is_not_the_wtxid() -> None:
    raw, txs = mixed_block()
    (payment,) = rawblock.walk_block(raw, {SCRIPTS["p2tr"]: 1, SCRIPTS["p2pkh"]: 2}).payments[1:2]
    segwit = txs[2]
    assert segwit.has_witness()
    assert payment.txid == b2lx(segwit.GetTxid()) != b2lx(segwit.GetHash())


def test_only_watched_scripts_are_reported_and_watch_ids_kept() -> None:
    raw, txs = mixed_block()
    scripts = {SCRIPTS["p2wpkh"]: 41, SCRIPTS["p2sh"]: 42}
    matches = rawblock.walk_block(raw, scripts)
    assert [(p.vout, p.value, p.watch_id) for p in matches.payments] == [
        (0, 625_000_000, 41),  # the coinbase pays a watched address too
        (2, 30_000, 42),
        (0, 21_000_000 * 100_000_000, 41),
        (299, 77, 41),
    ]
    assert matches.payments[0].inputs == ()  # a coinbase spends nothing
    assert matches.payments[1].inputs == tuple(text_of(i.prevout) for i in txs[2].vin)


def test_nothing_watched_finds_nothing() -> None:
    raw, _ = mixed_block()
    matches = rawblock.walk_block(raw, {})
    assert (matches.payments, matches.spends, matches.tx_count) == ((), (), 6)


def test_spends_of_watched_outpoints() -> None:
    watched_a, watched_b = COutPoint(rand(32), 0), COutPoint(rand(32), 70_000)
    other = COutPoint(rand(32), 0)
    txs = [
        coinbase([(1, SCRIPTS["p2wpkh"])]),
        segwit_tx([(5, SCRIPTS["p2tr"])], [other, watched_a]),
        legacy_tx([(6, rand(25))], [watched_b]),
    ]
    raw = make_block(txs)
    watched = {key_of(watched_a), key_of(watched_b)}
    matches = rawblock.walk_block(raw, {SCRIPTS["p2tr"]: 1}, watched)
    assert matches == reference_block(raw, {SCRIPTS["p2tr"]: 1}, watched)
    assert [(s.outpoint, s.txid) for s in matches.spends] == [
        (text_of(watched_a), b2lx(txs[1].GetTxid())),
        (text_of(watched_b), b2lx(txs[2].GetTxid())),
    ]
    assert matches.payments[0].inputs == (text_of(other), text_of(watched_a))


def test_outpoint_keys() -> None:
    prevout = COutPoint(rand(32), 70_000)
    assert rawblock.outpoint_key(text_of(prevout)) == key_of(prevout)
    assert rawblock.outpoint_text(key_of(prevout)) == text_of(prevout)
    malformed = [
        "",
        "00" * 32,
        "ab:1",
        "00" * 32 + ":-1",
        "00" * 32 + ":4294967296",
        "zz" * 32 + ":0",
        "00 " * 21 + "0:0",  # bytes.fromhex would skip the blanks and make a short key
        "00" * 32 + ":\u00b2",  # str.isdigit() says yes to '²'
        "00" * 32 + ": 1",
    ]
    for bad in malformed:
        with pytest.raises(ValueError):
            rawblock.outpoint_key(bad)


# ------------------------------------------------------------------------------------ transactions


@pytest.mark.parametrize("make", [legacy_tx, segwit_tx])
def test_walk_transaction(make: object) -> None:
    assert callable(make)
    prevouts = [COutPoint(rand(32), 1), COutPoint(rand(32), 2)]
    tx: CTransaction = make([(5, SCRIPTS["p2wsh"]), (6, rand(25)), (7, SCRIPTS["p2wsh"])], prevouts)
    found = rawblock.walk_transaction(tx.serialize(), {SCRIPTS["p2wsh"]: 9})
    assert found.txid == b2lx(tx.GetTxid())
    assert found.prevouts == tuple(key_of(p) for p in prevouts)
    assert list(found.payments) == reference_payments([tx], {SCRIPTS["p2wsh"]: 9})
    assert [p.vout for p in found.payments] == [0, 2]


def test_walk_transaction_rejects_trailing_bytes_and_truncation() -> None:
    raw = segwit_tx([(5, SCRIPTS["p2tr"])]).serialize()
    with pytest.raises(ChainDataError, match="1 bytes after its end"):
        rawblock.walk_transaction(raw + b"\x00", {})
    for cut in range(len(raw)):
        with pytest.raises(ChainDataError):
            rawblock.walk_transaction(raw[:cut], {SCRIPTS["p2tr"]: 1})


# ------------------------------------------------------------------------------------ malformed


def small_block() -> bytes:
    return make_block(
        [
            coinbase([(50, SCRIPTS["p2wpkh"])]),
            segwit_tx([(5, SCRIPTS["p2tr"]), (6, SCRIPTS["p2pkh"])]),
            legacy_tx([(7, SCRIPTS["p2sh"])]),
        ]
    )


def test_every_truncation_raises() -> None:
    raw = small_block()
    scripts = {s: 1 for s in SCRIPTS.values()}
    for cut in range(len(raw)):
        with pytest.raises(ChainDataError):
            rawblock.walk_block(raw[:cut], scripts)


def test_trailing_bytes_raise() -> None:
    with pytest.raises(ChainDataError, match="2 bytes after its end"):
        rawblock.walk_block(small_block() + b"\x00\x00", {})


def test_no_transactions() -> None:
    with pytest.raises(ChainDataError, match="has no transactions"):
        rawblock.walk_block(small_block()[:80] + b"\x00", {})


def test_non_canonical_compact_size() -> None:
    raw = small_block()
    # The transaction count 3 written as 0xfd 0x03 0x00.
    with pytest.raises(ChainDataError, match="non-canonical compact size"):
        rawblock.walk_block(raw[:80] + b"\xfd\x03\x00" + raw[81:], {})


def test_huge_compact_size() -> None:
    raw = small_block()
    with pytest.raises(ChainDataError, match="is over"):
        rawblock.walk_block(raw[:80] + b"\xff" + (2**40).to_bytes(8, "little") + raw[81:], {})


def test_unknown_segwit_flag() -> None:
    raw = segwit_tx([(5, SCRIPTS["p2tr"])]).serialize()
    assert raw[4:6] == b"\x00\x01"
    with pytest.raises(ChainDataError, match="unknown segwit flag 2"):
        rawblock.walk_transaction(raw[:5] + b"\x02" + raw[6:], {})


def test_amount_over_21_million_btc() -> None:
    raw = make_block([coinbase([(21_000_000 * 100_000_000 + 1, SCRIPTS["p2wpkh"])])])
    with pytest.raises(ChainDataError, match="more than 21 million BTC"):
        rawblock.walk_block(raw, {SCRIPTS["p2wpkh"]: 1})
    assert rawblock.walk_block(raw, {}).payments == ()  # an unwatched output's value is never read


def test_short_header() -> None:
    with pytest.raises(ChainDataError, match="shorter than a header"):
        rawblock.walk_block(b"\x00" * 79, {})


# ------------------------------------------------------------------------------------ fuzzing

FUZZ_SCRIPTS = {s: i for i, s in enumerate(SCRIPTS.values(), start=1)} | {b"": 99, b"\x00": 98}
FUZZ_BASE = small_block()


def agrees_with_python_bitcoinlib(raw: bytes) -> None:
    """The walk either raises ChainDataError, or python-bitcoinlib reads the same bytes the same way."""
    watched = {raw[i : i + 36] for i in range(81, min(len(raw), 400), 37)}
    try:
        matches = rawblock.walk_block(raw, FUZZ_SCRIPTS, watched)
    except ChainDataError:
        return
    assert matches == reference_block(raw, FUZZ_SCRIPTS, watched)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_garbage_never_yields(raw: bytes) -> None:
    agrees_with_python_bitcoinlib(raw)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["set", "insert", "delete"]),
            st.integers(0, len(FUZZ_BASE) - 1),
            st.binary(min_size=1, max_size=4),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_fuzz_mutated_blocks(edits: list[tuple[str, int, bytes]]) -> None:
    raw = bytearray(FUZZ_BASE)
    for op, at, data in edits:
        at = min(at, len(raw))
        if op == "set":
            raw[at : at + len(data)] = data
        elif op == "insert":
            raw[at:at] = data
        else:
            del raw[at : at + len(data)]
    agrees_with_python_bitcoinlib(bytes(raw))


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_fuzz_transactions(raw: bytes) -> None:
    try:
        found = rawblock.walk_transaction(raw, FUZZ_SCRIPTS)
    except ChainDataError:
        return
    tx = CTransaction.deserialize(raw)
    assert found.txid == b2lx(tx.GetTxid())
    assert list(found.payments) == reference_payments([tx], FUZZ_SCRIPTS)


# ------------------------------------------------------------------------------------ benchmark


def test_bench_smoke() -> None:
    """bench/bitcoin_scan.py at toy sizes, end to end (block server process, real adapter). No timing
    is asserted: CI machines are too noisy; the full-size run is for people."""
    result = bench.run_bitcoin_bench(n_txs=60, n_watched=1000, n_blocks=12, runs=1, n_paid=5)
    assert (result.tx_count, result.watched, result.paid_found) == (60, 1000, 5)
    assert result.catch_up_transfers == 11 * 5  # blocks 1..11 share the body paying 5 watched scripts
    for value in (result.deserialize_s, result.scan_s, result.catch_up_blocks_per_s, result.ratio):
        assert math.isfinite(value) and value > 0
