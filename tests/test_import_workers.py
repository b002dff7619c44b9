"""`addresses import` with its rows checked in worker processes (watcher/import_workers.py) and staged
from packed batches (watcher/store.py ImportBatch). Batches of a few rows here, so that a small file
crosses many batches and every worker: the semantics must be those of a file checked in one piece (every
row checked, the first bad row named by FILE:LINE and field, nothing written then, a duplicate across
batches named by both lines, ids in file order, existing rows counted, the progress reaching every row)."""

from __future__ import annotations

import asyncio
import csv
import sqlite3
from array import array
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from chains.bitcoin.address import address_for_script, p2pkh_script, witness_script
from chains.evm.address import to_checksum
from tests.test_address_book import CONFIG, SHOP_A, integration
from watcher.address_import import RowValidator
from watcher.cli_addresses import import_file
from watcher.config import Config, load_config
from watcher.errors import ImportFileError
from watcher.import_workers import checked_batches
from watcher.model import IssuedAddress
from watcher.progress import Progress
from watcher.store import ImportBatch, Store

BATCH = 7


@pytest.fixture
def sqlite_config(tmp_path: Path) -> Config:
    (tmp_path / "watcher.yaml").write_text(CONFIG)
    loaded = load_config(str(tmp_path / "watcher.yaml"))
    return replace(loaded, integrations=(integration(loaded, SHOP_A),))


@pytest.fixture
def config(sqlite_config: Config, store_location: str) -> Config:
    """The config with its store on each backend in turn."""
    return replace(sqlite_config, database=store_location)


def customers(count: int) -> list[tuple[str, str, str]]:
    """Per customer: ETH and USDT at one EIP-55 address, BTC at a bech32 one; foreign ids that CSV and
    JSON both have to quote."""
    rows = []
    for n in range(count):
        evm = to_checksum(bytes([n + 1]) * 19 + b"\x07")
        btc = address_for_script(witness_script(0, bytes([n + 1]) * 20), "regtest")
        rows += [("ETH", evm, f"c-{n}"), ("USDT", evm, f"c-{n}"), ("BTC", btc, f'Zoë "{n}", 客户 \\ 😀')]
    return rows


def write(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        table = csv.writer(f)
        table.writerow(["currency", "address", "foreign_id"])
        table.writerows(rows)
    return path


class Recorder(Progress):
    def __init__(self) -> None:
        super().__init__(None, enabled=False, label="importing")  # type: ignore[arg-type]
        self.rows: list[int] = []

    def update(self, rows: int, fraction: float | None = None) -> None:
        self.rows.append(rows)


async def run_import(config: Config, path: Path, bar: Progress | None = None) -> tuple[int, int]:
    store = await Store.open(config.database)
    try:
        result = await import_file(
            config, store, config.integrations[0], str(path), "csv", bar or Recorder(), batch_rows=BATCH
        )
        return result.added, result.existing
    finally:
        await store.close()


async def stored(config: Config) -> list[IssuedAddress]:
    store = await Store.open(config.database)
    try:
        return [a async for a in store.export_addresses(SHOP_A)]
    finally:
        await store.close()


def refusal(config: Config, path: Path) -> ImportFileError:
    with pytest.raises(ImportFileError) as refused:
        asyncio.run(run_import(config, path))
    assert asyncio.run(stored(config)) == []  # all or nothing
    return refused.value


def test_a_file_of_many_batches_is_added_whole_with_ids_in_file_order(config: Config, tmp_path: Path) -> None:
    rows = customers(40)  # 120 rows, 18 batches
    bar = Recorder()
    assert asyncio.run(run_import(config, write(tmp_path / "a.csv", rows), bar)) == (120, 0)
    got = asyncio.run(stored(config))
    assert [(a.currency, a.address, a.foreign_id) for a in got] == rows
    assert [a.id for a in got] == list(range(got[0].id, got[0].id + 120))
    assert bar.rows == sorted(bar.rows) and bar.rows[-1] == 120 and len(bar.rows) == 18


def test_the_first_bad_row_is_named_whichever_worker_checks_it(config: Config, tmp_path: Path) -> None:
    rows = customers(40)
    good = rows[40][1]
    rows[40] = ("USDT", good[:2] + good[2:].swapcase(), "c-13")  # line 42: a bad checksum, batch 6
    rows[100] = ("DOGE", good, "c-33")  # line 102, a later batch
    error = refusal(config, write(tmp_path / "bad.csv", rows))
    assert (error.file, error.line, error.field) == (str(tmp_path / "bad.csv"), 42, "address")
    assert "EIP-55" in error.message
    rows[40] = ("USDT", good, "c-13")
    error = refusal(config, write(tmp_path / "bad.csv", rows))
    assert (error.line, error.field) == (102, "currency")


def test_a_bad_row_before_a_row_the_reader_refuses_is_the_one_named(config: Config, tmp_path: Path) -> None:
    """The reader runs batches ahead of the workers: a malformed row it meets later must not be
    reported before the bad address that comes first in the file."""
    rows = customers(40)
    good = rows[40][1]
    rows[40] = ("USDT", good[:2] + good[2:].swapcase(), "c-13")  # line 42: a bad checksum
    path = write(tmp_path / "both.csv", rows)
    lines = path.read_text().splitlines(keepends=True)
    lines[44] = "ETH,only-two-fields\n"  # line 45, the next batch: not a row of the header's 3 fields
    path.write_text("".join(lines))
    error = refusal(config, path)
    assert (error.line, error.field) == (42, "address")
    rows[40] = ("USDT", good, "c-13")
    lines[41] = f"USDT,{good},c-13\n"
    path.write_text("".join(lines))
    error = refusal(config, path)
    assert (error.line, error.field) == (45, "row") and "2 fields" in error.message


def test_in_one_batch_too_a_bad_address_before_a_malformed_row_is_named(
    config: Config, tmp_path: Path
) -> None:
    rows = customers(1)
    rows[1] = ("USDT", "0x" + "g" * 40, "c-0")  # line 3: not hex
    path = write(tmp_path / "one.csv", rows)
    path.write_text(path.read_text() + "ETH\n")  # line 5: one field
    error = refusal(config, path)
    assert (error.line, error.field) == (3, "address")


def test_a_quoted_field_across_lines_in_a_late_batch_is_named_by_its_first_line(
    config: Config, tmp_path: Path
) -> None:
    rows = customers(40)
    rows[60] = ("ETH", rows[60][1], "two\nlines")  # the record of lines 62-63: a control character
    error = refusal(config, write(tmp_path / "multi.csv", rows))
    assert (error.line, error.field) == (62, "foreign_id")
    rows[60] = ("ETH", rows[60][1], "c-20")
    rows[110] = ("BTC", "bcrt1qnotanaddress", "x")  # the last batch
    error = refusal(config, write(tmp_path / "tail.csv", rows))
    assert (error.line, error.field) == (112, "address")


def test_a_duplicate_in_another_batch_names_both_lines(config: Config, tmp_path: Path) -> None:
    rows = customers(40)
    rows[90] = ("ETH", rows[3][1].lower(), "c-1")  # line 92 repeats line 5's address, in another case
    error = refusal(config, write(tmp_path / "twice.csv", rows))
    assert (error.line, error.field) == (92, "address") and "already listed at line 5" in error.message


def test_a_reimport_counts_existing_rows_and_refuses_another_foreign_id_at_its_line(
    config: Config, tmp_path: Path
) -> None:
    rows = customers(20)
    path = write(tmp_path / "a.csv", rows)
    assert asyncio.run(run_import(config, path)) == (60, 0)
    more = [*rows, ("ETH", to_checksum(bytes([0xEE]) * 20), "new")]
    assert asyncio.run(run_import(config, write(tmp_path / "more.csv", more))) == (1, 60)
    more[30] = (more[30][0], more[30][1], "someone-else")
    with pytest.raises(ImportFileError) as refused:
        asyncio.run(run_import(config, write(tmp_path / "clash.csv", more)))
    assert (refused.value.line, refused.value.field) == (32, "address")
    assert "another foreign_id" in refused.value.message and len(asyncio.run(stored(config))) == 61


def test_staging_keeps_every_key_length_and_text_exactly(config: Config, tmp_path: Path) -> None:
    """Keys of 20 (EVM), 22 (P2WPKH), 25 (P2PKH) and 34 (P2WSH) bytes end to end in one BLOB, and text
    that JSON escapes: what the store holds is what the checks gave."""
    p2pkh = address_for_script(p2pkh_script(bytes([5]) * 20), "regtest")
    p2wsh = address_for_script(witness_script(0, bytes([6]) * 32), "regtest")
    rows = [*customers(3), ("BTC", p2pkh, 'q"\\/\u2028'), ("BTC", p2wsh, "{}[]:,")]
    asyncio.run(run_import(config, write(tmp_path / "keys.csv", rows)))
    validator = RowValidator.from_config(config)
    expected = [row for _, row in validator.checked((n, *r) for n, r in enumerate(rows, 2))]

    async def read() -> list[tuple[str, str, bytes, str, str]]:
        store = await Store.open(config.database)
        try:
            sql = "SELECT chain, currency, watch_key, address, foreign_id FROM addresses ORDER BY id"
            return [(c, cur, bytes(k), a, f) for c, cur, k, a, f in await store._all(sql)]
        finally:
            await store.close()

    got = asyncio.run(read())
    assert got == expected
    assert {len(key) for _, _, key, _, _ in got} == {20, 22, 25, 34}


def test_one_batch_is_checked_in_this_process(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pool(*args: object, **kwargs: object) -> None:
        raise AssertionError("a pool was started for one batch")

    monkeypatch.setattr("watcher.import_workers.ProcessPoolExecutor", no_pool)
    rows = [(n, *row) for n, row in enumerate(customers(2), 2)]
    lines: list[int] = []

    async def collect() -> list[int]:
        kept = array("L")
        validator = RowValidator.from_config(config)
        got = [b.size async for b in checked_batches(validator, iter(rows), kept, lines.append)]
        return [*got, *kept]

    assert asyncio.run(collect()) == [6, 2, 3, 4, 5, 6, 7] and lines == [6]


def test_staging_leaves_the_database_writable_until_the_last_batch(
    sqlite_config: Config, tmp_path: Path
) -> None:
    """A running daemon writes while a file is checked and staged: another connection takes the write
    lock at once (no busy wait) between batches; the rows appear only with the final transaction (SQLite;
    on PostgreSQL the staging table is the writer connection's own, outside any transaction)."""
    config = sqlite_config
    rows = [row for _, row in _checked(config, customers(4))]

    async def run() -> tuple[int, int]:
        store = await Store.open(config.database)
        other = sqlite3.connect(config.database, timeout=0, isolation_level=None)
        try:

            async def batches() -> AsyncIterator[ImportBatch]:
                for start in range(0, len(rows), 5):
                    yield ImportBatch.of(rows[start : start + 5])
                    await asyncio.sleep(0.05)  # the batch is being staged
                    other.execute("BEGIN IMMEDIATE")  # sqlite3.OperationalError if the lock were held
                    other.execute("UPDATE chains SET updated_at = 0")
                    other.execute("COMMIT")
                    assert other.execute("SELECT count(*) FROM addresses").fetchone() == (0,)

            return await store.import_batches(SHOP_A, batches(), 0.0)
        finally:
            other.close()
            await store.close()

    assert asyncio.run(run()) == (12, 0)


def _checked(
    config: Config, rows: list[tuple[str, str, str]]
) -> list[tuple[int, tuple[str, str, bytes, str, str]]]:
    return list(RowValidator.from_config(config).checked((n, *r) for n, r in enumerate(rows, 2)))
