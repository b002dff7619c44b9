"""The JSON edge: the daemon's values as the document's schemas, one converter per value.

Amounts leave as exact decimal strings with the currency's decimals (the callbacks' `format_amount`);
times as RFC 3339 in UTC. Nothing here reads a key, a hash or a secret.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from watcher.callbacks import format_amount
from watcher.model import AttemptResult, Deposit, Event, IssuedAddress, OutboxEntry, Payment

# The gap limit most wallets use (BIP-44's); a hint is never below it.
DEFAULT_GAP_LIMIT = 20


def timestamp(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).isoformat().replace("+00:00", "Z")


def address(a: IssuedAddress) -> dict[str, Any]:
    return {
        "id": a.id,
        "integration_id": a.integration_id,
        "currency": a.currency,
        "chain": a.chain,
        "address": a.address,
        "foreign_id": a.foreign_id,
        "source": str(a.source),
        "derivation_path": a.derivation_path,
        "created_at": timestamp(a.created_at),
        "active": a.active,
    }


def deposit(d: Deposit, decimals: int) -> dict[str, Any]:
    return {
        "id": d.id,
        "currency": d.currency,
        "address": d.address,
        "foreign_id": d.foreign_id,
        "txid": d.txid,
        "amount": format_amount(d.amount, decimals),
        "status": str(d.status),
        "confirmations": d.confirmations,
        "block_height": d.block_height,
        "first_seen_at": timestamp(d.first_seen_at),
        "updated_at": timestamp(d.updated_at),
    }


def attempt(r: AttemptResult) -> dict[str, Any]:
    return {
        "attempted_at": timestamp(r.attempted_at),
        "http_status": r.http_status,
        "response_excerpt": r.response_excerpt,
        "duration_ms": round(r.duration_ms, 3),
        "error": r.error,
    }


def resend(o: OutboxEntry) -> dict[str, Any]:
    return {
        "deposit_id": o.deposit_id,
        "status": str(o.status),
        "next_attempt_at": timestamp(o.next_attempt_at),
    }


def payment(p: Payment, decimals: int, uri: str) -> dict[str, Any]:
    return {
        "payment_reference": p.reference,
        "integration_id": p.integration_id,
        "status": str(p.status),
        "amount": format_amount(p.amount, decimals),
        "amount_received": format_amount(p.received, decimals),
        "currency": p.currency,
        "chain": p.chain,
        "address": p.address,
        "payment_uri": uri,
        "customer_email": p.customer_email,
        "customer_reference": p.customer_reference,
        "meta_data": p.meta_data,
        "created_at": timestamp(p.created_at),
        "expires_at": timestamp(p.expires_at),
        "ended_at": None if p.ended_at is None else timestamp(p.ended_at),
    }


def payment_resend(reference: str, o: OutboxEntry) -> dict[str, Any]:
    return {
        "payment_reference": reference,
        "status": str(o.status),
        "next_attempt_at": timestamp(o.next_attempt_at),
    }


def event(e: Event) -> dict[str, Any]:
    return {
        "id": e.id,
        "deposit_id": e.deposit_id,
        "status": str(e.status),
        "confirmations": e.confirmations,
        "created_at": timestamp(e.created_at),
        # The exact callback body the change queued, so a merchant pulling the feed reads what a callback
        # would have told it.
        "deposit": json.loads(e.body),
    }


def gap_limit_hint(highest_index: int | None) -> int:
    """A wallet gap limit (or descriptor range end) that sees every issued address even if none was paid:
    an issued, unpaid address widens the gap the merchant's own wallet must scan (btcpayserver#1728)."""
    if highest_index is None:
        return DEFAULT_GAP_LIMIT
    return max(DEFAULT_GAP_LIMIT, highest_index + 1)
