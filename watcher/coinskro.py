"""The Coinskro webhook format (`format: coinskro`): payment event bodies and their signature. Pure.

The body is the Coinskro "Webhook Payload": `event`, `timestamp` and `data` with exactly the keys its
handlers read. `amount` is a JSON number, because the published handlers read it as one (Go decodes it
into a float64, the Node example compares it with `!==`), but its text is the exact decimal in the
currency's precision (`0.00150000` for BTC, 18 digits for ETH): receivers that parse the raw text as a
decimal get the exact amount, and docs/webhooks.md tells them to. The bytes are built once, when the
change is committed, signed with HMAC-SHA256 of exactly those bytes (`X-Coinskro-Signature`, lowercase
hex: the seed names the header but not the algorithm) and resent unchanged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime

from watcher.callbacks import CONTENT_TYPE, format_amount
from watcher.model import PaymentStatus

SIGNATURE_HEADER = "X-Coinskro-Signature"
EVENTS = tuple(s.event for s in PaymentStatus if s is not PaymentStatus.PENDING)
DEFAULT_EVENTS = ("payment_completed",)  # the seed: "most integrations only need payment_completed"
# The seed's retry policy: 1 minute, 5 minutes, 30 minutes, 2 hours, 24 hours, then failed.
DEFAULT_RETRY_SCHEDULE_MIN = (1.0, 5.0, 30.0, 120.0, 1440.0)


class _Raw(str):
    """JSON text written as it is: the amount's exact decimal (json.dumps would need a float, losing
    digits, or quote it as a string)."""


def _object(items: Mapping[str, object]) -> str:
    """A compact JSON object, keys in order; a `_Raw` value is written as its text."""
    fields = (f"{json.dumps(k)}:{v if isinstance(v, _Raw) else _dumps(v)}" for k, v in items.items())
    return "{" + ",".join(fields) + "}"


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def timestamp(at: float) -> str:
    """ISO 8601 in UTC with `Z`, to the second (the seed's `2026-02-06T10:35:00Z`)."""
    return datetime.fromtimestamp(int(at), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_body(
    *,
    event: str,
    at: float,
    payment_reference: str,
    integration_id: str,
    amount: int,
    decimals: int,
    currency: str,
    status: PaymentStatus,
    customer_email: str | None,
    customer_reference: str | None,
    meta_data: str | None,
) -> bytes:
    """The exact bytes of one webhook: compact UTF-8 JSON, keys in the seed's order."""
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}; expected one of {', '.join(EVENTS)}")
    data = {
        "payment_reference": payment_reference,
        "integration_id": integration_id,
        "amount": _Raw(format_amount(amount, decimals)),
        "currency": currency,
        "status": str(status),
        "customer_email": customer_email,
        "customer_reference": customer_reference,
        "meta_data": meta_data,
    }
    text = _object({"event": event, "timestamp": timestamp(at), "data": _Raw(_object(data))})
    return text.encode("utf-8")


def sign(body: bytes, secret: str) -> str:
    """HMAC-SHA256 of the exact body bytes keyed with the integration's webhook secret, lowercase hex."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, signature: str) -> bool:
    """True when `signature` is the signature of `body`; constant-time comparison."""
    return hmac.compare_digest(sign(body, secret).encode("ascii"), signature.encode("utf-8"))


def headers(body: bytes, secret: str) -> dict[str, str]:
    """The HTTP headers of a webhook carrying `body`."""
    return {"Content-Type": CONTENT_TYPE, SIGNATURE_HEADER: sign(body, secret)}
