"""The command line as operators use it: exit codes, one-line config errors, the store commands."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from watcher.cli import main
from watcher.store import NewAddress, Store

CASES = Path(__file__).parent / "config_cases"
REGTEST = Path(__file__).parent.parent / "config" / "regtest.yaml"


def _expected(case: Path) -> tuple[str, str, str]:
    header = dict(re.findall(r"^# expect-(\w+): (.*)$", case.read_text(), re.M))
    return header.get("line", ""), header.get("key", ""), header.get("file", case.name)


@pytest.mark.parametrize("case", sorted((CASES / "bad").glob("*.yaml")), ids=lambda p: p.stem)
def test_check_config_bad_file_one_line_error_exit_1(
    case: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEPOSIT_WATCHER_SECRET", "cli-test-secret")
    assert main(["check-config", "--config", str(case)]) == 1
    err = capsys.readouterr().err.strip()
    line, key, file = _expected(case)
    assert len(err.splitlines()) == 1, err
    assert f"{Path(file).name}:{line}:" in err and f" {key}: " in err, err


def test_check_config_good_file_prints_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(REGTEST)]) == 0
    out = capsys.readouterr().out
    assert "ethereum" in out and "USDT" in out and "devnet-secret" not in out
    assert "  BTC: native, 8 decimals, 1 confirmation, 1 address\n" in out
    assert "  ETH: native, 18 decimals, 2 confirmations, 2 addresses\n" in out


def test_check_config_summary_says_one_in_the_singular(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = REGTEST.read_text()
    for old, new in [("max_lag_blocks: 20", "max_lag_blocks: 1"),
                     ("retry_schedule_min: [0.05, 0.1, 0.25, 0.5, 1]", "retry_schedule_min: [1]"),
                     ("ETH:  {min_confirmations: 2}", "ETH:  {min_confirmations: 0}")]:  # fmt: skip
        assert old in text
        text = text.replace(old, new)
    config = tmp_path / "one.yaml"
    config.write_text(text)
    assert main(["check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "lag at most 1 block)" in out and ", 1 retry over 1 min," in out
    assert "  ETH: native, 18 decimals, 0 confirmations, 2 addresses\n" in out
    assert not re.search(r"\b1 (blocks|retries|confirmations|addresses|decimals)\b", out), out


def test_python_dash_m_is_the_same_program() -> None:
    bad = CASES / "bad" / "unknown_adapter.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "watcher", "check-config", "--config", str(bad)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and "unknown adapter" in done.stderr


def test_the_demo_is_not_a_daemon_command(capsys: pytest.CaptureFixture[str]) -> None:
    # The demo lives in the checkout (`make demo`, `python -m devnet`), not in the installed daemon.
    with pytest.raises(SystemExit) as exited:
        main(["devnet"])
    assert exited.value.code == 2 and "invalid choice: 'devnet'" in capsys.readouterr().err


def test_store_commands_on_empty_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEVNET_DATABASE", str(tmp_path / "w.sqlite3"))
    config = REGTEST
    assert main(["deposits", "--config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["callbacks", "--config", str(config), "--failed", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["resend", "--config", str(config), "7"]) == 1
    assert "deposit 7 has no callback" in capsys.readouterr().err
    assert main(["backup", "--config", str(config), str(tmp_path / "b.sqlite3")]) == 0
    assert "integrity: ok" in capsys.readouterr().out
    assert main(["backup", "--config", str(config), str(tmp_path / "b.sqlite3")]) == 1  # never overwrites
    assert "exists" in capsys.readouterr().err
    assert main(["status", "--config", str(config)]) == 1  # no daemon is running
    assert "does not answer" in capsys.readouterr().err


def test_deposits_show_exact_decimals_and_base_units(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEVNET_DATABASE", str(tmp_path / "w.sqlite3"))
    # 0.25 ETH, 12.5 USDT, 1 satoshi, and an amount of a currency no longer in the config (decimals unknown).
    paid = [("ethereum", "ETH", 250_000_000_000_000_000), ("ethereum", "USDT", 12_500_000),
            ("bitcoin", "BTC", 1), ("ethereum", "DAI", 7 * 10**18)]  # fmt: skip
    asyncio.run(_store_with_deposits(str(tmp_path / "w.sqlite3"), paid))

    assert main(["deposits", "--config", str(REGTEST), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["currency"], r["amount"], r["amount_decimal"]) for r in rows] == [
        ("ETH", "250000000000000000", "0.250000000000000000"),
        ("USDT", "12500000", "12.500000"),
        ("BTC", "1", "0.00000001"),
        ("DAI", "7000000000000000000", None),
    ]
    assert main(["deposits", "--config", str(REGTEST)]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["ID", "CURRENCY", "AMOUNT", "BASE_UNITS"]
    assert [line.split()[1:4] for line in lines] == [
        ["ETH", "0.250000000000000000", "250000000000000000"],
        ["USDT", "12.500000", "12500000"],
        ["BTC", "0.00000001", "1"],
        ["DAI", "?", "7000000000000000000"],
    ]


async def _store_with_deposits(path: str, paid: list[tuple[str, str, int]]) -> None:
    """A real store holding one deposit per entry, each to its own address."""
    store = await Store.open(path)
    try:
        new = [
            NewAddress(chain, cur, bytes([n + 1]) * 20, f"a{n}", f"c-{n}")
            for n, (chain, cur, _) in enumerate(paid)
        ]
        for chain in {a.chain for a in new}:
            await store.sync_addresses(chain, [a for a in new if a.chain == chain])
        for n, (a, (chain, currency, amount)) in enumerate(zip(new, paid, strict=True)):
            address_id = (await store.watch_keys(chain))[currency][a.watch_key]
            async with store.transaction() as tx:
                await tx.insert_deposit(
                    chain=chain, currency=currency, address_id=address_id, txid=f"t{n}", tx_index=0,
                    amount=amount, sender=None, nonce=None, inputs=(), now=1.0,
                )  # fmt: skip
    finally:
        await store.close()
