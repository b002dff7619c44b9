"""`deposit-watcher migrate-store`: an SQLite store moved into PostgreSQL, checked row for row.

A store a real daemon filled (against anvil, with both kinds of integration: addresses of every source,
deposits of every status, callbacks with failed attempts still pending, payments and their webhooks,
events, derivations, seen clocks, watch changes) is moved while the daemon is stopped; then the daemon,
started on the PostgreSQL URL, goes on from the store's cursor, with the next ids, delivering the pending
callbacks once. The refusals (a running daemon, a database not empty, a bad URL, a password in it) and
the check (a copy corrupted by a trigger in the destination; the comparison on changed rows) run on a
smaller store written through the store's own methods.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from chains.base import BlockRef
from devnet import evm_tools as evm
from devnet.anvil import AnvilNode
from devnet.postgres import SUPERUSER, PostgresServer
from devnet.receiver import Receiver
from tests.daemon_process import DaemonProcess, free_port, write_config
from tests.test_derivation import account
from tests.test_store import _schema_2_store_with_a_delivered_and_a_pending_callback
from watcher import migrate_store
from watcher.apikeys import new_api_key
from watcher.errors import StoreError
from watcher.migrate_store import TABLES, Layout, Table, canonical, first_difference, migrate
from watcher.model import AddressSource, AttemptResult, DepositStatus
from watcher.store import MIGRATIONS, NewAddress, Store

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------- helpers


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`deposit-watcher ARGS` as an operator runs it (a process of its own)."""
    return subprocess.run(
        [sys.executable, "-m", "watcher", *args], capture_output=True, text=True, timeout=300, cwd=REPO
    )


async def small_store(path: Path) -> None:
    """A store written through the store's methods: a cursor and blocks, two addresses, deposits with a
    wei amount beyond 64 bits, a callback with a failed attempt, a seen clock; the deposit counter raised
    above the largest id (an id offset), as SQLite's AUTOINCREMENT keeps it."""
    store = await Store.open(str(path), id_offset=1000)
    try:
        await store.sync_addresses(
            "eth",
            [
                NewAddress("eth", "ETH", b"\x01" * 20, "0x" + "01" * 20, "c-1"),
                NewAddress("eth", "ETH", b"\x02" * 20, "0x" + "02" * 20, "c-\u00e9"),
            ],
        )
        async with store.transaction() as tx:
            await tx.set_cursor("eth", BlockRef(7, "0xh7", "0xh6"))
            await tx.add_blocks("eth", [BlockRef(6, "0xh6", "0xh5"), BlockRef(7, "0xh7", "0xh6")], keep=10)
            first = await tx.insert_deposit(
                chain="eth", currency="ETH", address_id=1001, txid="0xt1", tx_index=-1,
                amount=123_456_789 * 10**30 + 1, sender="0xs", nonce=4, inputs=(), now=1.1,
            )  # fmt: skip
            await tx.insert_deposit(
                chain="eth", currency="ETH", address_id=1002, txid="0xt2", tx_index=-1, amount=5,
                sender=None, nonce=None, inputs=(), now=0.1 + 0.2,
            )  # fmt: skip
            outbox_id = await tx.enqueue_callback(first, DepositStatus.NOT_CONFIRMED, b'{"id": 1}\x00', 2.5)
            await tx.save_seen_clock("eth", None, 3.25)
        await store.record_attempts([(AttemptResult(outbox_id, 3.0, 12.5, 500, "HTTP 500", "no"), 63.0)])
    finally:
        await store.close()


async def pg_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


async def pg_tables(url: str) -> list[str]:
    rows = await pg_rows(
        url,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY 1",
    )
    return [r[0] for r in rows]


async def sequences(url: str) -> dict[str, Any]:
    rows = await pg_rows(url, "SELECT sequencename, last_value FROM pg_sequences ORDER BY 1")
    return dict(rows)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- the check


async def _rows(rows: Sequence[tuple[Any, ...]]) -> AsyncIterator[tuple[Any, ...]]:
    for row in rows:
        yield row


DEPOSITS = Table("deposits", ("id",))
LAYOUT = Layout(("id", "amount", "body", "at"), frozenset({"amount"}), frozenset({"at"}))
ROWS = [(1, "100000000000000000000000001", b"\x00{}", 0.1 + 0.2), (2, "5", b"", -0.0), (3, "7", b"x", None)]


@pytest.mark.parametrize(
    ("copy", "found"),
    [
        (ROWS, None),
        ([ROWS[0], (2, "5", b"", 0.0), ROWS[2]], "table deposits, first differing row 2: at is -0.0"),
        ([(1, "100000000000000000000000001", b"\x00{}", 0.3), *ROWS[1:]], "row 1: at is 0.30000000000000004"),
        ([(1, "100000000000000000000000002", *ROWS[0][2:]), *ROWS[1:]], "row 1: amount is"),
        ([ROWS[0], (2, 5, b"", -0.0), ROWS[2]], "row 2: amount is '5' in the store, 5 in the copy"),
        ([ROWS[0], (2, "5", "", -0.0), ROWS[2]], "row 2: body is b'' in the store, '' in the copy"),
        ([(1, *ROWS[0][1:3], 1), *ROWS[1:]], "row 1: at is"),  # an int where the float was
        ([ROWS[0], ROWS[2]], "row 2: missing from the copy"),
        (ROWS[:2], "row 3: missing from the copy"),
        ([*ROWS, (4, "1", b"", None)], "row 4: in the copy only"),
        ([ROWS[0], (2, "5", b"", -0.0), (2.5, "1", b"", None), ROWS[2]], "row 2.5: in the copy only"),
    ],
)
async def test_the_check_finds_the_first_differing_row(
    copy: list[tuple[Any, ...]], found: str | None
) -> None:
    matched, difference = await first_difference(DEPOSITS, LAYOUT, _rows(ROWS), _rows(copy))
    if found is None:
        assert (matched, difference) == (3, None)
    else:
        assert difference is not None and found in str(difference), difference
        assert "table deposits, first differing row" in str(difference)


def test_floats_compare_by_their_bits_and_bytes_by_their_content() -> None:
    assert canonical(0.1 + 0.2) != canonical(0.3)
    assert canonical(0.0) != canonical(-0.0)
    assert canonical(float("nan")) == canonical(float("nan"))
    assert canonical(memoryview(b"ab")) == canonical(b"ab") != canonical("ab")
    assert canonical(1) != canonical(1.0) and canonical(1) != canonical(True)


def test_every_table_of_the_schema_is_moved() -> None:
    """A table a later migration adds must be added to TABLES (the command also refuses a store with a
    table it does not know, rather than leave it behind)."""
    with sqlite3.connect(":memory:") as db:
        from watcher.store import _statements

        for script in MIGRATIONS:
            for statement in _statements(script):
                db.execute(statement)
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert names - {"sqlite_sequence"} == {t.name for t in TABLES}


async def test_a_store_with_a_table_this_program_does_not_know_is_refused(
    tmp_path: Path, pg_url: str
) -> None:
    """A table no migration of this version made (a newer version's, or one added by hand) is never left
    behind silently; SQLite's own statistics tables (ANALYZE) are not the store's and do not count."""
    source = tmp_path / "w.sqlite3"
    await small_store(source)
    with contextlib.closing(sqlite3.connect(source)) as db:
        db.execute("ANALYZE")
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        db.commit()
    refused = cli("migrate-store", "--from", str(source), "--to", pg_url)
    assert refused.returncode == 1
    assert "the store has tables this program does not know how to move: notes" in refused.stderr
    assert await pg_tables(pg_url) == []


# ------------------------------------------------------------------------------------------- a small store


async def test_a_small_store_moves_exactly_with_its_id_counters(tmp_path: Path, pg_url: str) -> None:
    source = tmp_path / "w.sqlite3"
    await small_store(source)
    done = cli("migrate-store", "--from", str(source), "--to", pg_url)
    assert done.returncode == 0, done.stderr
    assert "every row checked, identical" in done.stdout
    lines = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[2:]}
    assert (
        lines["deposits"] == ["2", "1,003"]
        and lines["addresses"] == ["2"]
        and lines["attempts"] == ["1", "2"]
    )
    assert lines["blocks"] == ["2"] and lines["payments"] == ["0", "1"]
    pg = await Store.open(pg_url)
    sqlite = await Store.open(str(source))
    try:
        assert await pg.deposits() == await sqlite.deposits()
        assert await pg.outbox_entries() == await sqlite.outbox_entries()
        [entry] = await sqlite.outbox_entries()
        assert await pg.attempts(entry.id) == await sqlite.attempts(entry.id) != []
        assert await pg.seen_clocks() == await sqlite.seen_clocks()
        assert await pg.chain_state("eth") == await sqlite.chain_state("eth")
        async with pg.transaction() as tx:  # the next ids follow SQLite's, AUTOINCREMENT's counter included
            assert await tx.next_deposit_id() == 1003
        async with sqlite.transaction() as tx:
            assert await tx.next_deposit_id() == 1003
    finally:
        await pg.close()
        await sqlite.close()
    [(amount,)] = await pg_rows(pg_url, "SELECT amount FROM deposits WHERE id = 1001")
    assert amount == str(123_456_789 * 10**30 + 1)  # text, as in SQLite
    [(body,)] = await pg_rows(pg_url, "SELECT body FROM outbox")
    assert body == b'{"id": 1}\x00'
    [(first_seen,)] = await pg_rows(pg_url, "SELECT first_seen_at FROM deposits WHERE id = 1002")
    assert first_seen.hex() == (0.1 + 0.2).hex()


async def test_a_file_name_with_uri_characters_is_read_as_named(tmp_path: Path, pg_url: str) -> None:
    source = tmp_path / "shop #1?mode=rw %20.sqlite3"
    await small_store(source)
    done = cli("migrate-store", "--from", str(source), "--to", pg_url)
    assert done.returncode == 0, done.stderr


async def test_a_store_of_an_earlier_schema_is_upgraded_then_moved(tmp_path: Path, pg_url: str) -> None:
    """A schema-2 store (before payments: its outbox rebuilt by the upgrade, ids kept) is brought to this
    version's schema, then moved with its outbox ids and their attempts."""
    source = tmp_path / "v2.sqlite3"
    _schema_2_store_with_a_delivered_and_a_pending_callback(source)
    done = cli("migrate-store", "--from", str(source), "--to", pg_url)
    assert done.returncode == 0, done.stderr
    with contextlib.closing(sqlite3.connect(source)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert await pg_rows(pg_url, "SELECT id, state, payment_id FROM outbox ORDER BY id") == [
        (40, "delivered", None),
        (41, "pending", None),
    ]
    assert await pg_rows(pg_url, "SELECT outbox_id, http_status FROM attempts") == [(40, 200)]
    store = await Store.open(pg_url)
    try:
        async with store.transaction() as tx:
            assert await tx.enqueue_callback(3, DepositStatus.CONFIRMED, b"{}", 5.0) == 42
    finally:
        await store.close()


async def test_a_second_run_refuses_the_filled_destination_naming_its_tables(
    tmp_path: Path, pg_url: str
) -> None:
    source = tmp_path / "w.sqlite3"
    await small_store(source)
    assert cli("migrate-store", "--from", str(source), "--to", pg_url).returncode == 0
    again = cli("migrate-store", "--from", str(source), "--to", pg_url)
    assert again.returncode == 1 and again.stdout == ""
    assert (
        "error: the destination database is not empty: rows in addresses, attempts, blocks, chains"
        in again.stderr
    )


async def test_a_schema_only_destination_is_filled(tmp_path: Path, pg_url: str) -> None:
    """A database a daemon created the schema in (and wrote nothing else) is empty enough."""
    store = await Store.open(pg_url)
    await store.close()
    source = tmp_path / "w.sqlite3"
    await small_store(source)
    done = cli("migrate-store", "--from", str(source), "--to", pg_url)
    assert done.returncode == 0, done.stderr


async def test_a_running_daemon_holds_the_store_and_the_move_is_refused(tmp_path: Path, pg_url: str) -> None:
    source = tmp_path / "w.sqlite3"
    await small_store(source)
    daemon = await Store.open(str(source), exclusive=True)  # the daemon's lock, as `run` takes it
    try:
        refused = cli("migrate-store", "--from", str(source), "--to", pg_url)
    finally:
        await daemon.close()
    assert refused.returncode == 1
    assert f"{source} is in use by a running deposit-watcher (its lock {source}.lock is held by process " in (
        refused.stderr
    )
    assert "stop the daemon first" in refused.stderr
    assert await pg_tables(pg_url) == []  # not even the schema


@pytest.mark.parametrize(
    ("to", "message"),
    [
        ("postgresql://watcher:hunter2@127.0.0.1/db", "the URL holds a password: remove it"),
        ("postgresql://watcher@127.0.0.1/db?password=hunter2", "the URL holds a password: remove it"),
        ("mysql://watcher@127.0.0.1/db", "not a postgresql:// URL"),
        ("postgresql://watcher@127.0.0.1", "needs a host and a database"),
        ("postgresql://watcher@127.0.0.1:99999/db", "not a valid URL"),
    ],
)
def test_a_bad_url_is_refused_without_showing_a_password(tmp_path: Path, to: str, message: str) -> None:
    source = tmp_path / "w.sqlite3"
    asyncio.run(small_store(source))
    refused = cli("migrate-store", "--from", str(source), "--to", to)
    assert refused.returncode == 1 and message in refused.stderr, refused.stderr
    assert "hunter2" not in refused.stderr + refused.stdout


async def test_the_password_file_is_what_a_password_protected_role_logs_in_with(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """A role the server asks a password of (scram-sha-256 in pg_hba.conf for it alone): the command logs
    in with the file's password; a wrong one is refused in one line that shows neither password."""
    hba = postgres.data_dir / "pg_hba.conf"
    hba.write_text("host all migrating_owner 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    postgres.psql("SELECT pg_reload_conf()")
    postgres.psql("CREATE ROLE migrating_owner LOGIN PASSWORD 'right-horse-battery'")
    postgres.psql("CREATE DATABASE migrated OWNER migrating_owner")
    url = f"postgresql://migrating_owner@127.0.0.1:{postgres.port}/migrated"
    source = tmp_path / "w.sqlite3"
    await small_store(source)
    (tmp_path / "wrong").write_text("wrong-staple\n")
    refused = cli(
        "migrate-store", "--from", str(source), "--to", url, "--password-file", str(tmp_path / "wrong")
    )
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1
    assert refused.stderr.startswith(f"error: {url}: cannot connect: ") and "password" in refused.stderr
    assert "wrong-staple" not in refused.stderr
    (tmp_path / "right").write_text("right-horse-battery\n")
    done = cli(
        "migrate-store", "--from", str(source), "--to", url, "--password-file", str(tmp_path / "right")
    )
    assert done.returncode == 0, done.stderr
    assert "right-horse-battery" not in done.stdout + done.stderr
    assert await pg_rows(postgres.url("migrated"), "SELECT count(*) FROM deposits") == [(2,)]


async def test_a_role_that_may_not_create_the_schema_is_one_line(
    tmp_path: Path, postgres: PostgresServer, pg_url: str
) -> None:
    """A role that is not the database's owner may not create tables in its public schema (PostgreSQL
    15): the server's refusal in one line, nothing left behind."""
    postgres.psql("CREATE ROLE not_the_owner LOGIN")
    url = pg_url.replace(f"{SUPERUSER}@", "not_the_owner@")
    source = tmp_path / "w.sqlite3"
    await small_store(source)
    refused = cli("migrate-store", "--from", str(source), "--to", url)
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert refused.stderr.startswith(
        f"error: {url}: InsufficientPrivilegeError: permission denied for schema"
    )
    assert refused.stderr.rstrip().endswith("; nothing was committed")
    assert await pg_tables(pg_url) == []


def test_the_store_locked_by_another_writer_is_one_line(tmp_path: Path, pg_url: str) -> None:
    """A CLI command in the middle of a long write holds SQLite's write lock: after the busy timeout the
    command says so in one line (no traceback) and the destination is untouched."""
    source = tmp_path / "w.sqlite3"
    asyncio.run(small_store(source))
    with contextlib.closing(sqlite3.connect(source, isolation_level=None)) as writer:
        writer.execute("BEGIN IMMEDIATE")
        refused = cli("migrate-store", "--from", str(source), "--to", pg_url)
        writer.execute("ROLLBACK")
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert refused.stderr.startswith(f"error: {source}: OperationalError: database is locked")
    assert asyncio.run(pg_tables(pg_url)) == []


def test_no_server_at_the_url_is_one_line_naming_it(tmp_path: Path) -> None:
    source = tmp_path / "w.sqlite3"
    asyncio.run(small_store(source))
    (tmp_path / "pw").write_text("hunter2\n")
    url = f"postgresql://watcher@127.0.0.1:{free_port()}/deposits"  # nothing listens there
    refused = cli(
        "migrate-store", "--from", str(source), "--to", url, "--password-file", str(tmp_path / "pw")
    )
    assert refused.returncode == 1
    assert (
        refused.stderr.startswith(f"error: {url}: cannot connect: ") and len(refused.stderr.splitlines()) == 1
    )
    assert "hunter2" not in refused.stderr


def test_a_missing_or_foreign_source_is_refused_and_never_created(tmp_path: Path, pg_url: str) -> None:
    missing = tmp_path / "nothing.sqlite3"
    refused = cli("migrate-store", "--from", str(missing), "--to", pg_url)
    assert refused.returncode == 1 and "no such file" in refused.stderr and not missing.exists()
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    refused = cli("migrate-store", "--from", str(other), "--to", pg_url)
    assert refused.returncode == 1 and "not a deposit-watcher store" in refused.stderr
    (tmp_path / "text").write_text("hello")
    refused = cli("migrate-store", "--from", str(tmp_path / "text"), "--to", pg_url)
    assert refused.returncode == 1 and "not an SQLite database" in refused.stderr


async def test_a_copy_corrupted_on_the_way_is_found_and_nothing_is_committed(
    tmp_path: Path, postgres: PostgresServer, pg_url: str
) -> None:
    """A trigger in the destination changes one amount as it is written: the check names the table and
    the row, the command exits 1, and the destination keeps its schema, no row, and its counters."""
    store = await Store.open(pg_url)  # the schema, then a trigger that tampers with one deposit
    await store.close()
    database = pg_url.rsplit("/", 1)[1]
    postgres.psql(
        "CREATE FUNCTION tamper() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF NEW.id = 1002 THEN NEW.amount := '6'; END IF; RETURN NEW; END $$;"
        " CREATE TRIGGER tamper BEFORE INSERT ON deposits FOR EACH ROW EXECUTE FUNCTION tamper();",
        database,
    )
    before = await sequences(pg_url)
    source = tmp_path / "w.sqlite3"
    await small_store(source)
    failed = cli("migrate-store", "--from", str(source), "--to", pg_url)
    assert failed.returncode == 1 and failed.stdout == ""
    assert (
        "error: the copy differs from the store: table deposits, first differing row 1002: amount is '5'"
        " in the store, '6' in the copy; nothing was committed"
    ) in failed.stderr
    for table in ("deposits", "addresses", "chains", "outbox", "attempts"):
        assert await pg_rows(pg_url, f"SELECT * FROM {table}") == []
    assert await sequences(pg_url) == before
    # Without the tamperer the same destination takes the store.
    postgres.psql("DROP TRIGGER tamper ON deposits", database)
    assert cli("migrate-store", "--from", str(source), "--to", pg_url).returncode == 0


async def test_text_keys_are_compared_in_byte_order_whatever_the_databases_collation(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """A database whose default collation sorts 'alpha' before 'Zeta' (ICU, English), where SQLite sorts
    by bytes ('Z' < 'a'): the check walks both sides in the same order, so nothing is reported."""
    postgres.psql(
        "CREATE DATABASE icu_english TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'"
    )
    url = postgres.url("icu_english")
    assert [
        r[0] for r in await pg_rows(url, "SELECT x FROM (VALUES ('Zeta'), ('alpha')) v(x) ORDER BY x")
    ] == [
        "alpha",
        "Zeta",
    ]
    source = tmp_path / "w.sqlite3"
    await small_store(source)
    store = await Store.open(str(source))
    try:
        async with store.transaction() as tx:
            for name in ("Zeta", "alpha", "\u00e9t\u00e9", "Beta"):
                await tx.set_cursor(name, BlockRef(1, "0xh1", "0xh0"))
    finally:
        await store.close()
    reports = await migrate(str(source), url, say=lambda line: None)
    assert {r.name: r.rows for r in reports}["chains"] == 5


async def test_a_big_table_moves_batch_by_batch_with_progress(tmp_path: Path, pg_url: str) -> None:
    """600,000 imported addresses: copied and checked in a stream, with progress lines as it goes."""
    source = tmp_path / "w.sqlite3"
    await small_store(source)
    store = await Store.open(str(source))
    try:
        rows = [
            NewAddress(
                "eth", "ETH", n.to_bytes(20, "big"), f"0x{n:040x}", f"c{n}", source=AddressSource.IMPORT
            )
            for n in range(10, 600_010)
        ]
        assert await store.import_addresses(rows, now=5.0) == (600_000, 0)
    finally:
        await store.close()
    said: list[str] = []
    reports = await migrate(str(source), pg_url, say=said.append)
    assert {r.name: r.rows for r in reports}["addresses"] == 600_002
    assert said == [
        "addresses: 500,000 of 600,002 rows copied",
        "addresses: 600,002 rows copied",
        "addresses: 500,000 rows checked",
    ]
    [(count, last)] = await pg_rows(pg_url, "SELECT count(*), max(id) FROM addresses")
    assert (count, last) == (600_002, 601_002)


async def test_a_table_is_streamed_not_held_in_memory(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy and the check hold a batch of rows at a time: with batches of 1,000 rows, the Python
    memory allocated at the peak of moving 100,000 addresses stays a small fraction of what the table's
    rows take as Python objects (measured here on the same rows: a store loaded whole would exceed it)."""
    source = tmp_path / "w.sqlite3"
    await small_store(source)
    store = await Store.open(str(source))
    try:
        rows = [
            NewAddress(
                "eth", "ETH", n.to_bytes(20, "big"), f"0x{n:040x}", f"c{n}", source=AddressSource.IMPORT
            )
            for n in range(10, 100_010)
        ]
        await store.import_addresses(rows, now=5.0)
    finally:
        await store.close()
    del rows
    with sqlite3.connect(source) as db:
        tracemalloc.start()
        whole = db.execute("SELECT * FROM addresses").fetchall()
        table_size = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del whole
    monkeypatch.setattr(migrate_store, "BATCH_ROWS", 1_000)
    tracemalloc.start()
    try:
        await migrate(str(source), pg_url, say=lambda line: None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert table_size > 20_000_000, table_size
    assert peak < table_size / 5, (peak, table_size)


async def test_a_value_postgresql_cannot_hold_stops_the_copy_naming_the_table(
    tmp_path: Path, pg_url: str
) -> None:
    """SQLite keeps a NUL character in text; PostgreSQL's text cannot hold one: the copy stops with the
    table, the row and the server's reason, and leaves the destination as it was (no schema even)."""
    source = tmp_path / "w.sqlite3"
    await small_store(source)
    store = await Store.open(str(source))
    try:
        await store.sync_addresses(
            "eth", [NewAddress("eth", "ETH", b"\x03" * 20, "0x" + "03" * 20, "c-\x00")]
        )
    finally:
        await store.close()
    failed = cli("migrate-store", "--from", str(source), "--to", pg_url)
    assert failed.returncode == 1 and len(failed.stderr.splitlines()) == 1, failed.stderr
    assert failed.stderr.startswith("error: table addresses: copying failed at or before the row 1003: ")
    assert failed.stderr.rstrip().endswith("; nothing was committed")
    assert await pg_tables(pg_url) == []


async def test_the_api_refuses_a_destination_with_a_newer_schema(tmp_path: Path, pg_url: str) -> None:
    store = await Store.open(pg_url)
    await store.close()
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("UPDATE schema_version SET version = version + 1")
    finally:
        await conn.close()
    source = tmp_path / "w.sqlite3"
    await small_store(source)
    with pytest.raises(StoreError, match="newer than this program knows"):
        await migrate(str(source), pg_url, say=lambda line: None)


# ------------------------------------------------------------------------------------------- a daemon's store

SHOP, ORDERS = "3f0c1b5e-2d4a-4e6f-8a9b-0c1d2e3f4a5b", "8b7a6c5d-4e3f-4a2b-9c1d-0e9f8a7b6c5d"
KEY, SECRET, HOOK_SECRET = "shop-key", "migrate-secret", "whsec-migrate"
API_KEY, API_HASH = new_api_key(live=False)
MIN_CONF = 3
EVENTS = ["payment_linked", "payment_completed", "payment_abandoned", "payment_canceled"]


def daemon_config(
    database: Any, anvil: AnvilNode, rx: Receiver, hooks: Receiver, start: int
) -> dict[str, Any]:
    acct = evm.accounts(anvil.url)
    retry = {"timeout_s": 2, "retry_schedule_min": [0.05] * 40}  # every 3 s: still pending after the move
    return {
        "network": "regtest",
        "database": database,
        "status": {"listen": f"127.0.0.1:{free_port()}"},
        "api": {"listen": f"127.0.0.1:{free_port()}"},
        "log": {"format": "json", "level": "debug"},
        "integrations": [
            {"id": SHOP, "name": "shop", "api_keys": [API_HASH.line()],
             "callback": {"callback_url": rx.url, "key": KEY, "secret": SECRET, **retry},
             "public_keys": {"ethereum": account("m/44h/60h/0h")}},
            {"id": ORDERS, "name": "orders", "payments": {"grace_s": 5},
             "callback": {"callback_url": hooks.url, "format": "coinskro", "secret": HOOK_SECRET,
                          "events": EVENTS, **retry},
             "public_keys": {"ethereum": account("m/44h/60h/1h")}},
        ],
        "chains": {
            "ethereum": {
                "adapter": "evm", "rpc_url": anvil.url, "chain_id": 31337, "poll_interval_s": 0.2,
                "start_height": start, "currencies": {"ETH": {"min_confirmations": MIN_CONF}},
            }
        },
        "addresses": [{"currency": "ETH", "address": acct[1], "foreign_id": "customer-config"}],
    }  # fmt: skip


async def api(config: dict[str, Any], method: str, path: str) -> int:
    url = f"http://{config['api']['listen']}{path}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.request(method, url, headers={"Authorization": f"Bearer {API_KEY}"}) as r:
            return r.status


def cli_json(*args: str) -> Any:
    done = cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def wait_until(what: str, predicate: Any, daemon: DaemonProcess, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{daemon.log()}"
        await asyncio.sleep(0.1)


def deliveries(rx: Receiver, deposit_id: int, status: str) -> int:
    return sum(1 for r in rx.delivered if (r.body.get("id"), r.body.get("status")) == (deposit_id, status))


def failures(rx: Receiver, deposit_id: int) -> int:
    return sum(1 for r in rx.requests if r.body.get("id") == deposit_id and r.status_code_answered == 500)


def has_request(rx: Receiver, txid: str) -> bool:
    return any(r.body and r.body["transactions"][0]["txid"] == txid for r in rx.requests)


def by_deposit(rx: Receiver, txid: str) -> int:
    ids = {r.body["id"] for r in rx.requests if r.body and r.body["transactions"][0]["txid"] == txid}
    assert len(ids) == 1, ids
    return ids.pop()  # type: ignore[no-any-return]


def table_facts(path: Path) -> dict[str, Any]:
    """What the store holds, read directly: the proof that every kind of row is in what is moved."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        one = lambda sql: db.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "sources": {r[0] for r in db.execute("SELECT DISTINCT source FROM addresses")},
            "statuses": {r[0] for r in db.execute("SELECT DISTINCT status FROM deposits")},
            "outbox": {r[0] for r in db.execute("SELECT DISTINCT state FROM outbox")},
            "failed_attempts": one("SELECT count(*) FROM attempts WHERE http_status = 500"),
            "webhooks": one("SELECT count(*) FROM outbox WHERE payment_id IS NOT NULL"),
            **{
                table: one(f"SELECT count(*) FROM {table}")
                for table in (
                    "payments",
                    "events",
                    "derivations",
                    "public_keys",
                    "seen_clocks",
                    "watch_changes",
                    "blocks",
                )
            },
            "cursor": one("SELECT cursor_height FROM chains WHERE name = 'ethereum'"),
            "last_deposit": one("SELECT max(id) FROM deposits"),
        }


@pytest.mark.timeout(600)
async def test_a_daemons_store_moves_and_the_daemon_goes_on_from_postgresql(
    anvil: AnvilNode, pg_url: str, tmp_path: Path
) -> None:
    url, acct = anvil.url, evm.accounts(anvil.url)
    evm.set_automine(url, False)  # blocks only when the test mines them: confirmations are counted here
    source = tmp_path / "watcher.sqlite3"
    try:
        async with (
            Receiver(key=KEY, secret=SECRET) as rx,
            Receiver(secret=HOOK_SECRET, format="coinskro") as hooks,
        ):
            config = daemon_config(str(source), anvil, rx, hooks, evm.head_height(url) + 1)
            path = str(write_config(tmp_path / "sqlite.yaml", config))
            daemon = DaemonProcess(
                Path(path), int(config["status"]["listen"].split(":")[1]), tmp_path / "a.log"
            )
            daemon.start()
            try:
                await daemon.wait_live()
                await wait_ready(daemon)
                ids = await fill(path, config, anvil, rx, hooks, daemon)
                refused = cli("migrate-store", "--from", str(source), "--to", pg_url)
                assert refused.returncode == 1 and "in use by a running deposit-watcher" in refused.stderr
                assert await pg_tables(pg_url) == []
            finally:
                assert daemon.stop() == 0, daemon.log()
            facts = table_facts(source)
            assert facts["sources"] == {"config", "api", "import", "payment"}
            assert facts["statuses"] == {"not_confirmed", "confirmed", "cancelled"}
            assert {"pending", "delivered"} <= facts["outbox"]
            assert facts["failed_attempts"] >= 2 and facts["webhooks"] >= 2 and facts["blocks"] > 0
            for table in ("payments", "events", "derivations", "public_keys", "seen_clocks", "watch_changes"):
                assert facts[table] >= 1, (table, facts)

            (tmp_path / "pgpass").write_text("not-needed-on-a-trusting-server\n")
            moved = cli(
                "migrate-store",
                "--from",
                str(source),
                "--to",
                pg_url,
                "--password-file",
                str(tmp_path / "pgpass"),
            )
            assert moved.returncode == 0, moved.stderr
            counts = {
                line.split()[0]: int(line.split()[1].replace(",", ""))
                for line in moved.stdout.splitlines()[2:]
            }
            assert counts["deposits"] == 4 and counts["events"] == facts["events"] and counts["payments"] == 1
            await same_through_the_store(str(source), pg_url)

            rx.clear_plan()  # the merchant answers again
            config = daemon_config(
                {"url": pg_url, "password_file": str(tmp_path / "pgpass")}, anvil, rx, hooks, 1
            )
            path = str(write_config(tmp_path / "pg.yaml", config))
            daemon = DaemonProcess(
                Path(path), int(config["status"]["listen"].split(":")[1]), tmp_path / "b.log"
            )
            daemon.start()
            try:
                await daemon.wait_live()
                # The callback that was pending with failed attempts is delivered, once.
                await wait_until(
                    "the pending callback",
                    lambda: deliveries(rx, ids["pending"], "not_confirmed") == 1,
                    daemon,
                )
                evm.mine(url, MIN_CONF)
                await wait_until(
                    "its confirmation", lambda: deliveries(rx, ids["pending"], "confirmed") == 1, daemon
                )
                paid = evm.send_eth(url, acct[0], acct[1], 2)
                evm.mine(url, MIN_CONF)
                await wait_until(
                    "a new deposit",
                    lambda: any(
                        r.body["transactions"][0]["txid"] == paid and r.body["status"] == "confirmed"
                        for r in rx.delivered
                    ),
                    daemon,
                )
                assert by_deposit(rx, paid) == facts["last_deposit"] + 1  # the next id follows SQLite's
                applied = [
                    json.loads(line)
                    for line in (tmp_path / "b.log").read_text().splitlines()
                    if '"blocks_applied"' in line
                ]
                assert applied[0]["first"] == facts["cursor"] + 1  # from the moved cursor, not start_height 1
                assert '"chain_anchored"' not in (tmp_path / "b.log").read_text()
            finally:
                assert daemon.stop() == 0, daemon.log()
            delivered = collections.Counter((r.body["id"], r.body["status"]) for r in rx.delivered)
            assert delivered and max(delivered.values()) == 1, delivered  # nothing delivered twice
            hooks_sent = collections.Counter(
                (w.body["event"], w.body["data"]["payment_reference"]) for w in hooks.delivered
            )
            assert hooks_sent[("payment_completed", ids["payment"])] == 1 and max(hooks_sent.values()) == 1
    finally:
        evm.set_automine(url, True)


async def wait_ready(daemon: DaemonProcess, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (await daemon.get("/readyz"))[0] != 200:
        assert time.monotonic() < deadline, f"never ready\n{daemon.log()}"
        await asyncio.sleep(0.1)


def txid_delivered(rx: Receiver, txid: str, status: str) -> bool:
    return any(r.body["transactions"][0]["txid"] == txid and r.body["status"] == status for r in rx.delivered)


async def fill(
    path: str, config: dict[str, Any], anvil: AnvilNode, rx: Receiver, hooks: Receiver, daemon: DaemonProcess
) -> dict[str, Any]:
    """Every kind of row, through the CLI, the API and the chain, with the daemon running."""
    url, acct = anvil.url, evm.accounts(anvil.url)
    shop = ("--config", path, "--integration", SHOP, "--currency", "ETH")
    taken = cli_json("addresses", "take", *shop, "--foreign-id", "customer-take")  # a derivation
    cli_json("addresses", "register", *shop, "--address", acct[2], "--foreign-id", "customer-register")
    imported = Path(path).parent / "more.csv"
    imported.write_text(f"currency,address,foreign_id\nETH,{acct[3]},customer-import\n")
    assert cli("addresses", "import", "--config", path, "--integration", SHOP, str(imported)).returncode == 0
    assert await api(config, "DELETE", f"/v1/addresses/ETH/{acct[3]}") in (200, 204)
    again = cli("addresses", "import", "--config", path, "--integration", SHOP, str(imported))
    assert again.returncode == 0, again.stderr  # watched again: a watch change
    payment = cli_json(
        "payments", "create", "--config", path, "--integration", ORDERS, "--currency", "ETH",
        "--amount", "0.01", "--idempotency-key", "order-1",
    )  # fmt: skip
    # Confirmed: a config address's deposit, and the payment's.
    confirmed = evm.send_eth(url, acct[0], acct[1], 10**18 + 1)
    evm.send_eth(url, acct[5], payment["address"], 10**16)
    evm.mine(url, MIN_CONF)
    await wait_until("confirmed", lambda: txid_delivered(rx, confirmed, "confirmed"), daemon)
    reference = payment["payment_reference"]
    completed = ("payment_completed", reference)
    await wait_until(
        "payment_completed",
        lambda: (
            completed in {(w.body["event"], w.body["data"]["payment_reference"]) for w in hooks.delivered}
        ),
        daemon,
    )
    # Cancelled: a deposit to the taken address replaced in a reorg.
    dropped = evm.send_eth(url, acct[4], taken["address"], 10**15)
    evm.mine(url, 1)
    await wait_until("not_confirmed", lambda: txid_delivered(rx, dropped, "not_confirmed"), daemon)
    evm.reorg_replace(url, 1, dropped)
    evm.mine(url, 2)
    await wait_until("cancelled", lambda: txid_delivered(rx, dropped, "cancelled"), daemon)
    # Pending: the merchant fails; the imported address's deposit waits in the outbox, attempted twice.
    rx.plan([500] * 1000)
    waiting = evm.send_eth(url, acct[6], acct[3], 3 * 10**15)
    evm.mine(url, 1)
    await wait_until("its first attempt", lambda: has_request(rx, waiting), daemon)
    pending = by_deposit(rx, waiting)
    await wait_until("two failed attempts", lambda: failures(rx, pending) >= 2, daemon)
    return {"pending": pending, "payment": reference}


async def same_through_the_store(sqlite_path: str, pg_url: str) -> None:
    """What the daemon reads of the two stores is the same (the command's own check aside)."""
    sqlite, pg = await Store.open(sqlite_path), await Store.open(pg_url)
    try:
        for read in (
            lambda s: s.deposits(),
            lambda s: s.outbox_entries(),
            lambda s: s.events(SHOP),
            lambda s: s.events(ORDERS),
            lambda s: s.seen_clocks(),
            lambda s: s.chain_state("ethereum"),
            lambda s: s.recent_blocks("ethereum", 1000),
            lambda s: s.watch_sets(["ethereum"]),
            lambda s: s.address_high_water(),
        ):
            assert await read(pg) == await read(sqlite)
        for entry in await sqlite.outbox_entries():
            assert await pg.attempts(entry.id) == await sqlite.attempts(entry.id)
    finally:
        await sqlite.close()
        await pg.close()
