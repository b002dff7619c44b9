"""Coinskro webhooks and payments in the config: `callback.format: coinskro`, its `events`, an
integration's `payments:` section, in `integrations:` and in `merchant:`, their reload and their summary.

Real YAML files in tmp_path. Every error names file, line and key and repeats no secret.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from watcher import coinskro
from watcher.config import (
    DEFAULT_RETRY_SCHEDULE_MIN,
    Config,
    PaymentsConfig,
    load_config,
    summary,
)
from watcher.errors import ConfigError
from watcher.payment_life import DEFAULT_GRACE_S
from watcher.reload import live_config, restart_needed

SECRET = "webhook-secret-51c9"
SHOP = "3f2c9a1e-5b7d-4c1a-9e8f-0a1b2c3d4e5f"
OUTLET = "9b0e7c55-2d41-4f7e-b3a6-1c8d2e4f6a70"

# A Coinskro shop with every new key, and a CoinsPaid outlet with none of them. Line numbers matter:
# ERRORS below names them.
TWO = f"""\
network: mainnet
database: watcher.sqlite3
integrations:
  - id: {SHOP}
    name: shop
    callback:
      callback_url: https://shop.example/webhooks/coinskro
      secret: ${{SHOP_SECRET}}
      format: coinskro
      events: [payment_linked, payment_completed]
    payments:
      expires_in_s: 900
      max_expires_in_s: 86400
      grace_s: 7200
  - id: {OUTLET}
    name: outlet
    callback:
      callback_url: https://outlet.example/cb
      key: outlet-key
      secret_file: outlet.secret
chains:
  bitcoin:
    adapter: bitcoin-core
    rpc_url: http://127.0.0.1:8332
    currencies:
      BTC: {{}}
"""


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def load(tmp_path: Path, text: str = TWO, name: str = "config.yaml") -> Config:
    (tmp_path / "outlet.secret").write_text("outlet-secret-77\n")
    return load_config(write(tmp_path / name, text), {"SHOP_SECRET": SECRET})


def load_error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert SECRET not in str(info.value) and "\n" not in str(info.value)
    return info.value


# ------------------------------------------------------------------------------------------- valid


def test_a_coinskro_integration_beside_a_coinspaid_one(tmp_path: Path) -> None:
    shop, outlet = load(tmp_path).integrations
    cb = shop.callback
    assert (cb.format, cb.key, cb.secret) == ("coinskro", "", SECRET)  # no key: the seed has none
    assert cb.events == ("payment_linked", "payment_completed")
    assert cb.retry_schedule_min == coinskro.DEFAULT_RETRY_SCHEDULE_MIN == (1, 5, 30, 120, 1440)
    assert shop.payments == PaymentsConfig(expires_in_s=900, max_expires_in_s=86400, grace_s=7200)
    # The outlet keeps CoinsPaid's defaults; payments defaults to 30 min, at most 7 days, 24 h grace.
    assert (outlet.callback.format, outlet.callback.key) == ("coinspaid", "outlet-key")
    assert outlet.callback.retry_schedule_min == DEFAULT_RETRY_SCHEDULE_MIN
    assert outlet.payments == PaymentsConfig(1800.0, 7 * 24 * 3600.0, DEFAULT_GRACE_S)
    assert PaymentsConfig().grace_s == 24 * 3600.0
    assert PaymentsConfig().return_url is None


def test_a_return_url_for_the_checkout_page(tmp_path: Path) -> None:
    url = "https://shop.example/orders/{customer_reference}?paid={payment_reference}&x={{literal}}"
    text = TWO.replace("      grace_s: 7200\n", f"      grace_s: 7200\n      return_url: {url}\n")
    assert load(tmp_path, text).integrations[0].payments.return_url == url


def test_coinskro_defaults_and_a_key_it_does_not_send(tmp_path: Path) -> None:
    text = TWO.replace("      events: [payment_linked, payment_completed]\n", "      key: kept-not-sent\n")
    text = text.replace(
        "      format: coinskro\n", "      format: coinskro\n      retry_schedule_min: [0.5, 2]\n"
    )
    cb = load(tmp_path, text).integrations[0].callback
    assert cb.events == coinskro.DEFAULT_EVENTS == ("payment_completed",)
    assert (cb.key, cb.retry_schedule_min) == ("kept-not-sent", (0.5, 2))


def test_every_event_in_the_order_given(tmp_path: Path) -> None:
    events = ", ".join(reversed(coinskro.EVENTS))
    text = TWO.replace("[payment_linked, payment_completed]", f"[{events}]")
    assert load(tmp_path, text).integrations[0].callback.events == tuple(reversed(coinskro.EVENTS))
    assert set(coinskro.EVENTS) == {
        "payment_linked",
        "payment_completed",
        "payment_abandoned",
        "payment_canceled",
    }


def test_a_merchant_section_with_coinskro_and_payments(tmp_path: Path) -> None:
    text = """\
network: regtest
database: w.sqlite3
merchant:
  callback_url: http://127.0.0.1:3000/webhooks/coinskro
  secret: ${SHOP_SECRET}
  format: coinskro
  events: [payment_completed, payment_abandoned]
  payments: {expires_in_s: 600, grace_s: 3600}
chains:
  ethereum:
    adapter: evm
    rpc_url: http://127.0.0.1:8545
    currencies:
      ETH: {}
"""
    [merchant] = load(tmp_path, text).integrations
    assert (merchant.callback.format, merchant.callback.events) == (
        "coinskro",
        ("payment_completed", "payment_abandoned"),
    )
    assert merchant.payments == PaymentsConfig(expires_in_s=600, grace_s=3600)
    empty = text.replace("  payments: {expires_in_s: 600, grace_s: 3600}", "  payments:")
    assert load(tmp_path, empty, "empty.yaml").integrations[0].payments == PaymentsConfig()


# ------------------------------------------------------------------------------------------- errors

# (what to replace in TWO, with what, the expected line, key and message). Lines are TWO's.
ERRORS = [
    ("      events: [payment_linked, payment_completed]\n", "      events: [payment_paid]\n", 10,
     "integrations[0].callback.events[0]",
     "must be one of payment_linked, payment_completed, payment_abandoned, payment_canceled, got"),
    ("[payment_linked, payment_completed]", "[payment_completed, payment_linked, payment_completed]", 10,
     "integrations[0].callback.events[2]", "payment_completed is listed twice"),
    ("[payment_linked, payment_completed]", "[]", 10, "integrations[0].callback.events",
     "list at least one event (of payment_linked,"),
    ("[payment_linked, payment_completed]", "payment_completed", 10, "integrations[0].callback.events",
     "expected a list, got a string"),
    ("      format: coinskro\n", "", 9, "integrations[0].callback.events",
     "events are chosen for format: coinskro only (this callback's format is coinspaid)"),
    ("      format: coinskro\n", "      format: coinskr0\n", 9, "integrations[0].callback.format",
     "must be one of coinspaid, coinskro, got 'coinskr0'"),
    # A webhook without a signature cannot be verified: the secret stays required.
    ("      secret: ${SHOP_SECRET}\n", "", 6, "integrations[0].callback",
     "one of secret, secret_file is required"),
    # CoinsPaid sends its key in every callback: still required there.
    ("      key: outlet-key\n", "", 17, "integrations[1].callback",
     "missing required key key (format coinspaid sends it as X-Processing-Key)"),
    ("      grace_s: 7200\n", "      grace_s: 0\n", 14, "integrations[0].payments.grace_s",
     "must be a positive number, got 0"),
    ("      grace_s: 7200\n", "      grace_s: 2592001\n", 14, "integrations[0].payments.grace_s",
     "must be at most 2.592e+06, got 2.592e+06"),
    ("      expires_in_s: 900\n", "      expires_in_s: -5\n", 12, "integrations[0].payments.expires_in_s",
     "must be a positive number, got -5"),
    ("      expires_in_s: 900\n", "      expires_in_s: 30 min\n", 12, "integrations[0].payments.expires_in_s",
     "expected a number, got a string"),
    ("      max_expires_in_s: 86400\n", "      max_expires_in_s: .inf\n", 13,
     "integrations[0].payments.max_expires_in_s", "must be a positive number, got inf"),
    ("      max_expires_in_s: 86400\n", "      max_expires_in_s: 31536000\n", 13,
     "integrations[0].payments.max_expires_in_s", "must be at most"),
    ("      expires_in_s: 900\n", "      expires_in_s: 90000\n", 12, "integrations[0].payments.expires_in_s",
     "expires_in_s (90000 s) must not exceed max_expires_in_s (86400 s)"),
    # The bound alone below the default expiry (30 min): the bound is what is wrong.
    ("      expires_in_s: 900\n", "", 12, "integrations[0].payments.max_expires_in_s", None),
    ("      grace_s: 7200\n", "      grace: 7200\n", 14, "integrations[0].payments.grace",
     "unknown key (allowed: expires_in_s, max_expires_in_s, grace_s, return_url)"),
    # The checkout's link back to the shop: a URL, placeholders only in the path or query, only known ones.
    ("      grace_s: 7200\n", "      grace_s: 7200\n      return_url: shop.example/orders\n", 15,
     "integrations[0].payments.return_url", "is not an http:// or https:// URL with a host"),
    ("      grace_s: 7200\n", "      grace_s: 7200\n      return_url: https://shop.example/o/{order}\n", 15,
     "integrations[0].payments.return_url", "unknown placeholder {order}; the only ones are"),
    ("      grace_s: 7200\n",
     "      grace_s: 7200\n      return_url: https://shop.example/o/{customer_reference!r}\n", 15,
     "integrations[0].payments.return_url", "written plain (no format or conversion)"),
    ("      grace_s: 7200\n", "      grace_s: 7200\n      return_url: https://shop.example/o/{x\n", 15,
     "integrations[0].payments.return_url", "unbalanced brace"),
    ("      grace_s: 7200\n",
     "      grace_s: 7200\n      return_url: \"https://{customer_reference}.shop.example/\"\n", 15,
     "integrations[0].payments.return_url", "placeholder in its host"),
    ("      grace_s: 7200\n", "      grace_s: 7200\n      return_url: [https://shop.example]\n", 15,
     "integrations[0].payments.return_url", "expected a string, got a list"),
    ("    payments:\n      expires_in_s: 900\n      max_expires_in_s: 86400\n      grace_s: 7200\n",
     "    payments: 1800\n", 11, "integrations[0].payments",
     "expected a mapping, got an integer"),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "line", "key", "message"), ERRORS)
def test_errors_name_file_line_and_key(
    tmp_path: Path, old: str, new: str, line: int, key: str, message: str | None
) -> None:
    assert old in TWO
    text = TWO.replace(old, new, 1)
    if message is None:  # the bound case: the bound made smaller than the default expiry
        text = text.replace("max_expires_in_s: 86400", "max_expires_in_s: 600")
        line, message = 12, "expires_in_s (1800 s) must not exceed max_expires_in_s (600 s)"
    error = load_error(tmp_path, text)
    assert (error.file, error.line, error.key) == (str(tmp_path / "config.yaml"), line, key), str(error)
    assert message in error.message, str(error)


def test_a_merchant_section_s_payments_error_names_it(tmp_path: Path) -> None:
    text = """\
network: regtest
database: w.sqlite3
merchant:
  callback_url: http://127.0.0.1:3000/webhooks/coinskro
  secret: s
  format: coinskro
  payments:
    expires_in_s: 0
chains:
  ethereum: {adapter: evm, rpc_url: "http://127.0.0.1:8545", currencies: {ETH: {}}}
"""
    error = load_error(tmp_path, text)
    assert (error.line, error.key) == (8, "merchant.payments.expires_in_s"), str(error)


# ------------------------------------------------------------------------------------------- reload


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("      grace_s: 7200\n", "      grace_s: 3600\n"),
        ("      expires_in_s: 900\n", "      expires_in_s: 1200\n"),
        ("      max_expires_in_s: 86400\n", ""),
        ("[payment_linked, payment_completed]", "[payment_completed, payment_canceled]"),
        ("      format: coinskro\n      events: [payment_linked, payment_completed]\n", "      key: k\n"),
    ],
    ids=["grace", "expiry", "bound-default", "events", "to-coinspaid"],
)
def test_payments_and_webhook_settings_change_live(tmp_path: Path, old: str, new: str) -> None:
    before = load(tmp_path, TWO, "before.yaml")
    after = load(tmp_path, TWO.replace(old, new, 1), "after.yaml")
    assert before.integrations != after.integrations
    assert restart_needed(before, after) == []
    assert live_config(before, after).integrations == after.integrations


# ------------------------------------------------------------------------------------------- summary


def test_summary_shows_format_events_and_payments_without_the_secret(tmp_path: Path) -> None:
    text = summary(load(tmp_path))
    for expected in (
        f"integration {SHOP} (shop)",
        "  callback: https://shop.example/webhooks/coinskro, format coinskro, events payment_linked, "
        "payment_completed, timeout 10 s, 5 retries over 1440 min, 20 concurrent",
        "  payments: expire after 900 s unless asked (at most 86400 s), 7200 s grace to confirm one seen "
        "in time",
        f"integration {OUTLET} (outlet)",
        "  callback: https://outlet.example/cb, key 'outlet-key', format coinspaid, timeout 10 s, "
        "13 retries over 240 min",
        "  payments: expire after 1800 s unless asked (at most 604800 s), 86400 s grace",
    ):
        assert expected in text, text
    assert SECRET not in text and "outlet-secret-77" not in text
