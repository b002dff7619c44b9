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
    """A callback (a deposit's) or a webhook (a payment's): exactly one of deposit_id and payment_id is set.
    `status` is the deposit's status for a deposit, the payment's (linked, completed, ...) for a payment."""

    id: int
    deposit_id: int | None
    status: DepositStatus | PaymentStatus
    body: bytes  # the exact bytes sent and signed; a resend sends the same bytes
    state: OutboxState
    attempts: int
    created_at: float
    first_attempt_at: float | None
    next_attempt_at: float
    # Whose callback settings it goes with (set where the reader joins it; the nil UUID is `merchant:`).
    integration_id: str = "00000000-0000-0000-0000-000000000000"
    payment_id: int | None = None

    @property
    def subject(self) -> tuple[str, int]:
        """What its order is kept per: ("deposit", id) or ("payment", id). One request in flight each."""
        if self.payment_id is not None:
            return ("payment", self.payment_id)
        assert self.deposit_id is not None  # the store's CHECK: exactly one of them is set
        return ("deposit", self.deposit_id)


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


# ------------------------------------------------------------------------------ the ledger's values
# The ledger plans in memory (watcher/ledger.py) from what the store loads in one call (`LedgerView`),
# and the store applies its `Plan` in one batch: a store across a network pays a few round trips per
# block batch, not several per transfer.

# What makes a deposit unique on its chain: the transaction, the currency, the address, the output/log.
DepositKey = tuple[str, str, int, int]  # (txid, currency, address_id, tx_index)


@dataclass(frozen=True, slots=True)
class TrackedDeposit:
    """A deposit with what the ledger needs to re-check it: the payer's details and when it left the
    chain (or was first seen outside one)."""

    deposit: Deposit
    sender: str | None
    nonce: int | None
    inputs: tuple[str, ...]  # outpoints its transaction spends (Bitcoin), for double-spend detection
    orphaned_at: float | None

    @property
    def key(self) -> DepositKey:
        d = self.deposit
        return (d.txid, d.currency, d.address_id, d.tx_index)


@dataclass(frozen=True, slots=True)
class LedgerView:
    """What the store knows that one plan needs, loaded in one call inside the write transaction."""

    open: tuple[TrackedDeposit, ...]  # the chain's not-final deposits, by id
    matched: dict[DepositKey, TrackedDeposit]  # deposits of any status with the scanned transfers' keys
    # Watched (active) address id -> (address as configured, foreign_id); a transfer to an address not in
    # it makes no new deposit.
    addresses: dict[int, tuple[str, str]]
    next_id: int  # the id the next new deposit gets (ids are never reused)


@dataclass(frozen=True, slots=True)
class QueuedCallback:
    """A callback the plan queues: its body is built (and so its signed bytes fixed) when planned."""

    deposit_id: int
    status: DepositStatus
    body: bytes
    txid: str
    confirmations: int
    queued_at: float


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything one ledger decision changes, applied by the store in one batch, in this order."""

    inserts: tuple[TrackedDeposit, ...] = ()
    updates: tuple[TrackedDeposit, ...] = ()  # whole rows as they are to be
    callbacks: tuple[QueuedCallback, ...] = ()  # in order; a later one supersedes an earlier one

    @property
    def empty(self) -> bool:
        return not (self.inserts or self.updates or self.callbacks)


# ------------------------------------------------------------------------------ the merchant API's values


class AddressSource(enum.StrEnum):
    """How an address came to be watched. A config reload deactivates only `config` rows that left it."""

    CONFIG = "config"  # the YAML lists
    API = "api"  # taken (derived) or registered through the merchant API or the CLI
    IMPORT = "import"  # `deposit-watcher addresses import`
    # Derived for one payment for an order (watcher/payment_book.py): watched for good (a late payment is
    # still recorded), but no customer's standing address: the address lists and lookups leave it out.
    PAYMENT = "payment"


@dataclass(frozen=True, slots=True)
class IssuedAddress:
    """A watched address as the merchant API and the CLI show it."""

    id: int  # the callbacks' crypto_address.id
    integration_id: str
    chain: str
    currency: str
    address: str  # as issued or registered
    foreign_id: str
    source: AddressSource
    created_at: float
    active: bool
    key_id: str | None = None  # the public key it was derived from (Deriver.id); None if not derived
    key_index: int | None = None
    derivation_path: str | None = None  # e.g. "m/84'/0'/0'/0/7"
    scan_from: int | None = None  # a history scan from this height is still pending


@dataclass(frozen=True, slots=True)
class Event:
    """One deposit status change, in the order they happened: the durable feed `GET /v1/events` pages.
    Written in the same transaction as the change and its callback; a resend adds none."""

    id: int
    integration_id: str
    deposit_id: int
    status: DepositStatus
    confirmations: int
    created_at: float
    body: bytes  # the callback body queued with it (the deposit as it was then)


# ------------------------------------------------------------------------------ payments for orders


class PaymentStatus(enum.StrEnum):
    """A payment's life (watcher/payment_life.py): pending -> linked -> completed, or an end without it."""

    PENDING = "pending"  # created, nothing paid to its address yet
    LINKED = "linked"  # a transaction to its address was seen (mempool or block)
    COMPLETED = "completed"  # one transaction paid at least the amount and has the minimum confirmations
    ABANDONED = "abandoned"  # expired without that (after the grace period, if something was seen)
    CANCELED = "canceled"  # the merchant canceled it, or everything paid to it was double-spent or dropped

    @property
    def final(self) -> bool:
        return self in (PaymentStatus.COMPLETED, PaymentStatus.ABANDONED, PaymentStatus.CANCELED)

    @property
    def event(self) -> str:
        """The webhook event a change to this status is (the Coinskro names: `payment_<status>`)."""
        if self is PaymentStatus.PENDING:
            raise ValueError("a payment is created pending: no event changes it to pending")
        return f"payment_{self.value}"


@dataclass(frozen=True, slots=True)
class Payment:
    """A payment for an order, as the store keeps it and the API shows it."""

    id: int
    reference: str  # PAY_…, unguessable: what the merchant and the customer see
    integration_id: str
    chain: str
    currency: str
    address_id: int  # the fresh derived address used for this payment alone
    address: str
    amount: int  # asked for, base units
    received: int  # of the transaction that completed it (or the largest seen), base units
    status: PaymentStatus
    customer_email: str | None
    customer_reference: str | None
    meta_data: str | None
    created_at: float
    expires_at: float
    ended_at: float | None  # when it reached a final status
    # The chain's blind seconds (not followed: halted, behind, node unreachable) counted when it was linked:
    # time the daemon could not see is added to the grace period (watcher/payment_life.py).
    blind_at_link: float | None = None
