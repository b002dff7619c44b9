"""`deposit-watcher migrate-store`: a stopped daemon's SQLite store moved into an empty PostgreSQL database.

The whole move is one PostgreSQL transaction: the schema (when the database has none yet), every table's
rows copied with their ids (binary COPY, streamed from an SQLite cursor: a table is never held in memory),
a check of every row, streamed from both sides in key order, then the id counters set so that the next
ids are SQLite's. Only when every table matches does it commit; any difference, error or interruption
rolls back, and the destination is as it was (the counters are set last, after the check: a sequence,
unlike a row, is not restored by a rollback).

What makes the copy trustworthy:
- The daemon's lock (store._take_lock) is held from start to end: a daemon cannot start on the store
  meanwhile, and one already running makes the command refuse. The SQLite side is read in one
  BEGIN IMMEDIATE transaction: one snapshot for the copy and the check, and a CLI command writing to
  the store meanwhile waits (or fails) instead of writing what the copy would not have.
- The destination must hold no row in any table (a schema without rows is fine); the transaction holds
  the store's advisory write lock, so no daemon or CLI command writes there meanwhile.
- The check compares values exactly: text as text (amounts are decimal text), bytes as bytes, floats by
  their bits (float.hex), integers as integers; a row only one side has is a difference too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiosqlite
import asyncpg

from watcher.database_url import is_database_url, safe_database_url
from watcher.errors import StoreError
from watcher.pg_schema import PG_MIGRATIONS, VERSION_TABLE, WRITE_LOCK_KEY
from watcher.store import MIGRATIONS, Store, _take_lock

CONNECT_TIMEOUT_S = 10.0
BATCH_ROWS = 10_000  # rows fetched from SQLite at a time (and prefetched from PostgreSQL by the check)
PROGRESS_ROWS = 200_000  # a table this big gets progress lines while copied and checked
PROGRESS_EVERY = 500_000  # rows between progress lines


@dataclass(frozen=True, slots=True)
class Table:
    """A store table: its key (the order rows are copied and compared in) and how its ids are counted.

    `counter`: the PostgreSQL sequence that gives new ids (pg_schema: the autoincrement_id trigger's, or
    an identity column's), with `trigger` the insert trigger that raises it row by row (disabled during
    the copy: the counter is set once, at the end). `autoincrement`: SQLite counts its ids in
    sqlite_sequence (AUTOINCREMENT), which may be above the largest id (an id offset, deleted rows)."""

    name: str
    key: tuple[str, ...]
    counter: str | None = None
    trigger: str | None = None
    autoincrement: bool = False


# In the order references allow (a row's referenced rows are copied before it).
TABLES: tuple[Table, ...] = (
    Table("chains", ("name",)),
    Table("blocks", ("chain", "height")),
    Table("addresses", ("id",)),
    Table("public_keys", ("key_id",)),
    Table("derivations", ("integration_id", "chain", "foreign_id")),
    Table("deposits", ("id",), "deposits_id_seq", "deposits_id", autoincrement=True),
    Table("payments", ("id",), "payments_id_seq", "payments_id", autoincrement=True),
    Table("outbox", ("id",), "outbox_id_seq", "outbox_id", autoincrement=True),
    Table("attempts", ("id",), "attempts_id_seq"),
    Table("events", ("id",), "events_id_seq", "events_id", autoincrement=True),
    Table("watch_changes", ("seq",), "watch_changes_seq_seq", autoincrement=True),
    Table("seen_clocks", ("chain",)),
)
# SQLite's own tables (sqlite_sequence, and sqlite_stat1 and the like after an ANALYZE) are not the store's.
_SQLITE_OWN = "sqlite_"


@dataclass(frozen=True, slots=True)
class TableReport:
    """One table moved and checked: its rows, and the next id each side gives (None: no counter)."""

    name: str
    rows: int
    next_id: int | None


@dataclass(frozen=True, slots=True)
class Difference:
    """The first row in key order where the copy differs from the store."""

    table: str
    key: tuple[Any, ...]
    what: str

    def __str__(self) -> str:
        key = ", ".join(repr(k) for k in self.key)
        return f"table {self.table}, first differing row {key}: {self.what}"


Say = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- checks


def check_url(url: str) -> str:
    """The URL if it can name a destination: postgresql://, a host and a database, and no password in it
    (the password comes from --password-file, so it is never in the shell history or the process list)."""
    if not is_database_url(url):
        raise StoreError(f"--to {safe_database_url(url)!r}: not a postgresql:// URL")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise StoreError(f"--to {safe_database_url(url)!r}: not a valid URL") from None
    if parts.password is not None or "password" in parse_qs(parts.query):
        raise StoreError(
            "--to: the URL holds a password: remove it and name a file holding it (--password-file)"
        )
    if not parts.hostname or not parts.path.strip("/"):
        raise StoreError(
            f"--to {safe_database_url(url)!r}: needs a host and a database, e.g. postgresql://user@host/db"
        )
    return url


def read_password(path: str) -> str:
    """The password in `path`, read whole and trimmed, as `database.password_file` is."""
    try:
        with open(path, encoding="utf-8") as f:
            password = f.read().strip()
    except OSError as e:
        raise StoreError(f"--password-file: cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise StoreError(f"--password-file: {path} is not UTF-8 text") from None
    if not password:
        raise StoreError(f"--password-file: {path} is empty")
    return password


def check_source(path: str) -> None:
    """`path` is an SQLite store of deposit-watcher (opening anything else would make it one)."""
    if not os.path.isfile(path):
        raise StoreError(f"--from {path}: no such file")
    try:
        read_only = Path(path).absolute().as_uri() + "?mode=ro"  # as_uri escapes '?' and '#' in the name
        with contextlib.closing(sqlite3.connect(read_only, uri=True)) as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as e:
        raise StoreError(f"--from {path}: not an SQLite database ({e})") from None
    if version == 0 or "deposits" not in tables:
        raise StoreError(f"--from {path}: not a deposit-watcher store (no schema version, no deposits table)")


def take_daemon_lock(path: str) -> int:
    """The daemon's lock on the store, held until the move ends; refused while a daemon holds it."""
    try:
        return _take_lock(path)
    except StoreError:
        pid = ""
        with contextlib.suppress(OSError, ValueError):
            with open(path + ".lock", encoding="ascii") as f:
                pid = f" by process {int(f.read().strip())}"
        raise StoreError(
            f"{path} is in use by a running deposit-watcher (its lock {path}.lock is held{pid}): stop the "
            "daemon first (systemctl stop deposit-watcher), then run migrate-store again"
        ) from None


# ------------------------------------------------------------------------------------------- the move


async def migrate(
    source: str, url: str, password: str | None = None, say: Say = _stderr
) -> list[TableReport]:
    """Move the store at `source` into the empty database at `url`, checked; the per-table reports.
    Raises StoreError, with the destination as it was, on a refusal, an error or a difference."""
    check_url(url)
    check_source(source)
    lock = take_daemon_lock(source)
    try:
        store = await Store.open(source)  # brings the store to this program's schema first
        await store.close()
        reader = await _open_reader(source)
        try:
            conn = await _connect(url, password)
            try:
                return await _move(reader, conn, say)
            finally:
                with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    await conn.close()
        finally:
            await reader.close()
    except sqlite3.Error as e:  # the store locked by a CLI command for longer than the busy timeout, say
        raise StoreError(f"{source}: {_reason(e)}") from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        raise StoreError(f"{safe_database_url(url)}: {_reason(e)}; nothing was committed") from None
    finally:
        os.close(lock)


async def _open_reader(path: str) -> aiosqlite.Connection:
    reader = await aiosqlite.connect(path, isolation_level=None)
    await reader.execute("PRAGMA busy_timeout = 10000")
    await reader.execute("BEGIN IMMEDIATE")  # one snapshot, and no other writer until the end
    return reader


async def _connect(url: str, password: str | None) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(url, password=password, timeout=CONNECT_TIMEOUT_S)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
        raise StoreError(f"{safe_database_url(url)}: cannot connect: {_reason(e)}") from None


async def _move(reader: aiosqlite.Connection, conn: asyncpg.Connection, say: Say) -> list[TableReport]:
    await _check_tables(reader)
    await conn.execute(f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")
    try:
        await _check_empty(conn)
        await _create_schema(conn)
        layouts = {t.name: await _layout(reader, conn, t) for t in TABLES}
        copied = {t.name: await _copy(reader, conn, t, layouts[t.name], say) for t in TABLES}
        for t in TABLES:
            checked = await _check(reader, conn, t, layouts[t.name], say)
            if checked != copied[t.name]:  # a row changed under us cannot be: the store is locked
                raise StoreError(f"table {t.name}: {copied[t.name]:,} rows copied, {checked:,} checked")
        # Last: a counter, unlike the rows, is not undone by a rollback (see the module docstring).
        reports = [await _set_counter(reader, conn, t, copied[t.name]) for t in TABLES]
        await conn.execute("COMMIT")
        return reports
    except BaseException:
        if not conn.is_closed():
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await conn.execute("ROLLBACK")
        raise


async def _check_tables(reader: aiosqlite.Connection) -> None:
    """Every table of the store is one this command copies (a newer schema's table is never dropped)."""
    names = {
        r[0] for r in await reader.execute_fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    unknown = sorted(n for n in names - {t.name for t in TABLES} if not n.startswith(_SQLITE_OWN))
    if unknown:
        raise StoreError(f"the store has tables this program does not know how to move: {', '.join(unknown)}")


async def _check_empty(conn: asyncpg.Connection) -> None:
    """No table of the destination's schema holds a row (the schema version's row aside)."""
    tables = await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        " AND table_type = 'BASE TABLE' AND table_name != 'schema_version' ORDER BY table_name"
    )
    holding = []
    for (name,) in tables:
        if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {_ident(name)})"):
            holding.append(name)
    if holding:
        raise StoreError(
            f"the destination database is not empty: rows in {', '.join(holding)}; migrate-store fills only "
            "a new, empty database (createdb), so nothing there is mixed with or overwritten by the store"
        )


async def _create_schema(conn: asyncpg.Connection) -> None:
    """The store's schema at this program's version (as PgStore opens it), inside the transaction."""
    await conn.execute(VERSION_TABLE)
    version = await conn.fetchval("SELECT max(version) FROM schema_version") or 0
    if version > len(PG_MIGRATIONS):
        raise StoreError(
            f"the destination's schema version {version} is newer than this program knows "
            f"({len(PG_MIGRATIONS)}): upgrade deposit-watcher"
        )
    for script in PG_MIGRATIONS[version:]:
        await conn.execute(script)
    await conn.execute("DELETE FROM schema_version")
    await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", len(PG_MIGRATIONS))
    assert len(PG_MIGRATIONS) == len(MIGRATIONS), "the two backends' schemas have one version number"


@dataclass(frozen=True, slots=True)
class Layout:
    """A table's columns in SQLite's order (both sides have the same ones); which hold text (the key
    columns PostgreSQL must sort by their bytes, COLLATE "C", as SQLite does, for the streamed check) and
    which floats (where equal values may still differ: 0.0 and -0.0)."""

    columns: tuple[str, ...]
    text: frozenset[str]
    floats: frozenset[str] = frozenset()

    @property
    def float_positions(self) -> tuple[int, ...]:
        return tuple(n for n, c in enumerate(self.columns) if c in self.floats)

    def key_of(self, t: Table, row: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(row[self.columns.index(k)] for k in t.key)


async def _layout(reader: aiosqlite.Connection, conn: asyncpg.Connection, t: Table) -> Layout:
    mine = tuple(r[1] for r in await reader.execute_fetchall(f"PRAGMA table_info({_ident(t.name)})"))
    theirs = {
        name: kind
        for name, kind in await conn.fetch(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = $1",
            t.name,
        )
    }
    if set(mine) != set(theirs):
        raise StoreError(
            f"table {t.name}: the columns differ: SQLite {sorted(mine)}, PostgreSQL {sorted(theirs)}"
        )
    return Layout(
        mine,
        frozenset(name for name, kind in theirs.items() if kind == "text"),
        frozenset(name for name, kind in theirs.items() if kind == "double precision"),
    )


# ------------------------------------------------------------------------------------------- copy


async def _copy(
    reader: aiosqlite.Connection, conn: asyncpg.Connection, t: Table, layout: Layout, say: Say
) -> int:
    """Every row of the table, by one binary COPY fed from an SQLite cursor; the count copied."""
    total = await _count(reader, t)
    if t.trigger is not None:
        # Transactional (undone by a rollback): the trigger would raise the counter row by row, and a
        # counter, unlike a row, stays raised after a rollback. It is set once, after the check.
        await conn.execute(f"ALTER TABLE {_ident(t.name)} DISABLE TRIGGER {_ident(t.trigger)}")
    copied = 0
    last: tuple[Any, ...] = ()

    async def rows() -> AsyncIterator[tuple[Any, ...]]:
        nonlocal copied, last
        async for row in _sqlite_rows(reader, t, layout):
            last = row
            yield row
            copied += 1
            if total >= PROGRESS_ROWS and copied % PROGRESS_EVERY == 0:
                say(f"{t.name}: {copied:,} of {total:,} rows copied")

    try:
        await conn.copy_records_to_table(t.name, records=rows(), columns=list(layout.columns))
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ValueError, TypeError, OverflowError) as e:
        # The rows go in buffers: the one refused is the last one read or one shortly before it.
        near = f" at or before the row {', '.join(map(repr, layout.key_of(t, last)))}" if last else ""
        raise StoreError(
            f"table {t.name}: copying failed{near}: {_reason(e)}; nothing was committed"
        ) from None
    if t.trigger is not None:
        await conn.execute(f"ALTER TABLE {_ident(t.name)} ENABLE TRIGGER {_ident(t.trigger)}")
    if total >= PROGRESS_ROWS:
        say(f"{t.name}: {copied:,} rows copied")
    return copied


async def _count(reader: aiosqlite.Connection, t: Table) -> int:
    return await _sqlite_value(reader, f"SELECT count(*) FROM {_ident(t.name)}")


async def _sqlite_value(reader: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> int:
    rows = list(await reader.execute_fetchall(sql, params))
    return int(rows[0][0])


async def _sqlite_rows(
    reader: aiosqlite.Connection, t: Table, layout: Layout
) -> AsyncIterator[tuple[Any, ...]]:
    """The table's rows in key order (SQLite compares text by its bytes), BATCH_ROWS at a time."""
    order = ", ".join(_ident(k) for k in t.key)
    cursor = await reader.execute(
        f"SELECT {_column_list(layout.columns)} FROM {_ident(t.name)} ORDER BY {order}"
    )
    try:
        while batch := await cursor.fetchmany(BATCH_ROWS):
            for row in batch:
                yield tuple(row)
    finally:
        await cursor.close()


async def _pg_rows(conn: asyncpg.Connection, t: Table, layout: Layout) -> AsyncIterator[tuple[Any, ...]]:
    """The copy's rows in the same order: text keys by their bytes (UTF-8 bytes order as code points do)."""
    order = ", ".join(_ident(k) + (' COLLATE "C"' if k in layout.text else "") for k in t.key)
    query = f"SELECT {_column_list(layout.columns)} FROM {_ident(t.name)} ORDER BY {order}"
    async for record in conn.cursor(query, prefetch=BATCH_ROWS):
        yield tuple(record)


# ------------------------------------------------------------------------------------------- check


async def _check(
    reader: aiosqlite.Connection, conn: asyncpg.Connection, t: Table, layout: Layout, say: Say
) -> int:
    """The rows checked; a StoreError naming the first difference."""
    big = await _count(reader, t) >= PROGRESS_ROWS
    progress = (lambda n: say(f"{t.name}: {n:,} rows checked")) if big else None
    checked, difference = await first_difference(
        t, layout, _sqlite_rows(reader, t, layout), _pg_rows(conn, t, layout), progress
    )
    if difference is not None:
        raise StoreError(f"the copy differs from the store: {difference}; nothing was committed")
    return checked


async def first_difference(
    t: Table,
    layout: Layout,
    store_rows: AsyncIterator[tuple[Any, ...]],
    copy_rows: AsyncIterator[tuple[Any, ...]],
    progress: Callable[[int], None] | None = None,
) -> tuple[int, Difference | None]:
    """Walk both sides in key order: the rows that matched, and the first difference (None: identical).
    A key only one side has is a difference; values compare exactly (`canonical`). Equal rows of equal
    types take a fast path (Python's == on the tuples; the floats' bits checked apart): 10,000,000 rows
    through `canonical` value by value took minutes."""
    matched = 0
    floats = layout.float_positions
    mine, theirs = await anext(store_rows, None), await anext(copy_rows, None)
    while mine is not None and theirs is not None:
        same = (
            mine == theirs
            and list(map(type, mine)) == list(map(type, theirs))
            and all(mine[n] is None or mine[n].hex() == theirs[n].hex() for n in floats)
        )
        if not same and (difference := _difference(t, layout, mine, theirs)) is not None:
            return matched, difference
        matched += 1
        if progress is not None and matched % PROGRESS_EVERY == 0:
            progress(matched)
        mine, theirs = await anext(store_rows, None), await anext(copy_rows, None)
    if mine is not None:
        return matched, Difference(t.name, layout.key_of(t, mine), "missing from the copy")
    if theirs is not None:
        return matched, Difference(t.name, layout.key_of(t, theirs), "in the copy only, not in the store")
    return matched, None


def _difference(t: Table, layout: Layout, mine: Sequence[Any], theirs: Sequence[Any]) -> Difference | None:
    """How two rows met at the same step differ: another key (the smaller one is missing on the other
    side), or the first column whose values differ; None when they are the same after all (NaN)."""
    key, their_key = layout.key_of(t, mine), layout.key_of(t, theirs)
    if key < their_key:
        return Difference(t.name, key, "missing from the copy")
    if their_key < key:
        return Difference(t.name, their_key, "in the copy only, not in the store")
    for column, a, b in zip(layout.columns, mine, theirs, strict=True):
        if canonical(a) != canonical(b):
            return Difference(t.name, key, f"{column} is {_shown(a)} in the store, {_shown(b)} in the copy")
    return None


def canonical(value: Any) -> tuple[str, Any]:
    """A value as the check compares it: its kind and its exact content (a float by its bits, so 0.0 and
    -0.0 differ and nothing is rounded; bytes as bytes whatever buffer type a driver gives)."""
    if isinstance(value, float):
        return "float", value.hex()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes", bytes(value)
    return type(value).__name__, value


def _shown(value: Any) -> str:
    text = repr(bytes(value) if isinstance(value, (bytearray, memoryview)) else value)
    return text if len(text) <= 80 else text[:77] + "..."


# ------------------------------------------------------------------------------------------- id counters


async def _set_counter(
    reader: aiosqlite.Connection, conn: asyncpg.Connection, t: Table, rows: int
) -> TableReport:
    """The table's counter set so that PostgreSQL's next id is SQLite's: max(sqlite_sequence, largest
    id) + 1 (an AUTOINCREMENT table) or largest id + 1; then both are read back and compared."""
    if t.counter is None:
        return TableReport(t.name, rows, None)
    [column] = t.key
    last = await _sqlite_value(reader, f"SELECT coalesce(max({_ident(column)}), 0) FROM {_ident(t.name)}")
    if t.autoincrement:
        counted = "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = ?"
        last = max(last, await _sqlite_value(reader, counted, (t.name,)))
    # Never used (last 0): the sequence starts over at 1, whatever an earlier attempt left in it.
    await conn.execute(
        "SELECT setval($1::regclass, greatest($2::bigint, 1), $2::bigint >= 1)", t.counter, last
    )
    given = await conn.fetchval(
        f"SELECT greatest(coalesce(pg_sequence_last_value($1::regclass), 0),"
        f" coalesce((SELECT max({_ident(column)}) FROM {_ident(t.name)}), 0)) + 1",
        t.counter,
    )
    if given != last + 1:
        raise StoreError(f"table {t.name}: the next id would be {given} on PostgreSQL, {last + 1} on SQLite")
    return TableReport(t.name, rows, last + 1)


# ------------------------------------------------------------------------------------------- helpers


def _ident(name: str) -> str:
    """A table or column name of the schema quoted as an identifier (they are plain names)."""
    return '"' + name.replace('"', '""') + '"'


def _column_list(columns: Sequence[str]) -> str:
    return ", ".join(_ident(c) for c in columns)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


# ------------------------------------------------------------------------------------------- command


def run(args: argparse.Namespace) -> int:
    """`migrate-store`: the move, then a summary per table on stdout (progress goes to stderr)."""
    url = check_url(args.url)
    password = read_password(args.password_file) if args.password_file else None
    reports = asyncio.run(migrate(args.source, url, password))
    print(f"moved {args.source} to {safe_database_url(url)}; every row checked, identical:")
    width = max(len(r.name) for r in reports)
    print(f"  {'TABLE'.ljust(width)}  {'ROWS':>12}  NEXT ID")
    for r in reports:
        next_id = "" if r.next_id is None else f"{r.next_id:,}"
        print(f"  {r.name.ljust(width)}  {r.rows:>12,}  {next_id}".rstrip())
    return 0
