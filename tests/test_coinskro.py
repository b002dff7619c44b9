"""The Coinskro webhook body and signature (watcher/coinskro.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
from decimal import Decimal

import pytest

from watcher import coinskro
from watcher.model import PaymentStatus

SEED_KEYS = ["payment_reference", "integration_id", "amount", "currency", "status", "customer_email",
             "customer_reference", "meta_data"]  # fmt: skip


def body(**changes: object) -> bytes:
    fields: dict[str, object] = dict(
        event="payment_completed", at=1_770_374_100.9, payment_reference="PAY_abc123xyz",
        integration_id="123e4567-e89b-12d3-a456-426614174000", amount=10**18 + 1, decimals=18,
        currency="ETH", status=PaymentStatus.COMPLETED, customer_email="customer@example.com",
        customer_reference="CUST_12345", meta_data='{"order_id": "123"}',
    )  # fmt: skip
    fields.update(changes)
    return coinskro.build_body(**fields)  # type: ignore[arg-type]


def test_the_seeds_payload_with_an_exact_decimal_number() -> None:
    raw = body()
    parsed = json.loads(raw, parse_float=Decimal)
    assert list(parsed) == ["event", "timestamp", "data"]
    assert parsed["event"] == "payment_completed"
    assert parsed["timestamp"] == "2026-02-06T10:35:00Z"
    assert list(parsed["data"]) == SEED_KEYS
    assert parsed["data"]["amount"] == Decimal("1.000000000000000001")
    assert b'"amount":1.000000000000000001,' in raw
    assert parsed["data"]["status"] == "completed"
    assert parsed["data"]["meta_data"] == '{"order_id": "123"}'


AMOUNTS = [
    (150_000, 8, b"0.00150000"),
    (5, 6, b"0.000005"),
    (12_000_000, 6, b"12.000000"),
    (0, 8, b"0.00000000"),
]


@pytest.mark.parametrize(("amount", "decimals", "text"), AMOUNTS)
def test_amount_text_in_the_currencys_precision(amount: int, decimals: int, text: bytes) -> None:
    assert b'"amount":' + text + b"," in body(amount=amount, decimals=decimals)


def test_strings_cannot_break_out_of_their_field() -> None:
    hostile = '"},"amount":0,"x":"\x00amount\x00<script>'
    raw = body(customer_email=None, customer_reference=hostile, meta_data=hostile)
    data = json.loads(raw)["data"]
    assert data["customer_reference"] == hostile and data["meta_data"] == hostile
    assert data["customer_email"] is None
    assert json.loads(raw, parse_float=Decimal)["data"]["amount"] == Decimal("1.000000000000000001")


def test_events_and_unknown_event() -> None:
    assert coinskro.EVENTS == ("payment_linked", "payment_completed", "payment_abandoned", "payment_canceled")
    with pytest.raises(ValueError, match="unknown event"):
        body(event="payment_pending")


def test_signature_is_hmac_sha256_of_the_exact_bytes() -> None:
    raw = body()
    expected = hmac.new(b"whsec", raw, hashlib.sha256).hexdigest()
    assert coinskro.sign(raw, "whsec") == expected
    sent = {"Content-Type": "application/json", "X-Coinskro-Signature": expected}
    assert coinskro.headers(raw, "whsec") == sent
    assert coinskro.verify(raw, "whsec", expected)
    assert not coinskro.verify(raw + b" ", "whsec", expected)
    assert not coinskro.verify(raw, "whsec", "zz\u00e9")
