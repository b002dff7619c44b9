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
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from chains.base import BlockRef
from devnet.postgres import PostgresServer
from tests.daemon_process import free_port
from watcher.errors import StoreError
from watcher.migrate_store import TABLES, Layout, Table, canonical, first_difference, migrate
from watcher.model import AttemptResult, DepositStatus
from watcher.store import NewAddress, Store

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
LAYOUT = Layout(("id", "amount", "body", "at"), frozenset({"amount"}))
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
        from watcher.store import MIGRATIONS, _statements

        for script in MIGRATIONS:
            for statement in _statements(script):
                db.execute(statement)
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert names - {"sqlite_sequence"} == {t.name for t in TABLES}


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
