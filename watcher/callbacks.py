"""The callback format: CoinsPaid-style deposit bodies, their signature and the retry schedule.

Pure functions only; the dispatcher owns the HTTP and the store owns the bytes. The contract is
docs/callbacks.md: merchants' CoinsPaid handlers must work unchanged, so the keys
documented there are never renamed or removed, amounts are exact decimal strings and `confirmations`
is always a string (the Go SDK rejects an integer).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Sequence
from typing import Any

from watcher.model import Deposit

CONTENT_TYPE = "application/json"
KEY_HEADER = "X-Processing-Key"
SIGNATURE_HEADER = "X-Processing-Signature"

# C0 and C1 control characters (tab and newline included) and DEL: a response body may contain
# anything, the attempt log line must stay one printable line.
_CONTROL_RUN = re.compile(r"[\x00-\x1f\x7f-\x9f\s]+")


def format_amount(amount: int, decimals: int) -> str:
    """Base units as an exact decimal string with exactly `decimals` digits after the point."""
    # bool is an int subclass; True would silently become "1".
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise TypeError(f"amount must be an int in base units, got {type(amount).__name__}")
    if not isinstance(decimals, int) or isinstance(decimals, bool) or decimals < 0:
        raise ValueError(f"decimals must be a non-negative int, got {decimals!r}")
    if amount < 0:
        raise ValueError(f"amount must not be negative, got {amount}")
    if decimals == 0:
        return str(amount)
    whole, fraction = divmod(amount, 10**decimals)
    return f"{whole}.{fraction:0{decimals}d}"


def body_dict(deposit: Deposit, decimals: int, network: str) -> dict[str, Any]:
    """The callback body as a dict, keys in the documented order (see `build_body`)."""
    amount = format_amount(deposit.amount, decimals)
    currency = deposit.currency
    transaction: dict[str, Any] = {
        "id": deposit.id,
        "currency": currency,
        "transaction_type": "blockchain",
        "type": "deposit",
        "address": deposit.address,
        "tag": None,
        "amount": amount,
        "txid": deposit.txid,
        "confirmations": str(deposit.confirmations),
        # Extra keys allowed by the contract; receivers ignore keys they do not know.
        "block_height": deposit.block_height,
        "block_hash": deposit.block_hash,
        "index": deposit.tx_index,
        "network": network,
        "chain": deposit.chain,
    }
    return {
        "id": deposit.id,
        "type": "deposit",
        "crypto_address": {
            "id": deposit.address_id,
            "currency": currency,
            "address": deposit.address,
            "foreign_id": deposit.foreign_id,
            "tag": None,
        },
        "currency_sent": {"currency": currency, "amount": amount},
        # No fee is charged, so what was received is what was sent.
        "currency_received": {"currency": currency, "amount": amount, "amount_minus_fee": amount},
        "transactions": [transaction],
        "fees": [],
        "error": deposit.error,
        "status": str(deposit.status),
    }


def build_body(deposit: Deposit, decimals: int, network: str) -> bytes:
    """The exact bytes of the deposit callback for the deposit's current status.

    Deterministic (fixed key order, compact separators, UTF-8) because these bytes are signed, stored
    in the outbox and resent unchanged.
    """
    return encode(body_dict(deposit, decimals, network))


def encode(body: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON; non-ASCII (e.g. in a foreign_id) is sent as UTF-8, not as \\u escapes."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def sign(body: bytes, secret: str) -> str:
    """HMAC-SHA512 of the exact body bytes keyed with the merchant's secret, lowercase hex."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha512).hexdigest()


def verify(body: bytes, secret: str, signature: str) -> bool:
    """True when `signature` is the signature of `body`; constant-time comparison."""
    # Compare bytes: compare_digest raises TypeError on non-ASCII str, and a forged header may be anything.
    return hmac.compare_digest(sign(body, secret).encode("ascii"), signature.encode("utf-8"))


def headers(body: bytes, key: str, secret: str) -> dict[str, str]:
    """The HTTP headers of a callback carrying `body`."""
    return {
        "Content-Type": CONTENT_TYPE,
        KEY_HEADER: key,
        SIGNATURE_HEADER: sign(body, secret),
    }


def next_attempt_at(
    first_attempt_at: float, attempts_done: int, schedule_min: Sequence[float]
) -> float | None:
    """When to try again after `attempts_done` failed attempts, or None when the schedule is exhausted.

    The schedule is read as minutes after the FIRST attempt (not between attempts), so a slow merchant
    does not stretch it. A time already past (after an outage of the daemon) is returned as is: the
    caller compares it with now and sends at once.
    """
    if attempts_done < 1:
        raise ValueError(f"attempts_done counts attempts already made and starts at 1, got {attempts_done}")
    if attempts_done > len(schedule_min):
        return None
    return first_attempt_at + schedule_min[attempts_done - 1] * 60.0


def excerpt(data: bytes, limit: int = 512) -> str:
    """A one-line printable excerpt of at most `limit` characters of a response body, for the attempt log."""
    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    # A UTF-8 character is at most 4 bytes: decoding more than this cannot change the excerpt, and a
    # multi-megabyte error page is not decoded whole.
    text = data[: limit * 4 + 4].decode("utf-8", errors="replace")
    text = _CONTROL_RUN.sub(" ", text).strip()
    if len(text) > limit or len(data) > limit * 4 + 4:
        return text[: limit - 1] + "…"
    return text
