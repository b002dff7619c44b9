"""One error root (watcher.errors) and exit codes chosen by the error's class, the same for every command
and for `run`, and agreeing with what the unit file and the README say."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from watcher import daemon, errors
from watcher.cli import main
from watcher.config import Config
from watcher.errors import (
    ChainHalted,
    ConfigError,
    ConfigRefused,
    NestingError,
    RescanError,
    StoreError,
    WatcherError,
    exit_code_of,
)

ROOT = Path(__file__).resolve().parent.parent
REGTEST = ROOT / "config" / "regtest.yaml"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("w.yaml", 3, "chains", "bad"), 1),
        (NestingError("w.yaml", 3, 10), 1),
        (StoreError("locked"), 1),
        (RescanError("no chain"), 1),
        (ChainHalted("reorg too deep"), 1),
        (ConfigRefused("USDT decimals"), 78),
        (RuntimeError("a bug"), 1),
        (sqlite3.OperationalError("disk full"), 1),
    ],
)
def test_exit_code_by_class(error: BaseException, code: int) -> None:
    assert exit_code_of(error) == code


def test_every_daemon_error_has_the_one_root_and_a_docstring() -> None:
    found = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, BaseException)]
    assert {c.__name__ for c in found} == {
        "WatcherError", "ConfigError", "NestingError", "ConfigRefused", "StoreError", "ChainHalted",
        "RescanError", "RequestRefused", "ImportFileError", "HelperFailed", "Deposed",
    }  # fmt: skip
    for cls in found:
        assert issubclass(cls, WatcherError)
        assert cls.__doc__ and cls.__doc__.strip()
    # A config nested too deep is a config error, with the same one-line shape.
    nested = NestingError("w.yaml", 7, 10_000)
    assert isinstance(nested, ConfigError)
    assert str(nested) == "w.yaml:7: (yaml): nested more than 10000 levels deep"


def test_no_other_exception_class_is_defined_in_the_daemon() -> None:
    """The daemon's errors live in watcher/errors.py only (the demo tooling is not the daemon)."""
    for path in sorted((ROOT / "watcher").glob("*.py")):
        if path.name == "errors.py":
            continue
        text = path.read_text()
        assert not re.search(r"^class \w+\((\w+\.)?\w*(Exception|Error)\)", text, re.M), path


def test_the_unit_file_does_not_restart_on_the_config_refused_code() -> None:
    unit = (ROOT / "systemd" / "deposit-watcher.service").read_text()
    assert f"RestartPreventExitStatus={ConfigRefused.exit_code}\n" in unit
    assert "exit code 78" in (ROOT / "README.md").read_text()


class FakeDaemon:
    """Stands in for the daemon in `run_forever`: its run raises what the test gives it."""

    error: BaseException

    def __init__(self, config: Config) -> None:
        pass

    async def run(self) -> None:
        raise self.error


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ExceptionGroup("tasks", [ConfigRefused("ethereum: USDT has 6 decimals, the config says 18")]), 78),
        (StoreError("in use by another deposit-watcher"), 1),
        (sqlite3.OperationalError("database or disk is full"), 1),
        (OSError(98, "Address already in use"), 1),
    ],
)
def test_run_forever_exit_codes(error: BaseException, code: int, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeDaemon.error = error
    monkeypatch.setattr(daemon, "Daemon", FakeDaemon)
    config: Any = None
    assert daemon.run_forever(config) == code


def test_run_forever_does_not_hide_a_crash_that_is_no_config_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeDaemon.error = ExceptionGroup("tasks", [RuntimeError("a bug")])
    monkeypatch.setattr(daemon, "Daemon", FakeDaemon)
    config: Any = None
    with pytest.raises(ExceptionGroup):
        daemon.run_forever(config)


def test_cli_maps_each_error_to_one_line_and_its_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "w.sqlite3"
    monkeypatch.setenv("DEVNET_DATABASE", str(database))
    # RescanError: a chain the config does not have.
    assert main(["rescan", "--config", str(REGTEST), "--chain", "nope", "--from-height", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no chain 'nope' in the config") and err.count("\n") == 1, err
    # StoreError: a store from a newer version of the program, for any store command.
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA user_version = 999")
    for command in (["deposits"], ["callbacks"], ["resend", "1"], ["rescan", "--chain", "bitcoin",
                                                                   "--from-height", "0"]):  # fmt: skip
        assert main([command[0], "--config", str(REGTEST), *command[1:]]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "newer than this program" in err and err.count("\n") == 1, err
    # ConfigError: its own label, as operators know it.
    bad = tmp_path / "bad.yaml"
    bad.write_text(REGTEST.read_text().replace("network: regtest", "network: moon"))
    assert main(["check-config", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert re.match(rf"config error: {re.escape(str(bad))}:\d+: network: must be one of", err), err
