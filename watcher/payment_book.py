"""Payments for orders, scoped to one integration: what the merchant API (and the CLI) call.

Like the address book (watcher/address_book.py), every method checks its input first (a `RequestRefused`
naming the field, nothing written), then works in one store transaction.

Creating a payment, in one transaction (nothing half-written on any refusal):
- **Idempotent per `Idempotency-Key`.** The key is required (a client retrying after a lost answer must
  get the same payment, not a second address for the same order): the same key with the same request gives
  the payment it created, the same key with another request is a 409. "The same request" is compared on
  its checked values (`request_hash`): `"1.50"` and `"1.5"` BTC are the same amount.
- **A fresh derived address for this payment alone**, from the integration's public key of the currency's
  chain, with the same index counter as customers' standing addresses (a derivation whose foreign_id is the
  payment reference): no index is handed out twice. The address is watched for good (`source: payment`), so
  a late payment is still recorded; it is no customer's standing address, so the address lists, lookups
  and takes leave it out. One payment, one address, one currency, even on an EVM chain.
- The address is handed to `watch` after the commit and before the answer (as a take does).

Input rules (docs/api.md lists them):
- `amount`: a decimal string (`"0.0015"`): digits, at most one point, no sign, no exponent, at most the
  currency's decimals, more than zero, at most `MAX_AMOUNT_DIGITS` digits before the point. Converted to
  base units with integer arithmetic, never a float.
- `customer_email`: at most 254 characters, `local@domain.tld`, no spaces or control characters.
- `customer_reference`: 1 to 255 characters, no control characters (as a foreign_id).
- `meta_data`: a string of at most 4,096 bytes (UTF-8). Control characters are refused except tab, line
  feed and carriage return, the ones a merchant's JSON or text legitimately holds (they travel escaped in
  the webhook's JSON); the others would reach logs and the merchant's handlers raw.
- `expires_in_s`: an integer from 1 to the integration's `payments.max_expires_in_s`; default
  `payments.expires_in_s` (30 minutes).
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import json
import re
import secrets
import time
import unicodedata
from collections.abc import Callable, Sequence

from chains.base import Deriver
from watcher import coinskro, payment_life, payment_uri
from watcher.address_book import AddressBook, check_foreign_id, check_limit
from watcher.config import ChainConfig, CurrencyConfig, IntegrationConfig, MerchantConfig, PaymentsConfig
from watcher.errors import RequestRefused
from watcher.model import AddressSource, AttemptResult, Deposit, OutboxEntry, Payment, PaymentStatus
from watcher.store import NewAddress, NewPayment, StoreTransaction
from watcher.take_plan import derive

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255
MAX_AMOUNT_DIGITS = 20  # before the point: far above any real order, and bounded
MAX_EMAIL = 254  # RFC 5321's path limit
MAX_META_BYTES = 4096
MIN_EXPIRES_IN_S = 1
REFERENCE_PREFIX = "PAY_"
REFERENCE_BYTES = 20  # 160 bits from `secrets`: unguessable
_REFERENCE = re.compile(r"PAY_[A-Z2-7]{32}")
_AMOUNT = re.compile(r"(0|[1-9][0-9]*)(?:\.([0-9]+))?")
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
_KEY = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces
_META_ALLOWED_CONTROLS = frozenset("\t\n\r")


def is_reference(text: str) -> bool:
    """Whether `text` has the shape of a payment reference (any other text names no payment)."""
    return _REFERENCE.fullmatch(text) is not None


def payment_reference() -> str:
    """`PAY_` and 160 random bits in base32 (32 characters, upper case: no confusable case)."""
    return REFERENCE_PREFIX + base64.b32encode(secrets.token_bytes(REFERENCE_BYTES)).decode("ascii")


# --------------------------------------------------------------------------------------------- checks


def parse_amount(value: object, currency: CurrencyConfig) -> int:
    """A decimal string of whole coins as base units, exactly."""
    if not isinstance(value, str):
        raise RequestRefused(422, "invalid_field", 'must be a decimal string, e.g. "0.0015"', "amount")
    m = _AMOUNT.fullmatch(value)
    if m is None:
        raise RequestRefused(
            422, "invalid_field", "must be a positive decimal: digits and one point, no sign or exponent",
            "amount",
        )  # fmt: skip
    whole, fraction = m.group(1), m.group(2) or ""
    if len(whole) > MAX_AMOUNT_DIGITS:
        raise RequestRefused(
            422, "invalid_field", f"at most {MAX_AMOUNT_DIGITS} digits before the point", "amount"
        )
    if len(fraction) > currency.decimals:
        raise RequestRefused(
            422,
            "invalid_field",
            f"{currency.code} has {currency.decimals} decimals; more were given",
            "amount",
        )
    base: int = int(whole) * 10**currency.decimals + int(fraction.ljust(currency.decimals, "0") or "0")
    if base <= 0:
        raise RequestRefused(422, "invalid_field", "must be more than zero", "amount")
    return base


def check_email(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise RequestRefused(422, "invalid_field", "must be an email address or null", "customer_email")
    if len(value) > MAX_EMAIL or not _EMAIL.fullmatch(value) or not value.isprintable():
        raise RequestRefused(
            422, "invalid_field", f"must be an email address (local@domain, at most {MAX_EMAIL} characters)",
            "customer_email",
        )  # fmt: skip
    return value


def check_customer_reference(value: object) -> str | None:
    return None if value is None else check_foreign_id(value, "customer_reference")


def check_meta_data(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestRefused(
            422, "invalid_field", "must be a string (serialize structured data)", "meta_data"
        )
    if any(unicodedata.category(c) in ("Cc", "Cs") and c not in _META_ALLOWED_CONTROLS for c in value):
        raise RequestRefused(
            422,
            "invalid_field",
            "must not contain control characters (tab, LF and CR are allowed)",
            "meta_data",
        )
    if len(value.encode("utf-8")) > MAX_META_BYTES:
        raise RequestRefused(
            422, "invalid_field", f"must be at most {MAX_META_BYTES} bytes (UTF-8)", "meta_data"
        )
    return value


def check_expires_in_s(value: object, payments: PaymentsConfig) -> int | None:
    if value is None:
        return None
    top = int(payments.max_expires_in_s)
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_EXPIRES_IN_S <= value <= top:
        raise RequestRefused(
            422,
            "invalid_field",
            f"must be an integer from {MIN_EXPIRES_IN_S} to {top} (seconds)",
            "expires_in_s",
        )
    return value


def check_idempotency_key(value: object) -> str:
    if value is None:
        raise RequestRefused(
            400, "idempotency_key_required", f"send an {IDEMPOTENCY_HEADER} header (a retry reuses it)",
            IDEMPOTENCY_HEADER,
        )  # fmt: skip
    if not isinstance(value, str) or len(value) > MAX_IDEMPOTENCY_KEY or not _KEY.fullmatch(value):
        raise RequestRefused(
            400, "invalid_field", f"must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters, no spaces",
            IDEMPOTENCY_HEADER,
        )  # fmt: skip
    return value


def check_status(value: str | None) -> str | None:
    if value is not None and value not in PaymentStatus.__members__.values():
        raise RequestRefused(422, "invalid_field", f"must be one of {', '.join(PaymentStatus)}", "status")
    return value


def request_hash(fields: dict[str, str | int | None]) -> str:
    """The hash of a create request's checked values, keys sorted: what "the same request" means."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


# --------------------------------------------------------------------------------------------- webhooks


def wants_webhook(callback: MerchantConfig, status: PaymentStatus) -> bool:
    """Whether a change to `status` is sent: the integration speaks coinskro and subscribed to the event."""
    return callback.format == "coinskro" and status.event in callback.events


def webhook_body(payment: Payment, integration_id: str, decimals: int, at: float) -> bytes:
    """The Coinskro webhook of the payment as it is now (its status is the event). `amount` is the amount
    the payment asks for (what the seed's handlers compare with the order); the API shows what was
    received."""
    return coinskro.build_body(
        event=payment.status.event, at=at, payment_reference=payment.reference, integration_id=integration_id,
        amount=payment.amount, decimals=decimals, currency=payment.currency, status=payment.status,
        customer_email=payment.customer_email, customer_reference=payment.customer_reference,
        meta_data=payment.meta_data,
    )  # fmt: skip


async def queue_webhook(
    tx: StoreTransaction, integration: IntegrationConfig, payment: Payment, decimals: int, at: float
) -> int | None:
    """Queue the webhook of the payment's new status if the integration wants it: the outbox id, or None."""
    if not wants_webhook(integration.callback, payment.status):
        return None
    body = webhook_body(payment, integration.id, decimals, at)
    return await tx.queue_payment_webhook(payment.id, payment.status, body, at)


async def record_changes(
    tx: StoreTransaction,
    integration: IntegrationConfig,
    changes: Sequence[payment_life.Change],
    decimals: int,
) -> None:
    """Write what payment_life decided for one payment, in the caller's transaction: the payment as the
    last change leaves it, and each change's webhook (if wanted) in order, so `linked` is queued, and
    delivered, before `completed` (Store.due_callbacks keeps a payment's webhooks in that order)."""
    if not changes:
        return
    await tx.update_payment(changes[-1].payment)
    for change in changes:
        await queue_webhook(tx, integration, change.payment, decimals, change.at)


# --------------------------------------------------------------------------------------------- the book


class PaymentBook:
    """Payments of one integration at a time. Shares the address book's config (replaced on reload), its
    derivation counter and its `watch`."""

    def __init__(self, addresses: AddressBook, trouble: Callable[[str], str | None] | None = None) -> None:
        self.addresses = addresses
        self.store = addresses.store
        # Why a chain is not followed now (the daemon's health), or None: no payment is created on a chain
        # the daemon cannot watch. The CLI has no followers to ask: it creates them as they are.
        self._trouble = trouble or (lambda chain: None)
        self._chain_ids: dict[str, int] = {}  # EVM chain ids read from the pinned identity

    async def create(
        self,
        integration: IntegrationConfig,
        *,
        amount: object,
        currency: object,
        idempotency_key: object,
        customer_email: object = None,
        customer_reference: object = None,
        meta_data: object = None,
        expires_in_s: object = None,
    ) -> tuple[Payment, bool]:
        """A new pending payment (created True), or the one this Idempotency-Key created (False)."""
        key = check_idempotency_key(idempotency_key)
        chain, cur = self.addresses.currency(currency)
        base = parse_amount(amount, cur)
        email = check_email(customer_email)
        customer = check_customer_reference(customer_reference)
        meta = check_meta_data(meta_data)
        lifetime = check_expires_in_s(expires_in_s, integration.payments)
        fields: dict[str, str | int | None] = {
            "amount": str(base), "currency": cur.code, "customer_email": email,
            "customer_reference": customer, "meta_data": meta, "expires_in_s": lifetime,
        }  # fmt: skip
        configured = integration.public_key(chain.name)
        if configured is None:
            raise RequestRefused(
                422, "no_public_key", f"no public key is configured for chain {chain.name}", "currency"
            )
        digest = request_hash(fields)
        now = time.time()
        expires_at = now + (integration.payments.expires_in_s if lifetime is None else float(lifetime))
        async with self.store.transaction() as tx:
            found = await tx.payment_by_idempotency_key(integration.id, key)
            if found is not None:
                if found[1] != digest:
                    raise RequestRefused(
                        409, "idempotency_conflict",
                        f"this {IDEMPOTENCY_HEADER} was used for another request; use a new key",
                        IDEMPOTENCY_HEADER,
                    )  # fmt: skip
                return found[0], False
            # A retry of a payment already made is answered above even now; a new one is not made on a
            # chain the daemon cannot watch (it could be paid and never seen, or expire unseen).
            trouble = self._trouble(chain.name)
            if trouble is not None:
                raise RequestRefused(
                    503, "chain_unavailable", f"chain {chain.name} is not followed now: {trouble}", "currency"
                )
            reference = payment_reference()
            deriver = configured.deriver
            first = await tx.next_key_index(deriver.id, configured.first_index)
            (address, index), watch_key = await self._free_address(tx, chain, cur, deriver, first)
            await tx.add_derivation(
                integration.id, chain.name, reference, (deriver.id, deriver.descriptor), index, now
            )
            new = NewAddress(
                chain.name, cur.code, watch_key, address, reference, integration.id, AddressSource.PAYMENT
            )
            issued = await tx.insert_address(
                new, now, self.store.id_offset, key_id=deriver.id, key_index=index,
                derivation_path=deriver.path(index),
            )  # fmt: skip
            payment = await tx.insert_payment(
                NewPayment(
                    reference, integration.id, chain.name, cur.code, issued.id, base, email, customer, meta,
                    now, expires_at, key, digest,
                )
            )  # fmt: skip
        self.addresses.watch(issued, watch_key, False)  # committed: the followers watch it before the answer
        return payment, True

    async def _free_address(
        self, tx: StoreTransaction, chain: ChainConfig, cur: CurrencyConfig, deriver: Deriver, index: int
    ) -> tuple[tuple[str, int], bytes]:
        """The first derived address from `index` on that is not in the store yet (one registered by hand
        keeps its owner; its index is skipped): ((address, index), watch key)."""
        while True:
            address = derive(deriver, index)
            watch_key = self.addresses.watch_key(chain, cur, address)
            if await tx.address_by_key(cur.code, watch_key) is None:
                return (address, index), watch_key
            index += 1

    async def get(
        self, integration: IntegrationConfig, reference: str
    ) -> tuple[Payment, builtins.list[Deposit], builtins.list[AttemptResult]]:
        """The payment with the deposits to its address and every attempt to deliver its webhooks."""
        payment = await self._find(integration, reference)
        deposits = await self.store.address_deposits(payment.address_id)
        attempts: builtins.list[AttemptResult] = []
        for entry in await self.store.outbox_entries(payment_id=payment.id):
            attempts += await self.store.attempts(entry.id)
        return payment, deposits, attempts

    async def list(
        self,
        integration: IntegrationConfig,
        *,
        status: str | None = None,
        currency: str | None = None,
        customer_reference: str | None = None,
        since: float | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> builtins.list[Payment]:
        if currency is not None:
            currency = self.addresses.currency(currency)[1].code
        return await self.store.integration_payments(
            integration.id, status=check_status(status), currency=currency,
            customer_reference=check_customer_reference(customer_reference), since=since, after=after,
            limit=check_limit(limit),
        )  # fmt: skip

    async def cancel(self, integration: IntegrationConfig, reference: str) -> Payment:
        """The merchant cancels a pending or linked payment; its webhook is queued in the same transaction
        when the integration subscribed to `payment_canceled`. A final payment is a 409."""
        self._check_reference(reference)
        now = time.time()
        async with self.store.transaction() as tx:
            payment = await tx.payment(integration.id, reference)
            if payment is None:
                raise _not_found()
            change = payment_life.cancel(payment, now)
            if change is None:
                raise RequestRefused(
                    409, "conflict", f"this payment is {payment.status}: a final payment cannot be canceled",
                    "payment_reference",
                )  # fmt: skip
            await record_changes(tx, integration, [change], self._decimals(payment))
        return change.payment

    async def resend(self, integration: IntegrationConfig, reference: str) -> OutboxEntry:
        """Queue the payment's latest webhook again, the same bytes (as a deposit's resend)."""
        payment = await self._find(integration, reference)
        async with self.store.transaction() as tx:
            entry = await tx.requeue_latest_payment_webhook(payment.id, time.time())
        if entry is None:
            raise RequestRefused(
                409, "nothing_to_resend", "this payment has no webhook yet", "payment_reference"
            )
        return entry

    async def uri(self, payment: Payment) -> str:
        """The payment URI a wallet opens (BIP-21 or EIP-681, watcher/payment_uri.py)."""
        config = self.addresses.config
        try:
            chain = config.chain(payment.chain)
            cur = config.currency(payment.currency)[1]
        except KeyError:
            # Its currency left the config: an amount printed with guessed decimals would be wrong money.
            raise RequestRefused(
                500, "internal", f"currency {payment.currency} is no longer configured"
            ) from None
        if chain.adapter != "evm":
            return payment_uri.bip21(payment.address, payment.amount, cur.decimals)
        chain_id = chain.settings.chain_id or await self._pinned_chain_id(chain.name)
        return payment_uri.payment_uri(
            payment_uri.ETHEREUM, payment.address, payment.amount, cur.decimals, cur.contract, chain_id
        )

    def decimals(self, payment: Payment) -> int:
        return self._decimals(payment)

    # --------------------------------------------------------------------------------------- helpers

    async def _pinned_chain_id(self, chain: str) -> int | None:
        """The chain id in the identity the store pinned at the first start (`evm:ID:GENESIS`)."""
        if chain not in self._chain_ids:
            identity = (await self.store.chain_state(chain)).identity or ""
            parts = identity.split(":")
            if len(parts) != 3 or parts[0] != "evm" or not parts[1].isdigit():
                return None  # not known yet: the URI goes without @id
            self._chain_ids[chain] = int(parts[1])
        return self._chain_ids[chain]

    def _decimals(self, payment: Payment) -> int:
        try:
            return self.addresses.config.currency(payment.currency)[1].decimals
        except KeyError:
            raise RequestRefused(
                500, "internal", f"currency {payment.currency} is no longer configured"
            ) from None

    @staticmethod
    def _check_reference(reference: str) -> None:
        if not is_reference(reference):
            raise _not_found()

    async def _find(self, integration: IntegrationConfig, reference: str) -> Payment:
        self._check_reference(reference)
        payment = await self.store.payment(integration.id, reference)
        if payment is None:  # another integration's too: not saying it exists
            raise _not_found()
        return payment


def _not_found() -> RequestRefused:
    return RequestRefused(404, "not_found", "no such payment", "payment_reference")
