"""The back office's settings (`ui:`) and the operator's password: the scrypt line made by
`deposit-watcher operator-password`, a plain password file refused at load naming the field (and never
echoing the file), bounds, reload re-reading the file, and the summary."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from ipaddress import ip_network
from pathlib import Path

import pytest

from tests.test_config import MINIMAL, load_error, write
from watcher.config import UiConfig, load_config, summary
from watcher.operator_password import hash_password, parse_password_line
from watcher.reload import live_config, restart_needed

ENV = {"DEPOSIT_WATCHER_SECRET": "s"}
PASSWORD = "a long operator password"


def with_ui(tmp_path: Path, ui: str) -> str:
    return write(tmp_path, MINIMAL + ui)


def test_the_hash_line_verifies_only_its_password() -> None:
    hashed = hash_password(PASSWORD)
    line = hashed.line()
    assert line.startswith("$scrypt$ln=15,r=8,p=1$") and PASSWORD not in line
    parsed = parse_password_line(line + "\n")
    assert parsed == hashed
    assert parsed.verify(PASSWORD)
    assert not parsed.verify(PASSWORD + " ") and not parsed.verify("") and not parsed.verify("x" * 2000)
    assert hash_password(PASSWORD).line() != line  # a new salt each time


@pytest.mark.parametrize(
    "text",
    [
        PASSWORD,  # the password itself
        "$scrypt$ln=15,r=8,p=1$c2FsdA$aGFzaA",  # too short
        "$scrypt$ln=40,r=8,p=1$" + "A" * 22 + "$" + "A" * 43,  # out of bounds: hours per check
        "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
    ],
)
def test_anything_but_a_hash_line_is_refused(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_password_line(text)
    assert PASSWORD not in str(info.value)


def test_short_passwords_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 12"):
        hash_password("short")


def test_ui_defaults(tmp_path: Path) -> None:
    config = load_config(with_ui(tmp_path, ""), ENV)
    assert config.ui == UiConfig()
    assert config.ui.operator_password is None
    assert config.ui.operator_allow_from == (ip_network("127.0.0.0/8"), ip_network("::1/128"))
    assert not config.ui.secure_cookie


def test_ui_settings(tmp_path: Path) -> None:
    (tmp_path / "operator").write_text(hash_password(PASSWORD).line() + "\n")
    config = load_config(
        with_ui(
            tmp_path,
            "ui:\n  operator_password_file: operator\n  operator_allow_from: [10.1.0.0/16]\n"
            "  secure_cookie: true\n  session_idle_s: 600\n  session_max_s: 3600\n",
        ),
        ENV,
    )
    assert config.ui.operator_password is not None and config.ui.operator_password.verify(PASSWORD)
    assert config.ui.operator_allow_from == (ip_network("10.1.0.0/16"),)
    assert config.ui.secure_cookie and config.ui.session_idle_s == 600 and config.ui.session_max_s == 3600
    text = summary(config)
    assert "operator from 10.1.0.0/16" in text and "Secure cookie" in text
    assert config.ui.operator_password.line() not in text


def test_a_plain_password_file_is_refused_naming_the_field(tmp_path: Path) -> None:
    (tmp_path / "operator").write_text(PASSWORD + "\n")
    path = with_ui(tmp_path, "ui:\n  operator_password_file: operator\n")
    message = load_error(path, ENV)
    assert message.startswith(f"{path}:16: ui.operator_password_file: "), message
    assert "plain password is refused" in message and "deposit-watcher operator-password" in message
    assert PASSWORD not in message


@pytest.mark.parametrize(
    ("ui", "key", "message"),
    [
        ("ui:\n  operator_password_file: missing\n", "ui.operator_password_file", "cannot read"),
        ("ui:\n  operator_allow_from: [10.1.0.1/16]\n", "ui.operator_allow_from[0]", "host bits set"),
        ("ui:\n  secure_cookie: yes please\n", "ui.secure_cookie", "expected true or false"),
        ("ui:\n  session_idle_s: 0\n", "ui.session_idle_s", "positive"),
        ("ui:\n  session_max_s: 99999999\n", "ui.session_max_s", "at most"),
        ("ui:\n  operator_password: hunter2hunter2\n", "ui.operator_password", "unknown key"),
    ],
)
def test_bad_ui_settings(tmp_path: Path, ui: str, key: str, message: str) -> None:
    error = load_error(with_ui(tmp_path, ui), ENV)
    assert f": {key}: " in error and message in error, error
    assert "hunter2" not in error


def test_a_reload_reads_the_password_file_again(tmp_path: Path) -> None:
    (tmp_path / "operator").write_text(hash_password(PASSWORD).line())
    path = with_ui(tmp_path, "ui:\n  operator_password_file: operator\n")
    old = load_config(path, ENV)
    (tmp_path / "operator").write_text(hash_password("the new operator password").line())
    new = load_config(path, ENV)
    assert restart_needed(old, new) == []
    running = live_config(old, new)
    assert running.ui.operator_password is not None
    assert running.ui.operator_password.verify("the new operator password")
    assert not running.ui.operator_password.verify(PASSWORD)
    assert live_config(old, replace(new, ui=UiConfig())).ui.operator_password is None


def test_the_cli_hashes_a_password_from_stdin(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "watcher", "operator-password"],
        input=PASSWORD + "\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    line = done.stdout.strip()
    assert parse_password_line(line).verify(PASSWORD)
    # The printed line is what the config takes.
    (tmp_path / "operator").write_text(done.stdout)
    config = load_config(with_ui(tmp_path, "ui:\n  operator_password_file: operator\n"), ENV)
    assert config.ui.operator_password is not None and config.ui.operator_password.verify(PASSWORD)
    short = subprocess.run(
        [sys.executable, "-m", "watcher", "operator-password"],
        input="short\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert short.returncode == 1 and "at least 12" in short.stderr and not short.stdout
