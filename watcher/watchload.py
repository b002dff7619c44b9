"""The load of the watch sets at start (`Store.watch_sets`): every active watched address of the chains
asked for, read from the store and built into the adapters' `KeyIndex`es, on both cores when many.

Issue 10: 10,000,000 watched addresses, store open to first poll within 60 s. On one core the load is
~6 s of CPU per 1,000,000 rows (SQLite making rows, fingerprints, sorting, merging: bench/README.md).
Past `SPLIT_ABOVE` ids a helper process (multiprocessing "spawn": a fresh interpreter, safe to start from
a process with threads, as the daemon is) reads the upper half of the id range on a read-only connection
of its own and builds it with the same secret (`CompactBuilder(secret)`), while this process reads the
lower half. Then, through a pipe, the helper hands over its keys' count per group, its bitmap at the
size the whole load needs (told by this process once both counts are known; each builds its own at the
same time, this process ORs them) and its sorted runs of the lower building ranges (fingerprints' top
byte below 128), and takes this process's runs of the upper ones. Each merges its half of the ranges
at the same time (`CompactBuilder.merge`: sorted, duplicates refused, a key in both halves among them)
and the helper hands its merged records back; `finish` appends both to each table in order. A helper
that dies or hands over something else is logged and the load starts again here alone: as slow as on
one core, never short of a row.

The two halves are two read transactions, so two snapshots of the table. Both begin after the daemon read
its high-water marks (`Store.address_high_water`), and every row added or watched again after those marks
is pulled again by the followers (`new_watch_keys`, `watched_again`): as with one snapshot, a row written
meanwhile is in the sets or pulled later. The helper reads only ids and currencies this process found.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any
from urllib.parse import quote

from chains.base import KeyIndex
from chains.watchset import BUILD_RANGES, CompactBuilder, DuplicateKey, bitmap_bits, or_into
from watcher.errors import HelperFailed, StoreError
from watcher.logs import get_logger

log = get_logger(component="store")

# Rows of the addresses table a watch set load fetches at once: the builder's C-level maps run over a page
# holding the GIL, so a page (~10 ms) is the longest the event loop waits for the loading thread.
PAGE_ROWS = 8192
# Past this many ids (max - min) a helper process loads half. Starting it costs ~0.3 s of CPU (a fresh
# interpreter and its imports); on two free cores it saves ~2 s of wall time per 1,000,000 rows.
SPLIT_ABOVE = 200_000
_POLL_S = 0.1  # how often a wait for the helper looks at the stop flag and whether the helper is alive
# The building ranges (by top byte of the fingerprint) this process merges, and those its helper merges.
_LOWER = range(BUILD_RANGES // 2)
_UPPER = range(BUILD_RANGES // 2, BUILD_RANGES)
# The helper's word before its merged records: all merged, or a key found in both halves.
_MERGED, _DUPLICATE = "merged", "duplicate"

Group = tuple[str, str]  # (chain, currency)
HelperMain = Callable[[Connection, str, list[Group], int, int, bytes], None]


def load_watch_sets(
    path: str,
    chains: Sequence[str],
    compact_above: int,
    stop: threading.Event,
    split_above: int = SPLIT_ABOVE,
    helper_main: HelperMain | None = None,
) -> dict[str, dict[str, KeyIndex]]:
    """`Store.watch_sets`, in the calling (worker) thread; `stop` set: gives up at its next page or wait."""
    found: dict[str, dict[str, KeyIndex]] = {chain: {} for chain in chains}
    if not chains:
        return found
    # Not bound to its thread: `_prefetched` steps its cursor in another (never two threads at once).
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        # One read transaction: the sets kept as dicts are read again below from the same snapshot.
        conn.execute("BEGIN")
        currencies = _currencies(conn)
        if not currencies:
            return found
        groups = [(chain, currency) for chain in chains for currency in currencies]
        # Two statements: SQLite finds a lone min() or max() of the rowid at one end of the table, but
        # scans the whole table for both in one SELECT (2.6 s at 10,000,000 rows).
        first = conn.execute("SELECT min(id) FROM addresses").fetchone()[0]
        last = conn.execute("SELECT max(id) FROM addresses").fetchone()[0]
        loaded = _load(conn, path, groups, (first, last), stop, compact_above, split_above, helper_main)
        builder, bitmap, merged = loaded
        small = _small(builder.counts(), compact_above)
        for (chain, currency), index in builder.finish(small, bitmap, merged).items():
            found[chain][currency] = index
        for chain, currency in small:
            found[chain][currency] = dict(
                conn.execute(
                    "SELECT watch_key, id FROM addresses WHERE currency = ? AND chain = ? AND active = 1",
                    (currency, chain),
                )
            )
        return found
    finally:
        conn.close()


def _small(counts: dict[Group, int], compact_above: int) -> set[Group]:
    """The groups kept as dicts: a set of at most `compact_above` keys (chains/watchset.py: faster, and
    its extra memory is noise). Their keys, which fingerprints do not keep, are read again by the index
    on (currency, watch_key)."""
    return {group for group, count in counts.items() if count <= compact_above}


Loaded = tuple[CompactBuilder[Group], "bytearray | None", "list[list[bytes]] | None"]


def _load(
    conn: sqlite3.Connection,
    path: str,
    groups: list[Group],
    ids: tuple[int, int],
    stop: threading.Event,
    compact_above: int,
    split_above: int,
    helper_main: HelperMain | None,
) -> Loaded:
    """Every row of `groups` with an id in `ids` in a builder, with what its `finish` takes: with a
    helper when the range is wide, the bitmap of all the keys and the records merged apart."""
    first, last = ids
    builder = _builder(groups)
    if last - first >= split_above:
        middle = first + (last - first) // 2
        try:
            helper = _Helper(path, groups, middle + 1, last, builder.secret, helper_main or _helper_main)
        except OSError as e:  # no process to be had (limits, memory): the load is this process's
            log.warning("watch_set_helper_failed", error=f"{type(e).__name__}: {e}")
        else:
            try:
                _read(path, conn, builder, groups, first, middle, stop)
                return (builder, *helper.hand_over(builder, stop, compact_above))
            except HelperFailed as e:
                # The builder may hold part of the helper's keys or have handed it some: start again.
                log.warning("watch_set_helper_failed", error=str(e), reading_alone=f"ids {first}-{last}")
                builder = _builder(groups)
            finally:
                helper.close()
    _read(path, conn, builder, groups, first, last, stop)
    return builder, None, None


def _builder(groups: list[Group], secret: bytes | None = None) -> CompactBuilder[Group]:
    """A builder whose codes are the positions of `groups` (as the query of `_read` numbers them)."""
    builder = CompactBuilder[Group](secret)
    for group in groups:
        builder.code(group)
    return builder


def _read(
    path: str,
    conn: sqlite3.Connection,
    builder: CompactBuilder[Group],
    groups: list[Group],
    first: int,
    last: int,
    stop: threading.Event | None,
) -> None:
    """The active rows of `groups` with ids from `first` to `last` into `builder`, page by page."""
    chains = list(dict.fromkeys(chain for chain, _ in groups))
    currencies = list(dict.fromkeys(currency for _, currency in groups))
    # Each row's group as its number in `groups` (chains major), worked out by SQLite: a small int instead
    # of two strings a row to make, hash and look up. The unary + keeps SQLite off the (currency,
    # watch_key) index: the rows are read in id order, a range of the table, not key by key.
    cursor = conn.execute(
        f"SELECT (CASE chain {_cases(chains)} END) * ? + (CASE currency {_cases(currencies)} END),"
        " watch_key, id FROM addresses WHERE id BETWEEN ? AND ?"
        f" AND +chain IN ({_marks(chains)}) AND +currency IN ({_marks(currencies)})"
        " AND active = 1",
        (
            *_case_params(chains),
            len(currencies),
            *_case_params(currencies),
            first,
            last,
            *chains,
            *currencies,
        ),
    )
    codes = [builder.code(group) for group in groups]
    # Pages of rows go to the builder column by column, as C-level maps do the work per key.
    for rows in _prefetched(cursor, PAGE_ROWS):
        if stop is not None and stop.is_set():
            raise StoreError(f"{path}: loading the watch sets was given up (stopping)")
        numbers, keys, row_ids = zip(*rows, strict=True)
        del rows
        builder.add_batch(map(codes.__getitem__, numbers), keys, row_ids)


class _Helper:
    """The helper process loading the ids from `first` to `last`, and this process's end of its pipe."""

    def __init__(
        self, path: str, groups: list[Group], first: int, last: int, secret: bytes, main: HelperMain
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_end = context.Pipe()
        self._process: BaseProcess = context.Process(
            target=main,
            args=(child_end, path, groups, first, last, secret),
            name="watch-set-helper",
            daemon=True,
        )
        self._process.start()
        child_end.close()  # only the child holds it now: its exit is an end of file here
        self._groups = groups
        self._path = path

    def hand_over(
        self, builder: CompactBuilder[Group], stop: threading.Event, compact_above: int
    ) -> tuple[bytearray, list[list[bytes]]]:
        """The two halves joined (`_helper_main` says how), while the helper merges the upper building
        ranges: the bitmap of all the keys and, per code, the lower ranges' records merged here and the
        upper ones' merged by the helper, for `builder.finish`. HelperFailed: `builder` is spoilt."""
        try:
            counts = self._receive(stop)
            if not _counts_of(counts, len(self._groups)):
                raise HelperFailed(f"the helper sent {counts!r:.80} instead of {len(self._groups)} counts")
            totals = map(int.__add__, builder.code_counts(), counts)
            small = _small(dict(zip(self._groups, totals, strict=True)), compact_above)
            bits = bitmap_bits(builder.total() + sum(counts))
            self._conn.send((bits, sorted(small)))
            bitmap = builder.bitmap(bits)  # while the helper builds its own
            other = self._receive_bytes(stop)
            runs = [self._receive_bytes(stop) for _ in range(builder.run_count(_LOWER))]
            or_into(bitmap, other)
            builder.absorb(counts, runs, _LOWER)
            del runs
            for run in builder.take_runs(_UPPER):
                self._conn.send_bytes(run)
            merged = builder.merge(_LOWER, small)  # while the helper merges the upper ranges
            word, parts = self._receive(stop)
            if word != _MERGED:
                raise DuplicateKey("two watch keys share a fingerprint (a key given twice)")
            if not _counts_of(parts, len(self._groups)):
                raise HelperFailed(f"the helper sent {parts!r:.80} instead of {len(self._groups)} counts")
            # Range by range, not a message a group: a message of tens of MB is received with copies.
            for lower, count in zip(merged, parts, strict=True):
                lower.extend(self._receive_bytes(stop) for _ in range(count))
        except (EOFError, OSError, ValueError) as e:
            if isinstance(e, DuplicateKey):
                raise
            raise HelperFailed(f"{type(e).__name__}: {e}") from e
        return bitmap, merged

    def close(self) -> None:
        """End the helper if still running (a stop, a failure) and release the pipe."""
        if self._process.is_alive():
            self._process.kill()
        self._process.join()
        self._conn.close()

    def _wait(self, stop: threading.Event) -> None:
        while not self._conn.poll(_POLL_S):
            if stop.is_set():
                raise StoreError(f"{self._path}: loading the watch sets was given up (stopping)")
            if not self._process.is_alive() and not self._conn.poll():
                raise HelperFailed(f"the helper process ended (exit code {self._process.exitcode})")

    def _receive(self, stop: threading.Event) -> Any:
        self._wait(stop)
        return self._conn.recv()

    def _receive_bytes(self, stop: threading.Event) -> bytes:
        self._wait(stop)
        return self._conn.recv_bytes()


def _counts_of(counts: object, groups: int) -> bool:
    """Whether the helper's first message is what it must be: a count of keys for each group."""
    return (
        isinstance(counts, list)
        and len(counts) == groups
        and all(type(count) is int and count >= 0 for count in counts)
    )


def _helper_main(
    conn: Connection, path: str, groups: list[Group], first: int, last: int, secret: bytes
) -> None:
    """The helper process: the rows of `groups` with ids `first` to `last` read and built, then joined
    with the daemon's half. It sends its counts; told the bitmap's size and the groups kept as dicts, it
    sends its bitmap and its runs of the lower building ranges; it takes the daemon's runs of the upper
    ranges and sends them merged with its own (after `_MERGED` and the number of ranges of each group
    that hold records, range by range; `_DUPLICATE` instead if a key is in both halves), while the
    daemon merges the lower ranges."""
    db = sqlite3.connect(
        f"file:{quote(path)}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
    )
    try:
        db.execute("PRAGMA busy_timeout = 10000")
        db.execute("BEGIN")
        builder = _builder(groups, secret)
        _read(path, db, builder, groups, first, last, None)
    finally:
        db.close()
    conn.send(builder.code_counts())
    bits, small = conn.recv()
    conn.send_bytes(builder.bitmap(bits))
    for run in builder.take_runs(_LOWER):
        conn.send_bytes(run)
    runs = [conn.recv_bytes() for _ in range(builder.run_count(_UPPER))]
    builder.absorb([0] * len(groups), runs, _UPPER)
    del runs
    try:
        merged = builder.merge(_UPPER, set(small))
    except DuplicateKey:
        conn.send((_DUPLICATE, None))
        return
    conn.send((_MERGED, [len(parts) for parts in merged]))
    for parts in merged:
        for records in parts:
            conn.send_bytes(records)
    conn.close()


def _prefetched(cursor: sqlite3.Cursor, size: int) -> Iterator[list[Any]]:
    """The cursor's rows in pages, each fetched by a thread of its own while the caller works on the one
    before: SQLite steps, and waits for the disk (a cold start reads gigabytes), without the GIL."""
    pages: queue.Queue[list[Any] | BaseException] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def fetch() -> None:
        try:
            while not stop.is_set():
                rows = cursor.fetchmany(size)
                pages.put(rows)
                if not rows:
                    return
        except BaseException as e:  # handed to the caller, raised there
            pages.put(e)

    fetcher = threading.Thread(target=fetch, name="watch-set-fetch", daemon=True)
    fetcher.start()
    try:
        while True:
            page = pages.get()
            if isinstance(page, BaseException):
                raise page
            if not page:
                return
            yield page
    finally:
        # The caller may stop early (an error): the fetcher, perhaps waiting to put a page, is let go.
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                pages.get_nowait()
        fetcher.join()


def _currencies(conn: sqlite3.Connection) -> list[str]:
    """Every currency of the addresses table, each found by one step of the index on (currency,
    watch_key), not by reading the table."""
    found: list[str] = []
    step = conn.execute("SELECT min(currency) FROM addresses").fetchone()[0]
    while step is not None:
        found.append(step)
        step = conn.execute("SELECT min(currency) FROM addresses WHERE currency > ?", (step,)).fetchone()[0]
    return found


def _cases(values: Sequence[str]) -> str:
    """`WHEN ? THEN ?` for each value: with `_case_params`, a CASE giving each value its position."""
    return " ".join("WHEN ? THEN ?" for _ in values)


def _marks(values: Sequence[str]) -> str:
    return ", ".join("?" * len(values))


def _case_params(values: Sequence[str]) -> list[object]:
    return [item for number, value in enumerate(values) for item in (value, number)]
