"""The demo (`make demo`: `python -m devnet`) against real anvil and bcoin nodes, the daemon and receiver.

It runs config/regtest.yaml (with its run's values filled in), shows every callback, keeps running until
Ctrl-C or SIGTERM (both stop everything it started), and the store agrees with what the receiver printed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

import pytest

from devnet import REPO_ROOT
from devnet.demo import run_demo
from devnet.demo_config import TEMPLATE, DemoConfigError, render
from watcher.cli import main

# "  callback: confirmed     ETH   0.250000000000000000 tx=0x5952c8b2…da09 conf=2 id=1"
CALLBACK_LINE = re.compile(r"callback: (\w+)\s+(\w+)\s+([0-9.]+) tx=\S+ conf=\d+ id=(\d+)")


def _printed_callbacks(out: str) -> set[tuple[int, str]]:
    return {(int(m[4]), m[1]) for m in CALLBACK_LINE.finditer(out)}


def _store_callbacks(config: Path, capsys: pytest.CaptureFixture[str]) -> dict[tuple[int, str], str]:
    """(deposit id, status) -> outbox state, as `deposit-watcher callbacks --json` lists them."""
    capsys.readouterr()
    assert main(["callbacks", "--config", str(config), "--json"]) == 0
    return {(e["deposit_id"], e["status"]): e["state"] for e in json.loads(capsys.readouterr().out)}


def _assert_printed_callbacks_delivered(out: str, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # If this fails with `pending`, the daemon exited on SIGTERM before recording answers it already had.
    printed = _printed_callbacks(out)
    states = _store_callbacks(config, capsys)
    assert printed and {key: states.get(key) for key in printed} == dict.fromkeys(printed, "delivered")


def test_demo_exit_after_deposits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(rounds=2, data_dir=str(tmp_path), exit_after_deposits=True) == 0
    out = capsys.readouterr().out
    for currency in ("BTC", "ETH", "USDT", "USDC"):
        assert out.count(f"not_confirmed {currency}") == 2
        assert out.count(f"confirmed     {currency}") == 2
    assert "all signatures valid: True" in out and "Ctrl-C to stop" not in out
    config = tmp_path / "config.yaml"
    _assert_printed_callbacks_delivered(out, config, capsys)

    # The config that ran is config/regtest.yaml: every line without a DEVNET_* value is kept as is.
    ran = config.read_text().splitlines()
    kept = [line for line in TEMPLATE.read_text().splitlines() if "${DEVNET_" not in line]
    assert [line for line in ran if line in kept] == kept and "${DEVNET_" not in config.read_text()

    # `deposits` says what the callbacks said: the same exact decimal, and the base units.
    printed_amounts = {(m[2], m[3]) for m in CALLBACK_LINE.finditer(out)}
    assert main(["deposits", "--config", str(config), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["currency"], r["amount_decimal"]) for r in rows} == printed_amounts
    assert {(r["currency"], r["amount"]) for r in rows} == {
        ("ETH", "250000000000000000"), ("USDT", "12500000"), ("USDC", "99000001"), ("BTC", "1500000")
    }  # fmt: skip


def _read_until(stream: IO[str], marker: str, seen: list[str]) -> None:
    """Read the demo's output line by line until one contains `marker` (pytest's timeout bounds it)."""
    while True:
        line = stream.readline()
        if not line:
            pytest.fail(f"the demo ended before printing {marker!r}:\n" + "".join(seen))
        seen.append(line)
        if marker in line:
            return


def _pids(out: str) -> list[int]:
    """anvil's, bcoin's and the daemon's process ids, as the demo printed them."""
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", out)]
    assert len(pids) == 3, out
    return pids


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_demo_runs_until_a_signal_then_stops_everything(
    how: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "devnet", "--data-dir", str(tmp_path)], cwd=REPO_ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    assert demo.stdout is not None
    seen: list[str] = []
    try:
        _read_until(demo.stdout, "Ctrl-C to stop", seen)
        if how == "ctrl-c":
            # It keeps mining: a payment sent with the command it printed gets both its callbacks.
            [command] = [line.split("] ", 1)[1].strip() for line in seen if "eth_sendTransaction" in line]
            assert subprocess.run(command, shell=True, capture_output=True, timeout=60).returncode == 0
            _read_until(demo.stdout, "confirmed     ETH           1.000000000000000000", seen)
            os.killpg(demo.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
        else:
            demo.send_signal(signal.SIGTERM)
        rest, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    out = "".join(seen) + rest
    assert demo.returncode == 0, out
    assert (
        f"{'SIGINT' if how == 'ctrl-c' else 'SIGTERM'}: stopping" in out
        and "daemon stopped (exit code 0)" in out
    )
    assert all(_gone(pid) for pid in _pids(out)), out
    _assert_printed_callbacks_delivered(out, tmp_path / "config.yaml", capsys)


def test_render_names_the_template_when_a_value_has_no_place(tmp_path: Path) -> None:
    template = tmp_path / "t.yaml"
    template.write_text("database: ${DEVNET_DATABASE:-x.sqlite3}\nlisten: ${DEVNET_STATUS_LISTEN}\n")
    text = render(template, {"DEVNET_DATABASE": "./w.sqlite3", "DEVNET_STATUS_LISTEN": "127.0.0.1:1"})
    assert text.splitlines()[1:] == ["database: ./w.sqlite3", "listen: 127.0.0.1:1"]
    with pytest.raises(DemoConfigError, match=r"t\.yaml: no \$\{DEVNET_EVM_RPC_URL\} to fill in"):
        render(template, {"DEVNET_EVM_RPC_URL": "http://127.0.0.1:1"})
