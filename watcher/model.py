"""The daemon's own values: watched addresses, deposits and outbox entries, as the store returns them."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class DepositStatus(enum.StrEnum):
    NOT_CONFIRMED = "not_confirmed"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self is not DepositStatus.NOT_CONFIRMED


class OutboxState(enum.StrEnum):
    PENDING = "pending"  # waiting for its (next) attempt
    DELIVERED = "delivered"  # the merchant answered 2xx
    FAILED = "failed"  # every scheduled attempt failed; can be resent by hand
    SUPERSEDED = "superseded"  # a later status of the same deposit replaced it before delivery


@dataclass(frozen=True, slots=True)
class WatchedAddress:
    id: int
    chain: str
    currency: str
    address: str  # as configured
    foreign_id: str
    watch_key: bytes


@dataclass(frozen=True, slots=True)
class Deposit:
    id: int
    chain: str
    currency: str
    address_id: int
    address: str  # as configured
    foreign_id: str
    txid: str
    tx_index: int
    amount: int  # base units
    block_height: int | None
    block_hash: str | None
    confirmations: int
    status: DepositStatus
    error: str
    first_seen_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    id: int
    deposit_id: int
    status: DepositStatus
    body: bytes  # the exact bytes sent and signed; a resend sends the same bytes
    state: OutboxState
    attempts: int
    created_at: float
    first_attempt_at: float | None
    next_attempt_at: float


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """The outcome of one delivery attempt, as logged."""

    outbox_id: int
    attempted_at: float
    duration_ms: float
    http_status: int | None
    error: str  # empty on success
    response_excerpt: str

    @property
    def ok(self) -> bool:
        return self.http_status is not None and 200 <= self.http_status < 300
