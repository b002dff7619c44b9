"""The command line as operators use it: exit codes, one-line config errors, the store commands."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from watcher.cli import main

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


def test_python_dash_m_is_the_same_program() -> None:
    bad = CASES / "bad" / "unknown_adapter.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "watcher", "check-config", "--config", str(bad)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and "unknown adapter" in done.stderr


def test_store_commands_on_empty_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    text = REGTEST.read_text().replace("./devnet-data/watcher.sqlite3", str(tmp_path / "w.sqlite3"))
    config.write_text(text)
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
