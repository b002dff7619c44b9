"""The watch set (chains.watchset): CompactKeys agrees with a dict, the store builds either form, and the
adapters find the same payments with both (pure walks and real nodes)."""

from __future__ import annotations

import asyncio
import pickle
import random
import sqlite3
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.bitcoin_scan import OUTPUT_KINDS, build_block, random_script
from chains import watchset
from chains.base import KeyIndex, WatchList
from chains.bitcoin import rawblock
from chains.evm import decode
from chains.watchset import (
    COMPACT_ABOVE,
    CompactBuilder,
    CompactKeys,
    DuplicateKey,
    IndexBuilder,
    bitmap_bits,
    build_index,
    or_into,
)
from devnet import btc_tools
from devnet.anvil import AnvilNode
from devnet.bcoin import BcoinNode
from tests.chains.drivers import (
    MEMPOOL,
    BitcoinCoreDriver,
    ChainDriver,
    EsploraDriver,
    EvmDriver,
    ScriptedDriver,
)
from tests.test_evm_decode import BLOCK_HASH, CONTRACT, FROM, TRANSFER_TOPIC, make_log, topic, tx, word
from watcher import watchload
from watcher.errors import StoreError
from watcher.store import NewAddress, Store

# Watch keys as adapters make them: 20-byte EVM addresses and Bitcoin output scripts of 22 to 34 bytes.
evm_keys = st.binary(min_size=20, max_size=20)
script_keys = st.binary(min_size=22, max_size=34)
ids = st.integers(min_value=1, max_value=2**63 - 1)


def both_forms(pairs: list[tuple[bytes, int]]) -> tuple[KeyIndex, CompactKeys]:
    """The same pairs as a dict and as CompactKeys."""
    small = build_index(pairs, compact_above=len(pairs) + 1)
    compact = build_index(pairs, compact_above=0)
    assert isinstance(small, dict) and isinstance(compact, CompactKeys)
    return small, compact


# ------------------------------------------------------------------------------- the index itself


@settings(max_examples=60, deadline=None)
@given(
    watched=st.dictionaries(evm_keys | script_keys, ids, max_size=300),
    probes=st.lists(evm_keys | script_keys, max_size=100),
)
def test_compact_keys_agree_with_a_dict(watched: dict[bytes, int], probes: list[bytes]) -> None:
    small, compact = both_forms(list(watched.items()))
    assert small == watched
    assert len(compact) == len(watched)
    for key, watch_id in watched.items():
        assert compact.get(key) == watch_id
        assert compact[key] == watch_id
        assert key in compact
    for probe in probes:
        assert compact.get(probe) == watched.get(probe)
        assert (probe in compact) is (probe in watched)


def test_misses_return_none_and_raise_key_error() -> None:
    rng = random.Random(5)
    watched = {rng.randbytes(20): i for i in range(1, 5001)}
    _, compact = both_forms(list(watched.items()))
    misses = [rng.randbytes(n) for n in (20, 22, 34) for _ in range(3000)]
    assert all(compact.get(k) is None and k not in compact for k in misses if k not in watched)
    assert compact.get(b"") is None and "not bytes" not in compact
    with pytest.raises(KeyError):
        compact[misses[0]]


def test_a_key_differing_in_one_bit_or_length_is_a_miss() -> None:
    key = bytes(range(22))
    _, compact = both_forms([(key, 7)])
    assert compact.get(key) == 7
    flipped = [key[:i] + bytes([key[i] ^ (1 << bit)]) + key[i + 1 :] for i in range(22) for bit in range(8)]
    assert [compact.get(k) for k in flipped] == [None] * len(flipped)
    assert compact.get(key[:-1]) is None and compact.get(key + b"\x00") is None


def test_empty_sets() -> None:
    small, compact = both_forms([])
    assert (len(small), len(compact)) == (0, 0)
    assert small.get(b"\x00" * 20) is None and compact.get(b"\x00" * 20) is None
    assert not compact and b"" not in compact
    assert len(WatchList({}).keys_for("BTC")) == 0


@pytest.mark.parametrize("compact_above", [0, 2, 100])
def test_a_key_given_twice_is_refused_in_both_forms(compact_above: int) -> None:
    """The store's UNIQUE (currency, watch_key) means a duplicate is a bug: refused, never last-wins."""
    pairs = [(b"\x01" * 20, 1), (b"\x02" * 20, 2), (b"\x03" * 20, 3), (b"\x01" * 20, 4)]
    with pytest.raises(DuplicateKey):
        build_index(pairs, compact_above)


def test_the_builder_moves_to_compact_past_the_threshold() -> None:
    rng = random.Random(6)
    pairs = [(rng.randbytes(22), i) for i in range(1, 11)]
    assert isinstance(build_index(pairs[:3], compact_above=3), dict)
    index = build_index(pairs, compact_above=3)
    assert isinstance(index, CompactKeys)
    assert [index.get(k) for k, _ in pairs] == list(range(1, 11))
    assert COMPACT_ABOVE >= 10_000  # small watch lists stay plain dicts


@pytest.mark.parametrize("count", [1, 10, 3000, 5000])
def test_the_builder_takes_keys_one_at_a_time(count: int) -> None:
    rng = random.Random(12)
    pairs = [(rng.randbytes(22), i) for i in range(1, count + 1)]
    builder = IndexBuilder(0)
    for key, watch_id in pairs:
        builder.add(key, watch_id)
    assert len(builder) == count
    index = builder.finish()
    assert isinstance(index, CompactKeys) and len(index) == count
    assert [index.get(k) for k, _ in pairs] == list(range(1, count + 1))
    assert all(index.get(rng.randbytes(22)) is None for _ in range(2000))


@pytest.mark.parametrize("watch_ids", [[1, 2, 2**32 - 1], [2**32, 2**40, 3], [-5, 0, 7]])
def test_ids_of_any_size_come_back_unchanged(watch_ids: list[int]) -> None:
    """Ids are SQLite rowids; database.id_offset can push them past 32 bits."""
    keys = [bytes([i]) * 20 for i in range(1, 4)]
    _, compact = both_forms(list(zip(keys, watch_ids, strict=True)))
    assert [compact.get(k) for k in keys] == watch_ids


def test_each_build_draws_its_own_secret() -> None:
    pairs = [(bytes([i]) * 20, i) for i in range(1, 50)]
    a, b = IndexBuilder(0), IndexBuilder(0)
    for key, watch_id in pairs:
        a.add(key, watch_id)
        b.add(key, watch_id)
    first, second = a.finish(), b.finish()
    assert isinstance(first, CompactKeys) and isinstance(second, CompactKeys)
    assert first._secret != second._secret and first._highs != second._highs
    assert [first.get(k) for k, _ in pairs] == [second.get(k) for k, _ in pairs]


def test_compact_keys_are_not_pickled() -> None:
    """It holds the secret of its fingerprints, which is written nowhere."""
    _, compact = both_forms([(b"\x01" * 20, 1)])
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(compact)


def test_compact_keys_take_a_fraction_of_a_dict() -> None:
    rng = random.Random(7)
    pairs = [(rng.randbytes(22), i) for i in range(1, 200_001)]
    compact = build_index(pairs, compact_above=0)
    assert isinstance(compact, CompactKeys)
    assert compact.nbytes / len(pairs) < 30  # a dict of bytes: ~143 B per key (bench/README.md)


def test_a_build_of_several_groups_keeps_each_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's one pass: keys of several groups in mixed batches, sorted and cut a chunk at a time (a
    chunk of 300 here, so runs from many chunks meet in each building range), one secret and one bitmap
    for all; a key watched in two groups has each group's id there and is a miss in a third."""
    monkeypatch.setattr(watchset, "_CHUNK", 300)
    rng = random.Random(21)
    shared = [rng.randbytes(20) for _ in range(200)]
    groups: dict[str, dict[bytes, int]] = {
        "ETH": {key: 1_000 + n for n, key in enumerate(shared)},
        "USDT": {key: 5_000 + n for n, key in enumerate(shared)},
        "BTC": {b"\x00\x14" + rng.randbytes(20): n for n in range(1, 3_001)},
        "USDC": {rng.randbytes(20): 2**40 + n for n in range(7)},
    }
    rows = [(group, key, watch_id) for group, keys in groups.items() for key, watch_id in keys.items()]
    rng.shuffle(rows)
    builder = CompactBuilder[str]()
    for start in range(0, len(rows), 128):
        page = rows[start : start + 128]
        builder.add_batch(
            [builder.code(g) for g, _, _ in page], [k for _, k, _ in page], [i for _, _, i in page]
        )
    assert len(builder) == len(rows)
    assert builder.counts() == {group: len(keys) for group, keys in groups.items()}
    built = builder.finish(skip={"USDC"})
    assert built.keys() == {"ETH", "USDT", "BTC"}
    for group, index in built.items():
        assert len(index) == len(groups[group])
        assert all(index.get(key) == watch_id for key, watch_id in groups[group].items())
    assert all(built["BTC"].get(key) is None for key in shared)
    assert all(built["ETH"].get(key) is None for key in groups["BTC"])
    assert all(index.get(rng.randbytes(22)) is None for index in built.values() for _ in range(500))


def test_a_key_twice_in_one_group_is_refused_in_a_build_of_several() -> None:
    builder = CompactBuilder[str]()
    eth, usdt = builder.code("ETH"), builder.code("USDT")
    builder.add_batch([eth, usdt, eth], [b"\x01" * 20, b"\x01" * 20, b"\x02" * 20], [1, 2, 3])
    assert builder.counts() == {"ETH": 2, "USDT": 1}  # one key in two groups: fine
    builder.add_batch([usdt], [b"\x01" * 20], [4])
    with pytest.raises(DuplicateKey):
        builder.finish()


def _two_builders(
    rows: list[tuple[str, bytes, int]], groups: list[str], split: int
) -> tuple[CompactBuilder[str], bytearray]:
    """What a load on two processes does: rows[:split] built by one builder, the rest by a second of the
    same secret and codes, absorbed into the first; the bitmap of all, ORed from both."""
    first = CompactBuilder[str]()
    second = CompactBuilder[str](first.secret)
    for builder, part in ((first, rows[:split]), (second, rows[split:])):
        for group in groups:
            builder.code(group)
        builder.add_batch(
            [builder.code(g) for g, _, _ in part], [k for _, k, _ in part], [i for _, _, i in part]
        )
    counts = second.code_counts()
    bits = bitmap_bits(first.total() + sum(counts))
    bitmap = first.bitmap(bits)
    or_into(bitmap, second.bitmap(bits))
    first.absorb(counts, list(second.take_runs()))
    return first, bitmap


def test_a_build_in_two_parts_answers_as_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two builders of one secret, the second's keys absorbed by the first and their bitmaps ORed: the
    same ids for every key and the same misses as one builder of every key (runs of both meet in each
    building range, chunks of 300)."""
    monkeypatch.setattr(watchset, "_CHUNK", 300)
    rng = random.Random(41)
    groups = ["ETH", "BTC", "USDC"]
    rows = [("ETH", rng.randbytes(20), n) for n in range(2_000)]
    rows += [("BTC", b"\x00\x14" + rng.randbytes(20), 10_000 + n) for n in range(1_500)]
    rng.shuffle(rows)
    probes = [k for _, k, _ in rows] + [rng.randbytes(20) for _ in range(2_000)]
    one = CompactBuilder[str]()
    one.add_batch([one.code(g) for g, _, _ in rows], [k for _, k, _ in rows], [i for _, _, i in rows])
    alone = one.finish()
    for split in (0, 1, 1_700, len(rows)):
        builder, bitmap = _two_builders(rows, groups, split)
        assert builder.counts() == {"ETH": 2_000, "BTC": 1_500}
        both = builder.finish(bitmap=bitmap)
        assert both.keys() == alone.keys() == {"ETH", "BTC"}
        for group, index in both.items():
            assert [index.get(key) for key in probes] == [alone[group].get(key) for key in probes]
            assert all(index.get(k) == i for g, k, i in rows if g == group)


def test_a_build_merged_in_two_parts_answers_as_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The load's exchange (watcher/watchload.py): the second builder's lower building ranges go to the
    first, the first's upper ranges to the second; each merges its half and the first builds the tables
    from both merges: the same answers as one builder; a part out of order is refused, not misfiled."""
    monkeypatch.setattr(watchset, "_CHUNK", 300)
    rng = random.Random(43)
    groups = ["ETH", "BTC", "USDC"]
    rows = [("ETH", rng.randbytes(20), n) for n in range(2_000)]
    rows += [("BTC", b"\x00\x14" + rng.randbytes(20), 10_000 + n) for n in range(1_500)]
    rows += [("USDC", rng.randbytes(20), 20_000 + n) for n in range(40)]
    probes = [k for _, k, _ in rows] + [rng.randbytes(20) for _ in range(2_000)]
    one = CompactBuilder[str]()
    one.add_batch([one.code(g) for g, _, _ in rows], [k for _, k, _ in rows], [i for _, _, i in rows])
    alone = one.finish(skip={"USDC"})
    lower, upper = range(watchset.BUILD_RANGES // 2), range(watchset.BUILD_RANGES // 2, watchset.BUILD_RANGES)
    for split in (0, 1_700, len(rows)):
        first = CompactBuilder[str]()
        second = CompactBuilder[str](first.secret)
        for builder, part in ((first, rows[:split]), (second, rows[split:])):
            for group in groups:
                builder.code(group)
            builder.add_batch(
                [builder.code(g) for g, _, _ in part], [k for _, k, _ in part], [i for _, _, i in part]
            )
        counts = second.code_counts()
        bits = bitmap_bits(first.total() + sum(counts))
        bitmap = first.bitmap(bits)
        or_into(bitmap, second.bitmap(bits))
        first.absorb(counts, list(second.take_runs(lower)), lower)
        second.absorb([0] * 3, list(first.take_runs(upper)), upper)
        low, high = first.merge(lower, {"USDC"}), second.merge(upper, {"USDC"})
        both = first.finish({"USDC"}, bitmap, [a + b for a, b in zip(low, high, strict=True)])
        assert both.keys() == alone.keys() == {"ETH", "BTC"}
        for group, index in both.items():
            assert [index.get(key) for key in probes] == [alone[group].get(key) for key in probes]
    first = CompactBuilder[str]()
    first.add_batch([first.code("ETH")] * 300, [rng.randbytes(20) for _ in range(300)], list(range(300)))
    merged = first.merge(lower)
    with pytest.raises(ValueError, match="overlap"):
        first.finish(bitmap=None, merged=[[merged[0][0][24:], merged[0][0][:24]]])


def test_a_key_in_both_parts_is_refused() -> None:
    """A key given to each of the two builders of a load is a key given twice."""
    rows = [("ETH", bytes([n]) * 20, n) for n in range(1, 50)] + [("ETH", b"\x07" * 20, 99)]
    builder, bitmap = _two_builders(rows, ["ETH"], 25)
    with pytest.raises(DuplicateKey):
        builder.finish(bitmap=bitmap)


def test_a_builder_that_absorbed_keys_needs_their_bitmap() -> None:
    """Without the bitmap of the absorbed keys the sets would turn them away: refused, as a bitmap of
    another size (built for another count of keys) is."""
    rows = [("ETH", bytes([n]) * 20, n) for n in range(1, 50)]
    builder, bitmap = _two_builders(rows, ["ETH"], 25)
    with pytest.raises(ValueError, match="needs the bitmap"):
        builder.finish()
    builder, bitmap = _two_builders(rows, ["ETH"], 25)
    with pytest.raises(ValueError, match="bits for 49 keys"):
        builder.finish(bitmap=bitmap + bitmap)
    with pytest.raises(ValueError, match="absorbing"):
        CompactBuilder[str]().absorb([1], [b""])


# -------------------------------------------------------------------------------------- the store


async def test_the_store_builds_either_form_with_the_same_answers(tmp_path: Path) -> None:
    rng = random.Random(8)
    entries = [
        NewAddress("eth", c, rng.randbytes(20), f"0x{n}", f"c-{n}")
        for n in range(300)
        for c in ("ETH", "USDT")
    ]
    entries += [
        NewAddress("bitcoin", "BTC", b"\x00\x14" + rng.randbytes(20), f"bc{n}", f"b-{n}") for n in range(50)
    ]
    store = await Store.open(str(tmp_path / "watcher.sqlite3"))
    try:
        await store.sync_addresses("eth", [e for e in entries if e.chain == "eth"])
        await store.sync_addresses("bitcoin", [e for e in entries if e.chain == "bitcoin"])
        for chain in ("eth", "bitcoin"):
            small = await store.watch_keys(chain)
            compact = await store.watch_keys(chain, compact_above=0)
            assert all(isinstance(index, dict) for index in small.values())
            assert all(isinstance(index, CompactKeys) for index in compact.values())
            assert compact.keys() == small.keys()
            for currency, index in small.items():
                assert isinstance(index, dict) and len(compact[currency]) == len(index)
                assert all(compact[currency].get(key) == watch_id for key, watch_id in index.items())
        assert (await store.watch_keys("eth", compact_above=0))["ETH"].get(entries[1].watch_key) is None
    finally:
        await store.close()


async def test_the_store_loads_only_active_rows_of_the_chains_asked(tmp_path: Path) -> None:
    """One pass, several sets: deactivated rows are left out of both forms, a set at most `compact_above`
    is a dict and a larger one CompactKeys in the same load, and a chain not asked for is not loaded."""
    rng = random.Random(22)
    eth = [
        NewAddress("eth", c, rng.randbytes(20), f"0x{n}", f"c-{n}")
        for n in range(400)
        for c in ("ETH", "USDT")
    ]
    btc = [
        NewAddress("bitcoin", "BTC", b"\x00\x14" + rng.randbytes(20), f"bc{n}", f"b-{n}") for n in range(30)
    ]
    store = await Store.open(str(tmp_path / "watcher.sqlite3"))
    try:
        await store.sync_addresses("eth", eth)
        await store.sync_addresses("bitcoin", btc)
        kept = [e for n, e in enumerate(eth) if n % 5]  # every fifth row of eth deactivated
        await store.sync_addresses("eth", kept)
        for compact_above in (0, 100, 10**6):
            sets = await store.watch_sets(["eth", "bitcoin"], compact_above)
            assert sets.keys() == {"eth", "bitcoin"} and sets["eth"].keys() == {"ETH", "USDT"}
            for chain, entries in (("eth", kept), ("bitcoin", btc)):
                for currency, index in sets[chain].items():
                    expected = [e for e in entries if e.currency == currency]
                    assert isinstance(index, dict) is (len(expected) <= compact_above)
                    assert len(index) == len(expected)
                    ids = [index.get(e.watch_key) for e in expected]
                    assert None not in ids and len(set(ids)) == len(ids)
                    assert all(index.get(e.watch_key) is None for e in eth[::5] if e.currency == currency)
        assert (await store.watch_sets(["bitcoin"], 0)).keys() == {"bitcoin"}
        assert await store.watch_sets(["solana"]) == {"solana": {}}
        assert await store.watch_sets([]) == {}
    finally:
        await store.close()


async def test_a_load_told_to_stop_gives_up_at_its_next_page(tmp_path: Path) -> None:
    """What `watch_sets` does when its task is cancelled (its thread cannot be): the load stops."""
    store = await Store.open(str(tmp_path / "watcher.sqlite3"))
    try:
        await store.sync_addresses("eth", [NewAddress("eth", "ETH", b"\x01" * 20, "0x1", "c-1")])
        stop = threading.Event()
        stop.set()
        with pytest.raises(StoreError, match="given up"):
            await asyncio.to_thread(store._load_watch_sets, ("eth",), 0, stop)
        assert len((await store.watch_sets(["eth"]))["eth"]["ETH"]) == 1
    finally:
        await store.close()


def test_the_page_fetching_thread_ends_with_the_pages_or_the_reader(tmp_path: Path) -> None:
    """`watch_sets` reads pages one ahead in a thread of their own: all pages come, in order; a reader
    stopping early (an error building) lets the thread end; an error of SQLite reaches the reader."""
    conn = sqlite3.connect(tmp_path / "pages.sqlite3", check_same_thread=False)
    try:
        conn.execute("CREATE TABLE t (n INTEGER)")
        conn.executemany("INSERT INTO t VALUES (?)", ((n,) for n in range(1000)))
        pages = list(watchload._prefetched(conn.execute("SELECT n FROM t ORDER BY n"), 64))
        assert [n for page in pages for (n,) in page] == list(range(1000)) and len(pages) == 16
        early = watchload._prefetched(conn.execute("SELECT n FROM t ORDER BY n"), 10)
        assert next(early) == [(n,) for n in range(10)]
        early.close()
        assert not [t for t in threading.enumerate() if t.name == "watch-set-fetch"]
        # abs(-2^63) fails from the row n = 500 on (rows in rowid order), a few pages in.
        failing = conn.execute("SELECT abs(-9223372036854775807 - (n >= 500)) FROM t")
        got: list[Any] = []
        with pytest.raises(sqlite3.OperationalError, match="overflow"):
            got.extend(watchload._prefetched(failing, 10))
        assert 0 < len(got) < 50  # the pages before the failing row (sqlite3 steps one row ahead)
        assert not [t for t in threading.enumerate() if t.name == "watch-set-fetch"]
    finally:
        conn.close()


# ------------------------------------------------------------------------- the adapters' pure walks


def test_the_bitcoin_block_walk_finds_the_same_payments_with_both_forms() -> None:
    rng = random.Random(9)
    paid = [random_script(rng, OUTPUT_KINDS[i % len(OUTPUT_KINDS)]) for i in range(8)]
    block = build_block(300, paid)
    decoys = [random_script(rng, OUTPUT_KINDS[i % len(OUTPUT_KINDS)]) for i in range(5000)]
    pairs = [(s, i) for i, s in enumerate(paid + decoys, start=1)]
    small, compact = both_forms(pairs)
    with_dict = rawblock.walk_block(block.raw, small)
    with_compact = rawblock.walk_block(block.raw, compact)
    assert with_compact == with_dict
    expected = sorted(hit for hits in block.paid.values() for hit in hits)
    assert sorted((p.txid, p.vout, p.value) for p in with_compact.payments) == expected
    assert {p.watch_id for p in with_compact.payments} == set(range(1, 9))


def test_the_evm_log_and_native_matches_are_the_same_with_both_forms() -> None:
    rng = random.Random(10)
    receivers = [rng.randbytes(20) for _ in range(40)]
    watched = receivers[::2] + [rng.randbytes(20) for _ in range(3000)]
    small, compact = both_forms([(k, i) for i, k in enumerate(watched, start=1)])
    logs = [
        make_log(logIndex=hex(n), topics=[TRANSFER_TOPIC, topic(FROM), topic(to)], data=word(n + 1))
        for n, to in enumerate(receivers)
    ]
    found = {}
    for name, index in (("dict", small), ("compact", compact)):
        entries = decode.decode_transfer_logs(logs, Counter(), {16: BLOCK_HASH}, {CONTRACT: index})
        found[name] = [(e.to_key, e.amount, index.get(e.to_key)) for e in entries]
    assert found["compact"] == found["dict"]
    assert [(k, a) for k, a, _ in found["compact"]] == [
        (to, n + 1) for n, to in enumerate(receivers) if n % 2 == 0
    ]
    txs = [tx("0x" + to.hex(), n + 1, n) for n, to in enumerate(receivers)]
    assert decode.native_payments(txs, compact, 5) == decode.native_payments(txs, small, 5)
    assert len(decode.native_payments(txs, compact, 5)) == 20


# ------------------------------------------------------------------------------ real nodes, both forms


@pytest.fixture(scope="module")
def quiet_anvil() -> Iterator[AnvilNode]:
    """An anvil that mines only when the driver says so (as the contract suite's)."""
    with AnvilNode(no_mining=True) as node:
        yield node


@pytest.fixture(scope="module")
def funded_bcoin() -> Iterator[BcoinNode]:
    with BcoinNode() as node:
        btc_tools.fund(node)
        yield node


@pytest.fixture(params=["scripted", "bitcoin-core", "esplora", "evm"])
async def driver(request: pytest.FixtureRequest) -> AsyncIterator[ChainDriver]:
    make: dict[str, Callable[[], ChainDriver]] = {
        "scripted": ScriptedDriver,
        "bitcoin-core": lambda: BitcoinCoreDriver(request.getfixturevalue("funded_bcoin")),
        "esplora": lambda: EsploraDriver(request.getfixturevalue("funded_bcoin")),
        "evm": lambda: EvmDriver(request.getfixturevalue("quiet_anvil")),
    }
    chain_driver = make[request.param]()
    await chain_driver.start()
    try:
        yield chain_driver
    finally:
        await chain_driver.aclose()


async def test_adapters_find_payments_with_both_forms(driver: ChainDriver) -> None:
    """A watched and an unwatched payment, among 2,000 watched keys never paid: the mempool (where the
    chain has one) and the mined block give the one watched payment, the same with a dict and CompactKeys."""
    adapter = driver.adapter()
    await adapter.open()
    watched, unwatched = driver.new_address(), driver.new_address()
    txid = driver.pay(watched, 12_345)
    driver.pay(unwatched, 54_321)
    key = driver.adapter_class.watch_key(driver.currency, watched, driver.network)
    rng = random.Random(11)
    pairs = [(key, 1)] + [(rng.randbytes(len(key)), i) for i in range(2, 2002)]
    small, compact = both_forms(pairs)
    forms = [WatchList({driver.currency.code: index}) for index in (small, compact)]
    expected = driver.expected(txid, watched, 1, 12_345)
    if MEMPOOL in driver.features:
        assert [(await adapter.mempool_scan(w)).transfers for w in forms] == [(expected,), (expected,)]
    driver.mine()
    head = await adapter.head()
    scans = [await adapter.scan(head.height, head.height, w) for w in forms]
    assert scans[0] == scans[1]
    assert scans[1][0].transfers == (expected,)
