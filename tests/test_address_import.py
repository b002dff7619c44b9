"""Address files for `addresses import` (watcher/address_import.py): the CSV and NDJSON shapes operators
write, every row check with the FILE:LINE and field it names, and the progress bar's text."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from chains.bitcoin.address import address_for_script, witness_script
from chains.evm.address import to_checksum
from watcher.address_import import (
    RowValidator,
    ValidRow,
    format_of,
    read_rows,
    validate,
)
from watcher.config import Config, load_config
from watcher.errors import ImportFileError
from watcher.progress import Progress, clock_text, line

ETH_1 = to_checksum(bytes([0xAB]) * 20)
ETH_2 = to_checksum(bytes([2]) * 20)
BTC_1 = address_for_script(witness_script(0, bytes([1]) * 20), "regtest")
BTC_MAINNET = address_for_script(witness_script(0, bytes([1]) * 20), "mainnet")

CONFIG = """\
network: regtest
database: watcher.sqlite3
merchant:
  callback_url: http://127.0.0.1:8390/callbacks
  key: test-key
  secret: s
chains:
  ethereum:
    adapter: evm
    rpc_url: http://127.0.0.1:8545
    currencies:
      ETH: {}
      USDT: {contract: "0x5FbDB2315678afecb367f032d93F642f64180aa3", decimals: 6}
  bitcoin:
    adapter: bitcoin-core
    rpc_url: http://127.0.0.1:18443
    currencies:
      BTC: {}
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_text(CONFIG)
    return load_config(str(path), {})


def rows_of(config: Config, text: str, fmt: str = "csv") -> list[ValidRow]:
    return list(validate(read_rows(io.StringIO(text, newline=""), fmt), RowValidator.from_config(config)))


def refusal(config: Config, text: str, fmt: str = "csv") -> ImportFileError:
    with pytest.raises(ImportFileError) as refused:
        rows_of(config, text, fmt)
    return refused.value


# ------------------------------------------------------------------------------------------ CSV


def test_csv_rows_become_watch_keys_of_their_chain(config: Config) -> None:
    text = (
        "\ufeffcurrency,address,foreign_id\r\n"  # a spreadsheet's byte-order mark and CRLF
        f"ETH,{ETH_1},customer-1\r\n"
        f'USDT,{ETH_1.lower()},"Smith, John ""JS"""\r\n'
        "\r\n"  # a blank line is skipped
        f"BTC,{BTC_1},0042\r\n"
    )
    rows = rows_of(config, text.removeprefix("\ufeff"))
    assert [(r.line, r.chain, r.currency, r.address, r.foreign_id) for r in rows] == [
        (2, "ethereum", "ETH", ETH_1, "customer-1"),
        (3, "ethereum", "USDT", ETH_1.lower(), 'Smith, John "JS"'),
        (5, "bitcoin", "BTC", BTC_1, "0042"),
    ]
    assert rows[0].watch_key == bytes([0xAB]) * 20 == rows[1].watch_key
    assert rows[2].watch_key == witness_script(0, bytes([1]) * 20)


def test_csv_columns_in_any_order_and_export_columns_ignored(config: Config) -> None:
    text = (
        "id,foreign_id,currency,source,address,derivation_path,created_at\n"
        f"7,c-1,ETH,api,{ETH_1},m/44'/60'/0'/0/3,2026-12-07T12:00:00Z\n"
    )
    [row] = rows_of(config, text)
    assert (row.currency, row.address, row.foreign_id) == ("ETH", ETH_1, "c-1")


def test_csv_a_quoted_newline_is_refused_at_the_line_its_row_starts(config: Config) -> None:
    text = f'currency,address,foreign_id\nETH,{ETH_2},a\nETH,{ETH_1},"two\nlines"\nETH,{ETH_1},c\n'
    error = refusal(config, text)
    assert (error.line, error.field) == (3, "foreign_id") and "control characters" in error.message


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        ("", 1, "header", "the file is empty"),
        (f"currency,address\nETH,{ETH_1}\n", 1, "header", "column 'foreign_id' is missing"),
        ("currency,address,foreign_id,foreign_id\n", 1, "header", "'foreign_id' is listed twice"),
        ("currency,adress,foreign_id\n", 1, "header", "unknown column 'adress'"),
        (f"currency,address,foreign_id\nETH,{ETH_1}\n", 2, "row", "2 fields; the header has 3"),
        (f"currency,address,foreign_id\nETH,{ETH_1},a,b\n", 2, "row", "4 fields"),
        (f'currency,address,foreign_id\nETH,{ETH_1},"open\n', 2, "row", "not valid CSV"),
        (f'currency,address,foreign_id\nETH,{ETH_1},"a"b\n', 2, "row", "not valid CSV"),
    ],
)
def test_csv_shape_errors_name_the_line(
    config: Config, text: str, line: int, field: str, message: str
) -> None:
    error = refusal(config, text)
    assert (error.line, error.field) == (line, field) and message in error.message, error.message


# ------------------------------------------------------------------------------------------ NDJSON


def test_ndjson_rows_and_numeric_foreign_id(config: Config) -> None:
    text = (
        f'{{"currency": "ETH", "address": "{ETH_1}", "foreign_id": "c-1"}}\n'
        "\n"
        f'{{"foreign_id": 17, "currency": "BTC", "address": "{BTC_1}", "source": "api"}}\r\n'
    )
    rows = rows_of(config, text, "ndjson")
    assert [(r.line, r.currency, r.foreign_id) for r in rows] == [(1, "ETH", "c-1"), (3, "BTC", "17")]


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ("[1, 2]", "row", "expected a JSON object"),
        ('{"currency": "ETH"', "row", "not valid JSON"),
        (f'{{"currency": "ETH", "address": "{ETH_1}"}}', "foreign_id", "missing"),
        (f'{{"currency": "ETH", "address": "{ETH_1}", "foreign_id": "a", "amount": 1}}', "amount", "unknown"),
        (f'{{"currency": "ETH", "address": "{ETH_1}", "foreign_id": true}}', "foreign_id", "got bool"),
        (f'{{"currency": "ETH", "address": "{ETH_1}", "foreign_id": 1.5}}', "foreign_id", "got float"),
        ('{"currency": "ETH", "address": 12, "foreign_id": "a"}', "address", "expected a string"),
    ],
)
def test_ndjson_shape_errors_name_the_field(config: Config, text: str, field: str, message: str) -> None:
    good = f'{{"currency": "ETH", "address": "{ETH_2}", "foreign_id": "ok"}}'
    error = refusal(config, f"{good}\n{text}\n", "ndjson")
    assert (error.line, error.field) == (2, field) and message in error.message, error.message


# ------------------------------------------------------------------------------------------ row checks

LONG = "x" * 255


@pytest.mark.parametrize(
    ("currency", "address", "foreign_id", "field", "message"),
    [
        ("DOGE", ETH_1, "c", "currency", "unknown currency 'DOGE' (configured: BTC, ETH, USDT)"),
        ("eth", ETH_1, "c", "currency", "unknown currency 'eth'"),
        ("ETH", ETH_1[:-1] + ("a" if ETH_1[-1] != "a" else "b"), "c", "address", "checksum"),
        ("ETH", "0x1234", "c", "address", "40-hex-digit"),
        ("USDT", BTC_1, "c", "address", "0x-prefixed"),
        ("BTC", BTC_MAINNET, "c", "address", "mainnet address, the config's network is regtest"),
        ("BTC", ETH_1, "c", "address", "neither base58check nor bech32"),
        ("ETH", ETH_1, "", "foreign_id", "must be 1 to 255 characters"),
        ("ETH", ETH_1, LONG + "y", "foreign_id", "must be 1 to 255 characters"),
        ("ETH", ETH_1, "a\tb", "foreign_id", "control characters"),
        ("ETH", ETH_1, "a\x85b", "foreign_id", "control characters"),
    ],
)
def test_each_bad_field_is_named(
    config: Config, currency: str, address: str, foreign_id: str, field: str, message: str
) -> None:
    validator = RowValidator.from_config(config)
    with pytest.raises(ImportFileError) as refused:
        validator.check(9, currency, address, foreign_id)
    assert (refused.value.line, refused.value.field) == (9, field)
    assert message in refused.value.message, refused.value.message


def test_longest_foreign_id_and_unicode_pass(config: Config) -> None:
    validator = RowValidator.from_config(config)
    assert validator.check(2, "ETH", ETH_1, LONG).foreign_id == LONG
    assert validator.check(3, "ETH", ETH_1, "Zoë 客户 7").foreign_id == "Zoë 客户 7"
    # Not printable, yet no control character: the slow path of the API's own rule accepts them.
    assert validator.check(4, "ETH", ETH_1, "a\u00a0b\u200b").foreign_id == "a\u00a0b\u200b"


def test_an_address_listed_twice_names_both_lines(config: Config) -> None:
    text = f"currency,address,foreign_id\nETH,{ETH_1},a\nUSDT,{ETH_1},a\nETH,{ETH_1.lower()},a\n"
    error = refusal(config, text)
    assert (error.line, error.field) == (4, "address") and "already listed at line 2" in error.message


def test_the_first_bad_row_stops_before_any_later_row_is_read(config: Config) -> None:
    def raw() -> object:
        yield 2, "ETH", ETH_1, "a"
        yield 3, "DOGE", ETH_2, "b"
        raise AssertionError("read past the bad row")

    got: list[ValidRow] = []
    with pytest.raises(ImportFileError):
        for row in validate(raw(), RowValidator.from_config(config)):  # type: ignore[arg-type]
            got.append(row)
    assert [r.line for r in got] == [2]


def test_row_error_in_a_file_is_one_line_with_file_and_line() -> None:
    error = ImportFileError("", 12, "foreign_id", "must be 1 to 255 characters")
    assert str(error) == "12: foreign_id: must be 1 to 255 characters"
    assert str(error.in_file("customers.csv")) == "customers.csv:12: foreign_id: must be 1 to 255 characters"
    assert str(ImportFileError("-", None, "format", "give --format")) == "-: format: give --format"
    assert error.exit_code == 1


# ------------------------------------------------------------------------------------------ formats


@pytest.mark.parametrize(
    ("path", "given", "fmt"),
    [
        ("a.csv", None, "csv"),
        ("A.CSV", None, "csv"),
        ("a.ndjson", None, "ndjson"),
        ("dir.d/a.jsonl", None, "ndjson"),
        ("a.txt", "csv", "csv"),
        ("-", "ndjson", "ndjson"),
    ],
)
def test_format_from_extension_or_flag(path: str, given: str | None, fmt: str) -> None:
    assert format_of(path, given) == fmt


@pytest.mark.parametrize(("path", "what"), [("a.txt", "the file name"), ("-", "standard input")])
def test_format_unknown_says_to_give_it(path: str, what: str) -> None:
    with pytest.raises(ImportFileError) as refused:
        format_of(path, None)
    assert f"cannot tell the format from {what}: give --format csv" in str(refused.value)


def test_files_read_from_disk_keep_utf8_and_bom(config: Config, tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(f"\ufeffcurrency,address,foreign_id\nETH,{ETH_1},Zoë\n".encode())
    with open(path, encoding="utf-8-sig", newline="") as f:
        [row] = validate(read_rows(f, "csv"), RowValidator.from_config(config))
    assert row.foreign_id == "Zoë"


# ------------------------------------------------------------------------------------------ progress


def test_progress_line_has_bar_rows_rate_and_eta() -> None:
    assert line("importing", 350_000, 10.0, 0.25) == (
        "importing  [######..................]  25%  350,000 rows  35,000/s  ETA 0:30"
    )
    assert line("importing", 10, 2.0, None) == "importing  10 rows  5/s"
    assert clock_text(3725) == "1:02:05" and clock_text(59.6) == "1:00"


def test_progress_draws_at_most_every_redraw_interval_and_clears() -> None:
    now = [0.0]
    out = io.StringIO()
    bar = Progress(out, enabled=True, label="importing", clock=lambda: now[0])
    bar.update(1, 0.0)
    now[0] = 0.1
    bar.update(2, 0.1)  # too soon: not drawn
    now[0] = 0.3
    bar.update(3, 0.5)
    text = out.getvalue()
    assert text.count("\r") == 2 and "1 rows" in text and "2 rows" not in text and "3 rows" in text
    bar.done()
    assert out.getvalue().endswith("\r")


def test_progress_disabled_writes_nothing() -> None:
    out = io.StringIO()
    bar = Progress(out, enabled=False, label="importing")
    bar.update(5, 0.5)
    bar.done()
    assert out.getvalue() == ""
