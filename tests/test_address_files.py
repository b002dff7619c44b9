"""Addresses files read as a stream (watcher/yaml_events.py), the packed AddressList, and the key a YAML
syntax error names. The general agreement of the streamed and the composed path is a property in
tests/test_properties.py; here are the forms and mistakes an operator actually writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from chains.bitcoin.address import address_for_script, witness_script
from chains.evm.address import to_checksum
from watcher.address_list import AddressEntry, AddressList
from watcher.config import Config, load_config
from watcher.errors import ConfigError

ETH_1 = to_checksum(bytes([0xAB]) * 20)
ETH_2 = to_checksum(bytes([2]) * 20)
BTC_1 = address_for_script(witness_script(0, bytes([1]) * 20), "regtest")
BTC_2 = address_for_script(witness_script(0, bytes([2]) * 20), "regtest")
ENV = {"SECRET": "s", "CUSTOMER": "customer-from-env"}

CONFIG = """\
network: regtest
database: watcher.sqlite3
merchant:
  callback_url: http://127.0.0.1:8390/callbacks
  key: test-key
  secret: ${SECRET}
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

# Every way of writing entries that the composed loader took: flow and block mappings, quoted keys,
# numeric ids, ${VAR}, explicit tags, anchors with merge keys and aliases, comments, a document marker.
VARIED = f"""\
# customers of the shop
---
- {{currency: ETH, address: "{ETH_1}", foreign_id: customer-1}}
- currency: USDT
  address: '{ETH_1.lower()}'
  foreign_id: 0042
- {{"currency": BTC, 'address': {BTC_1}, foreign_id: !!str 17}}
- &usdt {{currency: USDT, address: "{ETH_2}", foreign_id: "${{CUSTOMER}}"}}
- {{<<: *usdt, currency: ETH}}
- currency: !!str BTC
  address: {BTC_2.upper()}
  foreign_id: >-
    folded
    id
"""


def write(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(text)
    return str(path)


def load(tmp_path: Path, entries: str, *, inline: bool = False) -> Config:
    """The config with `entries` (a YAML list) in an addresses file, or inline under `addresses:`."""
    if inline:
        body = "".join(f"  {line}\n" for line in entries.splitlines() if line.strip() != "---")
        return load_config(write(tmp_path, "config.yaml", CONFIG + "addresses:\n" + body), ENV)
    write(tmp_path, "addresses.yaml", entries)
    return load_config(write(tmp_path, "config.yaml", CONFIG + "addresses_files: [addresses.yaml]\n"), ENV)


def error(tmp_path: Path, entries: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, entries)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_every_form_streams_to_the_entries_the_node_path_builds(tmp_path: Path) -> None:
    streamed = load(tmp_path, VARIED).addresses
    composed = load(tmp_path, VARIED, inline=True).addresses
    rows = [(a.currency, a.address, a.foreign_id, a.watch_key) for a in streamed]
    assert rows == [(a.currency, a.address, a.foreign_id, a.watch_key) for a in composed]
    assert [(a.currency, a.address, a.foreign_id) for a in streamed] == [
        ("ETH", ETH_1, "customer-1"),
        ("USDT", ETH_1.lower(), "0042"),  # a number keeps its text as written
        ("BTC", BTC_1, "17"),
        ("USDT", ETH_2, "customer-from-env"),
        ("ETH", ETH_2, "customer-from-env"),  # merged from the anchored entry, its own currency wins
        ("BTC", BTC_2.upper(), "folded id"),
    ]
    file = str(tmp_path / "addresses.yaml")
    assert [a.source for a in streamed] == [f"{file}:{line}" for line in (3, 4, 7, 8, 9, 10)]


@pytest.mark.parametrize(
    ("entries", "line", "key", "message"),
    [
        (f'- {{currency: ETH, address: "{ETH_1}"}}\n', 1, "addresses[0]", "missing required key foreign_id"),
        (f"- currency: ETH\n  address: {ETH_1}\n  foreign_id: c\n", 2, "addresses[0].address",
         "was read by YAML as a number: quote the address"),
        (f'- {{currency: DAI, address: "{ETH_1}", foreign_id: c}}\n', 1, "addresses[0].currency",
         "unknown currency 'DAI'"),
        (f'- {{currency: ETH, address: "{ETH_1[:-1]}{ETH_1[-1].swapcase()}", foreign_id: c}}\n', 1,
         "addresses[0].address",
         "bad EIP-55 checksum"),
        (f"- {{currency: ETH, address: '{ETH_1}', foreign_id: c}}\n"
         f"- {{currency: ETH, address: '{ETH_1.lower()}', foreign_id: d}}\n", 2, "addresses[1].address",
         "is already listed at FILE:1"),
        (f"- {{currency: BTC, address: '{BTC_1}', foreign_id: true}}\n", 1, "addresses[0].foreign_id",
         "expected a string, got a boolean"),
        (f"- {{currency: BTC, address: '{BTC_1}', foreign_id: c, label: x}}\n", 1, "addresses[0].label",
         "unknown key"),
        ("- *nowhere\n", 1, "addresses[0]", "invalid YAML: found undefined alias 'nowhere'"),
        ("currency: ETH\n", 1, "addresses", "expected a list, got a mapping"),
        ("null\n", 1, "addresses", "expected a list, got nothing (null)"),
        (f"- {{currency: ETH, address: '{ETH_1}', foreign_id: c}}\n---\n- x\n", 2, "addresses",
         "expected a single document in the stream"),
        # Syntax errors name the key they are in.
        (f'- {{currency: ETH, address: "{ETH_1}, foreign_id: c}}\n- {{currency: ETH}}\n', 3,
         "addresses[0].address", "invalid YAML"),
        (f"- currency: ETH\n  address: '{ETH_1}'\n  foreign_id: a: b\n", 3, "addresses[0].foreign_id",
         "invalid YAML: mapping values are not allowed"),
    ],
)  # fmt: skip
def test_errors_in_an_addresses_file(tmp_path: Path, entries: str, line: int, key: str, message: str) -> None:
    file = str(tmp_path / "addresses.yaml")
    text = error(tmp_path, entries)
    assert text.startswith(f"{file}:{line}: {key}: "), text
    assert message.replace("FILE", file) in text, text


def test_a_duplicate_of_an_inline_address_names_the_config_line(tmp_path: Path) -> None:
    config = CONFIG + f'addresses:\n  - {{currency: ETH, address: "{ETH_1}", foreign_id: c}}\n'
    write(tmp_path, "addresses.yaml", f'- {{currency: ETH, address: "{ETH_1.lower()}", foreign_id: d}}\n')
    path = write(tmp_path, "config.yaml", config + "addresses_files: [addresses.yaml]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ENV)
    assert str(info.value) == (
        f"{tmp_path / 'addresses.yaml'}:1: addresses[0].address: ETH {ETH_1.lower()} is already listed at "
        f"{path}:20"
    )


def test_empty_and_comment_only_files_add_nothing(tmp_path: Path) -> None:
    assert len(load(tmp_path, "").addresses) == 0
    assert len(load(tmp_path, "# nothing yet\n").addresses) == 0
    assert len(load(tmp_path, "[]\n").addresses) == 0


@pytest.mark.parametrize("open_, close", [("[", "]"), ("{a: ", "}")])
def test_deep_nesting_in_an_addresses_file_is_refused(tmp_path: Path, open_: str, close: str) -> None:
    # libyaml refuses it itself (its own depth limit), or the loader's MAX_NESTING does: never a crash.
    text = error(tmp_path, "- " + open_ * 20_000 + close * 20_000 + "\n")
    assert text.startswith(f"{tmp_path / 'addresses.yaml'}:1: "), text
    assert "nesting depth" in text or "nested more than" in text, text
    assert len(text) < 400


def test_an_unreadable_addresses_file(tmp_path: Path) -> None:
    (tmp_path / "addresses.yaml").mkdir()
    path = write(tmp_path, "config.yaml", CONFIG + "addresses_files: [addresses.yaml]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ENV)
    assert str(info.value).startswith(f"{path}:19: addresses_files[0]: cannot read ")


# ------------------------------------------------------------------------------------------ AddressList


def test_address_list_keeps_every_field_and_the_order() -> None:
    entries = [
        AddressEntry("ETH", ETH_1, "customer-ü", "/etc/a.yaml", 7, bytes([1]) * 20),
        AddressEntry("BTC", BTC_1, "", "/etc/b.yaml", 70_000, b"\x00\x14" + bytes(20)),
        AddressEntry("USDT", ETH_2, "42", "/etc/a.yaml", 8, bytes([2]) * 20),
    ]
    packed = AddressList.of(entries)
    assert list(packed) == entries and len(packed) == 3
    assert (packed[1], packed[-1]) == (entries[1], entries[2])
    assert list(packed[1:]) == entries[1:]
    assert packed.counts() == {"ETH": 1, "BTC": 1, "USDT": 1}
    assert list(packed.having({"ETH", "USDT"})) == [entries[0], entries[2]]
    assert packed.having({"ETH", "BTC", "USDT"}) is packed
    assert packed == AddressList.of(entries) and packed != AddressList.of(entries[:2])
    assert packed[0].source == "/etc/a.yaml:7"
    assert repr(packed) == "AddressList(3 addresses)"


# ------------------------------------------------------------------------------- syntax errors, keys


@pytest.mark.parametrize(
    ("old", "new", "line", "key"),
    [
        ("  key: test-key", "  key: test: key", 5, "merchant.key"),
        # Where the unclosed list starts: the key given in the issue.
        ("  key: test-key", "  key: test-key\n  retry_schedule_min: [1, 5\n  timeout_s: 3", 7,
         "merchant.retry_schedule_min"),
        ("chains:", "chains: a: b", 7, "chains"),  # after a nested mapping: the dedented key
        ("      ETH: {}", "      ETH: {min_confirmations: 2", 13, "chains.ethereum.currencies.ETH"),
        ("network: regtest", "network: 'regtest", 19, "network"),  # reported where the file ends
        ("network: regtest", "- network: regtest", 2, "(top level)"),
    ],
)  # fmt: skip
def test_yaml_syntax_error_names_its_key(tmp_path: Path, old: str, new: str, line: int, key: str) -> None:
    path = write(tmp_path, "config.yaml", CONFIG.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_config(path, ENV)
    assert str(info.value).startswith(f"{path}:{line}: {key}: invalid YAML: "), str(info.value)


def test_missing_required_key_points_at_its_mapping(tmp_path: Path) -> None:
    text = CONFIG.replace("  callback_url: http://127.0.0.1:8390/callbacks\n", "")
    path = write(tmp_path, "config.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path, ENV)
    assert str(info.value) == f"{path}:3: merchant: missing required key callback_url"
