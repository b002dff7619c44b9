"""`deposit-watcher addresses ...` and `api-key new` through the CLI's main(), on a real SQLite store and
a config loaded from YAML (with the integrations and public keys put in as the loader will)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from chains.bitcoin.address import address_for_script, witness_script
from chains.evm.address import to_checksum
from tests.test_address_book import CONFIG, EVM_ACCOUNT, FIRST_EVM, SHOP_A, SHOP_B, integration
from tests.test_derivation import account
from watcher import cli
from watcher.address_book import AddressBook
from watcher.apikeys import hash_api_key
from watcher.cli import main
from watcher.config import Config, load_config
from watcher.store import Store

ETH = [to_checksum(bytes([n]) * 20) for n in range(1, 6)]
GOOD = to_checksum(bytes([0xAB]) * 20)
BAD_CHECKSUM = GOOD[:2] + GOOD[2:].swapcase()
BTC = address_for_script(witness_script(0, bytes([9]) * 20), "regtest")


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """One integration (shop A) with an EVM account key and a wpkh descriptor; `main` loads it."""
    (tmp_path / "watcher.yaml").write_text(CONFIG)
    loaded = load_config(str(tmp_path / "watcher.yaml"))
    shop = integration(
        loaded,
        SHOP_A,
        ethereum=EVM_ACCOUNT,
        bitcoin=f"wpkh([73c5da0a/84h/1h/0h]{account('m/84h/1h/0h', 'tpub')}/0/*)",
    )
    config = replace(loaded, integrations=(shop,))
    monkeypatch.setattr(cli, "load_config", lambda path: config)
    return config


def two_shops(config: Config, monkeypatch: pytest.MonkeyPatch) -> Config:
    both = replace(config, integrations=(*config.integrations, integration(config, SHOP_B)))
    monkeypatch.setattr(cli, "load_config", lambda path: both)
    return both


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--config", "watcher.yaml"])
    out, err = capsys.readouterr()
    return code, out, err


def count_rows(config: Config) -> int:
    async def count() -> int:
        store = await Store.open(config.database)
        try:
            return len([a async for a in store.export_addresses(SHOP_A)])
        finally:
            await store.close()

    return asyncio.run(count())


# ------------------------------------------------------------------------------- take, register, list


def test_take_gives_the_same_address_again(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "addresses", "take", "--currency", "ETH", "--foreign-id", "c-1", "--json")
    first = json.loads(out)
    assert code == 0 and first["address"] == FIRST_EVM and first["created"] is True
    assert (
        first["integration_id"] == SHOP_A and first["source"] == "api" and first["created_at"].endswith("Z")
    )
    code, out, _ = run(capsys, "addresses", "take", "--currency", "ETH", "--foreign-id", "c-1")
    assert code == 0 and out == f"ETH {FIRST_EVM} for c-1 (…/0/0): already issued, id {first['id']}\n"


def test_register_then_list_filters(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    for address, foreign_id in ((ETH[0], "a"), (ETH[1], "b")):
        code, out, _ = run(
            capsys,
            "addresses",
            "register",
            "--currency",
            "USDT",
            "--address",
            address,
            "--foreign-id",
            foreign_id,
        )
        assert code == 0 and "new" in out
    code, out, _ = run(capsys, "addresses", "list", "--json")
    assert code == 0 and [(a["address"], a["foreign_id"]) for a in json.loads(out)] == [
        (ETH[0], "a"),
        (ETH[1], "b"),
    ]
    code, out, _ = run(capsys, "addresses", "list", "--foreign-id", "b")
    assert code == 0 and out.splitlines()[0].split()[:4] == ["ID", "CURRENCY", "ADDRESS", "FOREIGN_ID"]
    assert len(out.splitlines()) == 2 and ETH[1] in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("take", "--currency", "DOGE", "--foreign-id", "c"), "error: currency: unknown currency"),
        (
            ("take", "--currency", "ETH", "--foreign-id", "a\nb"),
            "error: foreign_id: must not contain control",
        ),
        (("register", "--currency", "BTC", "--address", ETH[0], "--foreign-id", "c"), "error: address: "),
        (("list", "--limit", "5000"), "error: limit: must be between 1 and 1000"),
    ],
)
def test_refused_requests_exit_1_with_the_field(
    config: Config, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    code, out, err = run(capsys, "addresses", *argv)
    assert (code, out) == (1, "") and err.startswith(message) and len(err.splitlines()) == 1, err


def test_integration_required_when_there_are_several(
    config: Config, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    two_shops(config, monkeypatch)
    code, _, err = run(capsys, "addresses", "list")
    assert code == 1 and "2 integrations; choose one of" in err and SHOP_A in err and SHOP_B in err
    code, _, err = run(capsys, "addresses", "list", "--integration", "nope")
    assert code == 1 and "no integration 'nope'" in err
    code, out, _ = run(capsys, "addresses", "list", "--integration", SHOP_B.upper(), "--json")
    assert (code, json.loads(out)) == (0, [])


# ------------------------------------------------------------------------------------------ import


def write_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.write_text("currency,address,foreign_id\n" + "".join(f"{c},{a},{f}\n" for c, a, f in rows))
    return path


ROWS = [("ETH", ETH[0], "c-0"), ("USDT", ETH[0], "c-0"), ("BTC", BTC, "c-9"), ("ETH", ETH[1], "Smith")]


def test_import_then_reimport_counts_existing(
    config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_csv(tmp_path / "customers.csv", ROWS)
    code, out, _ = run(capsys, "addresses", "import", str(path), "--json")
    answer = json.loads(out)
    assert code == 0 and (answer["added"], answer["existing"]) == (4, 0) and answer["seconds"] >= 0
    code, out, _ = run(capsys, "addresses", "import", str(path))
    assert code == 0 and "4 addresses: 0 added, 4 already watched" in out
    code, out, _ = run(capsys, "addresses", "list", "--json")
    assert {a["source"] for a in json.loads(out)} == {"import"} and len(json.loads(out)) == 4


def test_a_bad_row_writes_nothing_and_names_file_line_field(
    config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_csv(tmp_path / "bad.csv", [*ROWS, ("ETH", BAD_CHECKSUM, "c-5")])
    code, out, err = run(capsys, "addresses", "import", str(path))
    assert (
        (code, out) == (1, "")
        and err.startswith(f"error: {path}:6: address: ")
        and len(err.splitlines()) == 1
    )
    assert count_rows(config) == 0


def test_an_address_of_another_foreign_id_refuses_the_file_at_its_line(
    config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(
        capsys, "addresses", "register", "--currency", "BTC", "--address", BTC, "--foreign-id", "someone-else"
    )
    path = write_csv(tmp_path / "clash.csv", ROWS)
    code, _, err = run(capsys, "addresses", "import", str(path))
    assert code == 1 and err.startswith(f"error: {path}:4: address: ") and "another foreign_id" in err
    assert count_rows(config) == 1


def test_import_ndjson_from_stdin(
    config: Config, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = "".join(json.dumps({"currency": c, "address": a, "foreign_id": f}) + "\n" for c, a, f in ROWS)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(lines.encode())))
    code, out, _ = run(capsys, "addresses", "import", "-", "--format", "ndjson", "--json")
    assert code == 0 and json.loads(out)["added"] == 4
    code, _, err = run(capsys, "addresses", "import", "-")
    assert code == 1 and "cannot tell the format from standard input" in err


def test_import_unreadable_or_not_utf8(
    config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "addresses", "import", str(tmp_path / "missing.csv"))
    assert code == 1 and "missing.csv: file: cannot read it: No such file or directory" in err
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"currency,address,foreign_id\nETH," + ETH[0].encode() + b",Zo\xeb\n")
    code, _, err = run(capsys, "addresses", "import", str(latin))
    assert code == 1 and "latin.csv: file: is not UTF-8 text" in err and count_rows(config) == 0


# ------------------------------------------------------------------------------------------ export


def test_export_csv_and_ndjson_round_trip(
    config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "addresses", "import", str(write_csv(tmp_path / "in.csv", ROWS)))
    run(capsys, "addresses", "take", "--currency", "ETH", "--foreign-id", "derived")
    code, out, _ = run(capsys, "addresses", "export")
    table = list(csv.DictReader(io.StringIO(out, newline="")))
    assert code == 0 and list(table[0]) == [
        "currency", "address", "foreign_id", "id", "source", "derivation_path", "created_at"
    ]  # fmt: skip
    assert [(r["currency"], r["address"], r["foreign_id"], r["source"]) for r in table] == [
        *((c, a, f, "import") for c, a, f in ROWS),
        ("ETH", FIRST_EVM, "derived", "api"),
    ]
    assert table[-1]["derivation_path"] == "…/0/0" and out.count("\r\n") == 6
    out_file = tmp_path / "out.ndjson"
    code, _, err = run(
        capsys, "addresses", "export", "--currency", "USDT", "--format", "ndjson", "-o", str(out_file)
    )
    [usdt] = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert code == 0 and usdt["address"] == ETH[0] and f"exported 1 addresses to {out_file}" in err
    # What export writes, import reads back: nothing new, everything already there.
    code, out, _ = run(capsys, "addresses", "import", str(out_file), "--json")
    assert (code, json.loads(out)["existing"]) == (0, 1)


# ------------------------------------------------------------------------------------------ api-key new


def test_api_key_new_prints_key_once_and_its_hash(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "api-key", "new", "--json")
    answer = json.loads(out)
    hashed = hash_api_key(answer["key"])
    assert code == 0 and hashed is not None and hashed.line() == answer["hash"]
    assert answer["key"].startswith("sk_test_") and answer["integration"] == SHOP_A  # a regtest config
    assert answer["key"] not in err
    code, out, err = run(capsys, "api-key", "new")
    key, line = (row.split(None, 1)[1] for row in out.splitlines())
    assert code == 0 and hash_api_key(key) is not None and hash_api_key(key).line() == line  # type: ignore[union-attr]
    assert "shown only this once" in err and key not in err


def test_api_key_live_on_a_test_network_warns(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "api-key", "new", "--live", "--json")
    assert code == 0 and json.loads(out)["key"].startswith("sk_live_")
    assert "warning: a regtest daemon refuses live keys" in err


def test_api_key_append_to_a_key_file(
    config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "shop.keys"
    code, out, _ = run(capsys, "api-key", "new", "--append-to", str(keys), "--json")
    first = json.loads(out)["hash"]
    assert code == 0 and keys.read_text() == first + "\n"
    # Readable by the service's own user: hash lines are no secret.
    assert stat.S_IMODE(os.stat(keys).st_mode) & 0o044 == 0o044
    with open(keys, "a") as f:
        f.write("# rotated 2026-12")  # no newline at the end
    code, out, err = run(capsys, "api-key", "new", "--append-to", str(keys))
    second = out.splitlines()[1].split()[1]
    assert keys.read_text() == f"{first}\n# rotated 2026-12\n{second}\n" and f"appended to {keys}" in err
    code, _, err = run(capsys, "api-key", "new", "--append-to", str(tmp_path / "no" / "dir.keys"))
    assert code == 1 and "cannot write" in err and "sk_" not in err


def test_a_real_process_imports_and_export_stops_quietly_when_its_reader_does(tmp_path: Path) -> None:
    """`python -m watcher` with the YAML as written (one `merchant:` integration), piped like `| head`:
    more rows than a pipe holds, so the export is still writing when its reader goes away."""
    (tmp_path / "watcher.yaml").write_text(CONFIG)
    many = [("ETH", "0x" + n.to_bytes(20, "big").hex(), f"c-{n}") for n in range(1, 3001)]
    path = write_csv(tmp_path / "in.csv", many)
    base = [sys.executable, "-m", "watcher", "addresses"]
    config = ["--config", str(tmp_path / "watcher.yaml")]
    done = subprocess.run([*base, "import", str(path), *config, "--json"], capture_output=True, timeout=60)
    assert done.returncode == 0 and json.loads(done.stdout)["added"] == 3000, done.stderr
    export = subprocess.Popen([*base, "export", *config], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert export.stdout is not None and export.stderr is not None
    assert export.stdout.readline().startswith(b"currency,address")
    export.stdout.close()
    assert export.wait(timeout=60) == 1 and export.stderr.read() == b""


def test_export_leaves_out_deleted_addresses_unless_all(
    config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "addresses", "import", str(write_csv(tmp_path / "in.csv", ROWS)))

    async def delete_btc() -> None:
        store = await Store.open(config.database)
        try:
            await AddressBook(store, config).delete(config.integrations[0], "BTC", BTC)
        finally:
            await store.close()

    asyncio.run(delete_btc())
    code, out, _ = run(capsys, "addresses", "export", "--format", "ndjson")
    assert code == 0 and [json.loads(line)["currency"] for line in out.splitlines()] == ["ETH", "USDT", "ETH"]
    code, out, _ = run(capsys, "addresses", "export", "--format", "ndjson", "--all")
    assert code == 0 and BTC in out and len(out.splitlines()) == 4
