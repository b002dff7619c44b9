"""Unit tests for the pure callback functions: amounts, body, signature, retry schedule, excerpts."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcher import callbacks
from watcher.config import DEFAULT_RETRY_SCHEDULE_MIN
from watcher.model import Deposit, DepositStatus

# ------------------------------------------------------------------------------------------- amounts


@pytest.mark.parametrize(
    ("amount", "decimals", "expected"),
    [
        (1_500_000, 8, "0.01500000"),  # BTC 0.015
        (0, 8, "0.00000000"),
        (2_100_000_000_000_000, 8, "21000000.00000000"),
        (1, 18, "0.000000000000000001"),  # 1 wei
        (10**18, 18, "1.000000000000000000"),
        (10**30, 18, "1000000000000.000000000000000000"),  # beyond any float's precision
        (123_456_789_012_345_678_901, 18, "123.456789012345678901"),
        (15, 0, "15"),
        (0, 0, "0"),
        (1_234_567, 6, "1.234567"),  # USDT
        (1, 6, "0.000001"),
        (100_000_000, 6, "100.000000"),
    ],
)
def test_format_amount(amount: int, decimals: int, expected: str) -> None:
    assert callbacks.format_amount(amount, decimals) == expected


@pytest.mark.parametrize(
    ("amount", "decimals", "error"),
    [
        (-1, 8, ValueError),
        (1, -1, ValueError),
        (1.5, 8, TypeError),
        (True, 8, TypeError),
        ("1", 8, TypeError),
    ],
)
def test_format_amount_rejects(amount: Any, decimals: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        callbacks.format_amount(amount, decimals)


@given(st.integers(min_value=0, max_value=10**40), st.integers(min_value=0, max_value=30))
def test_format_amount_is_exact(amount: int, decimals: int) -> None:
    text = callbacks.format_amount(amount, decimals)
    # Integer arithmetic on the digits: Decimal's default 28-digit context would itself round.
    assert int(text.replace(".", "")) == amount
    whole = text.split(".")[0]
    assert whole == "0" or not whole.startswith("0")
    if decimals:
        assert len(text.split(".")[1]) == decimals
    else:
        assert "." not in text


# ------------------------------------------------------------------------------------------- body

TXID = "3950ad81c4bb0b4d7b2e1e0c0e5b3c1b0fd7b6e1a1a2e3f4c5d6e7f8091a2b3c"
ADDRESS = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"

# The example from callbacks.md, verbatim.
DOC_EXAMPLE: dict[str, Any] = {
    "id": 2686563,
    "type": "deposit",
    "crypto_address": {
        "id": 381,
        "currency": "BTC",
        "address": ADDRESS,
        "foreign_id": "customer-2048",
        "tag": None,
    },
    "currency_sent": {"currency": "BTC", "amount": "0.01500000"},
    "currency_received": {"currency": "BTC", "amount": "0.01500000", "amount_minus_fee": "0.01500000"},
    "transactions": [
        {
            "id": 2686563,
            "currency": "BTC",
            "transaction_type": "blockchain",
            "type": "deposit",
            "address": ADDRESS,
            "tag": None,
            "amount": "0.01500000",
            "txid": TXID,
            "confirmations": "1",
        }
    ],
    "fees": [],
    "error": "",
    "status": "not_confirmed",
}
EXTRA_TX_KEYS = {"block_height", "block_hash", "index", "network", "chain"}


def make_deposit(**changes: Any) -> Deposit:
    base = Deposit(
        id=2686563,
        chain="bitcoin",
        currency="BTC",
        address_id=381,
        address=ADDRESS,
        foreign_id="customer-2048",
        txid=TXID,
        tx_index=1,
        amount=1_500_000,
        block_height=840_000,
        block_hash="00" * 32,
        confirmations=1,
        status=DepositStatus.NOT_CONFIRMED,
        error="",
        first_seen_at=1_700_000_000.0,
        updated_at=1_700_000_060.0,
    )
    return dataclasses.replace(base, **changes)


def parsed_body(deposit: Deposit, decimals: int = 8, network: str = "mainnet") -> dict[str, Any]:
    body = json.loads(callbacks.build_body(deposit, decimals, network))
    assert isinstance(body, dict)
    return body


def test_body_matches_documented_example() -> None:
    body = parsed_body(make_deposit())
    tx = body["transactions"][0]
    assert {k: v for k, v in tx.items() if k not in EXTRA_TX_KEYS} == DOC_EXAMPLE["transactions"][0]
    body["transactions"] = [DOC_EXAMPLE["transactions"][0]]
    assert body == DOC_EXAMPLE


def test_body_documented_key_order() -> None:
    body = parsed_body(make_deposit())
    assert list(body) == list(DOC_EXAMPLE)
    assert list(body["crypto_address"]) == list(DOC_EXAMPLE["crypto_address"])
    assert list(body["transactions"][0])[:9] == list(DOC_EXAMPLE["transactions"][0])


def test_body_extra_transaction_keys() -> None:
    tx = parsed_body(make_deposit(), network="testnet")["transactions"][0]
    assert tx["block_height"] == 840_000
    assert tx["block_hash"] == "00" * 32
    assert tx["index"] == 1
    assert tx["network"] == "testnet"
    assert tx["chain"] == "bitcoin"


def test_body_mempool_deposit_has_null_block() -> None:
    tx = parsed_body(make_deposit(block_height=None, block_hash=None, confirmations=0))["transactions"][0]
    assert tx["block_height"] is None
    assert tx["block_hash"] is None
    assert tx["confirmations"] == "0"


@pytest.mark.parametrize("confirmations", [0, 1, 10, 12345])
def test_confirmations_is_always_a_string(confirmations: int) -> None:
    tx = parsed_body(make_deposit(confirmations=confirmations))["transactions"][0]
    assert tx["confirmations"] == str(confirmations)


@pytest.mark.parametrize(
    ("currency", "amount", "decimals", "expected"),
    [
        ("BTC", 1_500_000, 8, "0.01500000"),
        ("ETH", 1, 18, "0.000000000000000001"),
        ("ETH", 10**30, 18, "1000000000000.000000000000000000"),
        ("USDT", 25_000_000, 6, "25.000000"),
    ],
)
def test_body_amounts(currency: str, amount: int, decimals: int, expected: str) -> None:
    body = parsed_body(make_deposit(currency=currency, amount=amount), decimals)
    assert body["currency_sent"] == {"currency": currency, "amount": expected}
    received = {"currency": currency, "amount": expected, "amount_minus_fee": expected}
    assert body["currency_received"] == received
    assert body["crypto_address"]["currency"] == currency
    assert body["transactions"][0]["currency"] == currency
    assert body["transactions"][0]["amount"] == expected
    assert body["fees"] == []


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (DepositStatus.NOT_CONFIRMED, ""),
        (DepositStatus.CONFIRMED, ""),
        (DepositStatus.CANCELLED, "transaction left the chain in a reorg"),
    ],
)
def test_body_status_and_error(status: DepositStatus, error: str) -> None:
    body = parsed_body(make_deposit(status=status, error=error))
    assert body["status"] == status.value
    assert body["error"] == error


def test_body_bytes_are_deterministic_and_compact() -> None:
    deposit = make_deposit(foreign_id="klant-é-42")
    raw = callbacks.build_body(deposit, 8, "mainnet")
    assert raw == callbacks.build_body(deposit, 8, "mainnet")
    assert b", " not in raw
    assert b'": ' not in raw
    assert "klant-é-42".encode() in raw  # UTF-8, not \u escapes
    assert raw.startswith(b'{"id":2686563,"type":"deposit",')


def test_body_keeps_address_as_configured() -> None:
    mixed = "0x52908400098527886E0F7030069857D2E4169EE7"  # EIP-55 checksummed, mixed case
    body = parsed_body(make_deposit(chain="ethereum", currency="ETH", address=mixed), 18)
    assert body["crypto_address"]["address"] == mixed
    assert body["transactions"][0]["address"] == mixed


# ------------------------------------------------------------------------------------------- signature

VECTOR_SECRET = "AbCdEfG123456"
VECTOR_BODY = b'{"currency":"BTC","foreign_id":"123456"}'
VECTOR_SIGNATURE = (
    "03c25fcf7cd35e7d995e402cd5d51edd72d48e1471e865907967809a0c189ba5"
    "5b90815f20e2bb10f82c7a9e9d865546fda58989c2ae9e8e2ff7bc29195fa1ec"
)


def test_sign_documented_vector() -> None:
    assert callbacks.sign(VECTOR_BODY, VECTOR_SECRET) == VECTOR_SIGNATURE


@pytest.mark.parametrize(
    ("body", "secret", "signature", "ok"),
    [
        (VECTOR_BODY, VECTOR_SECRET, VECTOR_SIGNATURE, True),
        (VECTOR_BODY, "other-secret", VECTOR_SIGNATURE, False),
        (VECTOR_BODY + b" ", VECTOR_SECRET, VECTOR_SIGNATURE, False),  # any byte changes it
        (VECTOR_BODY, VECTOR_SECRET, VECTOR_SIGNATURE[:-1], False),
        (VECTOR_BODY, VECTOR_SECRET, "", False),
        (VECTOR_BODY, VECTOR_SECRET, "ü" * 128, False),  # non-ASCII header must not raise
    ],
)
def test_verify(body: bytes, secret: str, signature: str, ok: bool) -> None:
    assert callbacks.verify(body, secret, signature) is ok


def test_headers() -> None:
    assert callbacks.headers(VECTOR_BODY, "pub-key", VECTOR_SECRET) == {
        "Content-Type": "application/json",
        "X-Processing-Key": "pub-key",
        "X-Processing-Signature": VECTOR_SIGNATURE,
    }


# ------------------------------------------------------------------------------------------- schedule

T0 = 1_700_000_000.0


@pytest.mark.parametrize(
    ("attempts_done", "schedule", "expected"),
    [
        (1, DEFAULT_RETRY_SCHEDULE_MIN, T0 + 60),
        (2, DEFAULT_RETRY_SCHEDULE_MIN, T0 + 5 * 60),
        (3, DEFAULT_RETRY_SCHEDULE_MIN, T0 + 10 * 60),
        (13, DEFAULT_RETRY_SCHEDULE_MIN, T0 + 240 * 60),  # the last retry
        (14, DEFAULT_RETRY_SCHEDULE_MIN, None),  # first attempt + 13 retries: failed
        (1, (0.5,), T0 + 30),
        (2, (0.5,), None),
        (1, (), None),  # no retries configured: one attempt only
    ],
)
def test_next_attempt_at(attempts_done: int, schedule: tuple[float, ...], expected: float | None) -> None:
    assert callbacks.next_attempt_at(T0, attempts_done, schedule) == expected


def test_next_attempt_counts_from_first_attempt_not_previous() -> None:
    # Minutes after the first attempt: a delay in attempt 2 does not push attempt 3 back.
    assert callbacks.next_attempt_at(T0, 2, (1, 5)) == T0 + 300


def test_next_attempt_in_the_past_is_returned() -> None:
    # After a long outage the computed time is already past; the caller sends at once.
    due = callbacks.next_attempt_at(T0 - 86_400, 1, DEFAULT_RETRY_SCHEDULE_MIN)
    assert due is not None and due < T0


def test_next_attempt_requires_an_attempt() -> None:
    with pytest.raises(ValueError):
        callbacks.next_attempt_at(T0, 0, DEFAULT_RETRY_SCHEDULE_MIN)


# ------------------------------------------------------------------------------------------- excerpt


@pytest.mark.parametrize(
    ("data", "limit", "expected"),
    [
        (b"ok", 512, "ok"),
        (b"", 512, ""),
        (b"line one\r\nline\ttwo\x00\x1b[31m", 512, "line one line two [31m"),
        (b"\xff\xfebad utf8", 512, "\ufffd\ufffdbad utf8"),
        ("héllo".encode(), 512, "héllo"),
        (b"abcdefghij", 5, "abcd…"),
        (b"abcde", 5, "abcde"),
    ],
)
def test_excerpt(data: bytes, limit: int, expected: str) -> None:
    assert callbacks.excerpt(data, limit) == expected


def test_excerpt_of_huge_body_is_short() -> None:
    text = callbacks.excerpt(b"<html>" + b"x" * 8_000_000)
    assert len(text) == 512
    assert text.startswith("<html>xxx")
    assert text.endswith("…")
