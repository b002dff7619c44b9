"""`deposit-watcher payments ...` through the CLI's main(), on a real SQLite store and a config loaded from
YAML: the same book as the API, so the same answers and refusals."""

from __future__ import annotations

import json

import pytest

from tests.test_cli_addresses import config, run  # noqa: F401 (the fixture)
from watcher.config import Config


def create(capsys: pytest.CaptureFixture[str], key: str, *extra: str) -> tuple[int, str, str]:
    argv = ("payments", "create", "--currency", "BTC", "--amount", "0.0015", "--idempotency-key", key)
    return run(capsys, *argv, *extra)


def test_create_list_show_cancel(config: Config, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    code, out, _ = create(capsys, "order-1", "--customer-reference", "o-1", "--json")
    payment = json.loads(out)
    assert code == 0 and payment["created"] is True and payment["status"] == "pending"
    assert payment["payment_uri"] == f"bitcoin:{payment['address']}?amount=0.0015"
    code, out, _ = create(capsys, "order-1", "--customer-reference", "o-1")
    assert code == 0 and "(already created with this key)" in out and payment["payment_reference"] in out
    reference = payment["payment_reference"]
    code, out, _ = run(capsys, "payments", "list", "--json")
    assert code == 0 and [json.loads(line)["payment_reference"] for line in out.splitlines()] == [reference]
    code, out, _ = run(capsys, "payments", "cancel", reference)
    assert code == 0 and out.startswith(f"{reference} canceled 0.00150000 BTC")
    code, out, _ = run(capsys, "payments", "show", reference, "--json")
    shown = json.loads(out)
    assert (shown["status"], shown["transactions"], shown["attempts"]) == ("canceled", [], [])
    # the addresses commands do not list a payment's address
    code, out, _ = run(capsys, "addresses", "list", "--json")
    assert json.loads(out) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ("create", "--currency", "BTC", "--amount", "1.000000001", "--idempotency-key", "k"),
            "error: amount: ",
        ),
        (("create", "--currency", "DOGE", "--amount", "1", "--idempotency-key", "k"), "error: currency: "),
        (("show", "PAY_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), "error: payment_reference: no such payment"),
        (("resend", "PAY_x"), "error: payment_reference: no such payment"),
        (("list", "--status", "paid"), "error: status: must be one of"),
    ],
)
def test_refusals_exit_1_naming_the_field(
    config: Config,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    argv: tuple[str, ...],
    message: str,
) -> None:
    code, out, err = run(capsys, "payments", *argv)
    assert (code, out) == (1, "") and err.startswith(message) and len(err.splitlines()) == 1, err
