"""The start-up load of the watch sets split across two processes (watcher/watchload.py): a helper
process loads the upper half of the ids, this one the lower half, and the sets answer exactly as when
one process loads everything; a helper that fails leaves the load to this process, a stop ends both."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from chains.base import KeyIndex
from chains.watchset import CompactKeys, DuplicateKey
from watcher import watchload
from watcher.errors import StoreError
from watcher.store import NewAddress, Store
from watcher.watchload import Group

NO_SPLIT = 10**12


def _rows(rng: random.Random) -> tuple[list[NewAddress], list[NewAddress], list[NewAddress]]:
    """Ethereum rows (two currencies at one key), Bitcoin rows, and rows of a chain never asked for."""
    eth = [
        NewAddress("eth", currency, key, f"0x{n}", f"c-{n}")
        for n, key in enumerate(rng.randbytes(20) for _ in range(700))
        for currency in ("ETH", "USDT")
    ]
    btc = [
        NewAddress("bitcoin", "BTC", b"\x00\x14" + rng.randbytes(20), f"bc{n}", f"b-{n}") for n in range(400)
    ]
    other = [NewAddress("tron", "TRX", rng.randbytes(21), f"T{n}", f"t-{n}") for n in range(200)]
    return eth, btc, other


async def _filled(path: str) -> tuple[Store, list[NewAddress], list[NewAddress], list[NewAddress]]:
    """A store holding the rows of `_rows`, every third Ethereum row deactivated (its ids in both halves)."""
    eth, btc, other = _rows(random.Random(31))
    store = await Store.open(path)
    # Interleaved so that each chain has rows in both halves of the id range.
    for n in range(0, 700, 100):
        await store.sync_addresses("eth", eth[: 2 * (n + 100)])
        await store.sync_addresses("bitcoin", btc[: n * 400 // 700 + 58])
        await store.sync_addresses("tron", other[: n * 200 // 700 + 29])
    kept = [e for n, e in enumerate(eth) if n % 3]
    await store.sync_addresses("eth", kept)
    return store, kept, [e for n, e in enumerate(eth) if not n % 3], btc + other


def _answers(
    sets: dict[str, dict[str, KeyIndex]], probes: list[bytes]
) -> dict[tuple[str, str], list[object]]:
    return {
        (chain, currency): [index.get(key) for key in probes]
        for chain, by_currency in sets.items()
        for currency, index in by_currency.items()
    }


@pytest.mark.parametrize("compact_above", [0, 500, 10**6])
async def test_two_processes_build_sets_answering_as_one(tmp_path: Path, compact_above: int) -> None:
    """Hits with the same ids, the same misses (deactivated rows, another chain's keys, random keys), the
    same forms; the helper did load its half (no fallback logged: this process read only its own)."""
    store, kept, inactive, others = await _filled(str(tmp_path / "watcher.sqlite3"))
    try:
        rng = random.Random(5)
        probes = [e.watch_key for e in kept + inactive + others] + [rng.randbytes(20) for _ in range(500)]
        alone = await store.watch_sets(["eth", "bitcoin"], compact_above, split_above=NO_SPLIT)
        with capture_logs() as logs:
            split = await store.watch_sets(["eth", "bitcoin"], compact_above, split_above=0)
        assert not [entry for entry in logs if entry["log_level"] == "warning"]
        assert split.keys() == alone.keys() == {"eth", "bitcoin"}
        for chain in split:
            assert split[chain].keys() == alone[chain].keys()
            for currency, index in split[chain].items():
                assert type(index) is type(alone[chain][currency])
                assert isinstance(index, CompactKeys) is (compact_above == 0)
                assert len(index) == len(alone[chain][currency])
        assert _answers(split, probes) == _answers(alone, probes)
        eth = split["eth"]
        assert all(eth[e.currency].get(e.watch_key) is not None for e in kept)
        assert all(eth[e.currency].get(e.watch_key) is None for e in inactive)
        assert sum(len(index) for index in eth.values()) == len(kept)
        assert all(
            split["bitcoin"]["BTC"].get(e.watch_key) is not None for e in others if e.chain == "bitcoin"
        )
        assert all(e.watch_key not in index for e in others if e.chain == "tron" for index in eth.values())
    finally:
        await store.close()


def _helper_dying(
    conn: Connection, path: str, groups: list[Group], first: int, last: int, secret: bytes
) -> None:
    """A helper process that ends without a word, as one killed by the OOM killer would."""
    os._exit(3)


def _helper_dying_midway(
    conn: Connection, path: str, groups: list[Group], first: int, last: int, secret: bytes
) -> None:
    """A helper that does its work and hands over only a part of its runs before it dies."""
    _helper_cut(conn, path, groups, first, last, secret, 40, "")


def _helper_dying_merging(
    conn: Connection, path: str, groups: list[Group], first: int, last: int, secret: bytes
) -> None:
    """A helper that dies once it has taken the daemon's runs of the upper ranges and merged them."""
    _helper_cut(conn, path, groups, first, last, secret, -1, watchload._MERGED)


def _helper_cut(
    conn: Connection,
    path: str,
    groups: list[Group],
    first: int,
    last: int,
    secret: bytes,
    runs: int,
    word: str,
    instead: str = "",
) -> None:
    """The helper, dying at its `runs`th bytes sent or when it would send `word` (sending `instead`)."""
    sent = []

    class Cut:
        def send(self, obj: object) -> None:
            if isinstance(obj, tuple) and obj[0] == word:
                if instead:
                    conn.send((instead, None))
                os._exit(5)
            conn.send(obj)

        def recv_bytes(self) -> bytes:
            return conn.recv_bytes()

        def recv(self) -> object:
            return conn.recv()

        def send_bytes(self, data: bytes) -> None:
            sent.append(data)
            if len(sent) == runs:
                os._exit(4)
            conn.send_bytes(data)

        def close(self) -> None:
            conn.close()

    watchload._helper_main(Cut(), path, groups, first, last, secret)  # type: ignore[arg-type]


def _helper_confused(
    conn: Connection, path: str, groups: list[Group], first: int, last: int, secret: bytes
) -> None:
    """A helper that hands over something other than counts (a bug, another version)."""
    conn.send({"counts": [1, 2]})
    conn.recv()


def _helper_miscounting(
    conn: Connection, path: str, groups: list[Group], first: int, last: int, secret: bytes
) -> None:
    """A helper whose counts are not counts."""
    conn.send([None] * len(groups))
    conn.recv()


@pytest.mark.parametrize(
    "helper",
    [_helper_dying, _helper_dying_midway, _helper_dying_merging, _helper_confused, _helper_miscounting],
)
async def test_a_helper_that_fails_leaves_the_whole_load_here(
    tmp_path: Path, helper: watchload.HelperMain
) -> None:
    store, kept, inactive, others = await _filled(str(tmp_path / "watcher.sqlite3"))
    try:
        probes = [e.watch_key for e in kept + inactive + others]
        alone = await store.watch_sets(["eth", "bitcoin"], 0, split_above=NO_SPLIT)
        stop = threading.Event()
        with capture_logs() as logs:
            fallen_back = await asyncio.to_thread(
                watchload.load_watch_sets, store.path, ["eth", "bitcoin"], 0, stop, 0, helper
            )
        assert [entry["event"] for entry in logs if entry["log_level"] == "warning"] == [
            "watch_set_helper_failed"
        ]
        assert _answers(fallen_back, probes) == _answers(alone, probes)
        assert not multiprocessing.active_children()
    finally:
        await store.close()


def _helper_finding_a_duplicate(
    conn: Connection, path: str, groups: list[Group], first: int, last: int, secret: bytes
) -> None:
    """A helper whose merge found a key in both halves (which the store's UNIQUE (currency, watch_key)
    keeps from happening: here the helper does all its work and then says so, as `_helper_main` would)."""
    _helper_cut(conn, path, groups, first, last, secret, -1, watchload._MERGED, watchload._DUPLICATE)


async def test_a_key_in_both_halves_fails_the_load(tmp_path: Path) -> None:
    """A duplicate found by the helper is a duplicate: the load fails (DuplicateKey), no fallback."""
    store, *_ = await _filled(str(tmp_path / "watcher.sqlite3"))
    try:
        stop = threading.Event()
        with pytest.raises(DuplicateKey):
            await asyncio.to_thread(
                watchload.load_watch_sets, store.path, ["eth"], 0, stop, 0, _helper_finding_a_duplicate
            )
        assert not multiprocessing.active_children()
    finally:
        await store.close()


def _helper_stuck(
    conn: Connection, path: str, groups: list[Group], first: int, last: int, secret: bytes
) -> None:
    """A helper that never answers (a disk that does not respond)."""
    time.sleep(3600)


def test_a_stop_ends_a_load_waiting_for_its_helper(tmp_path: Path) -> None:
    """Stopped while its helper has not answered, the load gives up (at its next page or wait) and the
    helper process is ended, not waited for."""
    path = str(tmp_path / "watcher.sqlite3")

    async def fill() -> None:
        await (await _filled(path))[0].close()

    asyncio.run(fill())
    stop = threading.Event()
    failed: list[BaseException] = []

    def load() -> None:
        try:
            watchload.load_watch_sets(path, ["eth"], 0, stop, 0, _helper_stuck)
        except StoreError as e:
            failed.append(e)

    loading = threading.Thread(target=load)
    loading.start()
    while not multiprocessing.active_children():
        time.sleep(0.01)
    stop.set()
    loading.join()
    assert len(failed) == 1 and "given up" in str(failed[0])
    assert not multiprocessing.active_children()
