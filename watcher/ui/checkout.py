"""The customer's checkout page, `/pay/{payment_reference}`: the amount, the address with a copy button,
a QR code of the payment URI, a countdown to the expiry, and the status as it changes, polled by
static/checkout.js from `/pay/{payment_reference}/status.json` (no reload).

What the customer sees of the payment's life (watcher/payment_life.py):
- `waiting`: pending, nothing paid yet (with the countdown);
- `seen`: linked, its transaction not in a block yet (a Bitcoin payment in the mempool);
- `confirming`: linked and in a block: "n of m", n the most confirmations of its transactions, m the
  currency's min_confirmations;
- `completed`, `expired` (the payment's `abandoned`: the customer's word for it), `canceled`.
A final status shows the integration's `payments.return_url`, filled in, when it has one.

The page shows this payment alone: no other payment, nothing of the integration (its name, id, keys,
callback URL), and not `meta_data`, which is the merchant's own data about the order, not the
customer's. A malformed, unknown or removed reference is the same plain 404.
"""

from __future__ import annotations

import io
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import segno
from aiohttp import web

from watcher.config import Config
from watcher.model import Deposit, DepositStatus, Payment, PaymentStatus
from watcher.payment_book import PaymentBook, is_reference
from watcher.payment_uri import decimal_text
from watcher.ui import pages

PREFIX = "/pay/"
POLL_S = 2  # how often the page asks for the status: a block or a mempool sighting shows within 2 s
_ENDED = {
    PaymentStatus.COMPLETED: ("completed", "Payment received. Thank you!"),
    PaymentStatus.ABANDONED: ("expired", "This payment expired."),
    PaymentStatus.CANCELED: ("canceled", "This payment was canceled."),
}


@dataclass(frozen=True, slots=True)
class Progress:
    state: str  # waiting, seen, confirming, completed, expired, canceled
    label: str  # what the page says, in its status line
    confirmations: int
    min_confirmations: int

    @property
    def final(self) -> bool:
        return self.state in ("completed", "expired", "canceled")


def progress(payment: Payment, deposits: Sequence[Deposit], min_confirmations: int) -> Progress:
    """What the customer is told of the payment now. Pure."""
    if payment.status in _ENDED:
        state, label = _ENDED[payment.status]
        return Progress(state, label, 0, min_confirmations)
    if payment.status is PaymentStatus.PENDING:
        return Progress("waiting", "Waiting for your payment.", 0, min_confirmations)
    # Linked: a transaction to the address was seen; a double-spent one (cancelled) no longer counts.
    live = [d.confirmations for d in deposits if d.status is not DepositStatus.CANCELLED]
    n = min(max(live, default=0), min_confirmations)
    if n == 0:
        return Progress("seen", "Payment seen, waiting for it to be confirmed.", 0, min_confirmations)
    return Progress("confirming", f"Confirming: {n} of {min_confirmations}.", n, min_confirmations)


def return_link(template: str | None, payment: Payment) -> str | None:
    """The integration's return_url with the payment's fields URL-quoted in, or None: none configured, or
    it names customer_reference and this payment has none."""
    if template is None:
        return None
    values = {"payment_reference": payment.reference, "customer_reference": payment.customer_reference}
    used = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    if any(values.get(name) is None for name in used):
        return None
    return template.format(**{name: quote(str(values[name]), safe="") for name in used})


class Checkout:
    def __init__(self, config: Callable[[], Config], payments: PaymentBook) -> None:
        self._config = config
        self.payments = payments

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(PREFIX + "{reference}", self.page),
            web.get(PREFIX + "{reference}/status.json", self.status),
            web.get(PREFIX + "{reference}/qr.svg", self.qr),
            # Anything else under /pay/ is the same plain 404 page, not the API's JSON error.
            web.get(PREFIX + "{tail:.*}", self.missing),
        ]

    async def missing(self, request: web.Request) -> web.Response:
        return pages.not_found()

    async def page(self, request: web.Request) -> web.Response:
        payment = await self._payment(request)
        if payment is None:
            return pages.not_found()
        uri = await self.payments.uri(payment)
        decimals = self.payments.decimals(payment)
        state = await self._state(payment)
        return pages.render(
            "checkout.html",
            payment=payment,
            amount=decimal_text(payment.amount, decimals),
            uri=uri,
            state=state,
            poll_ms=POLL_S * 1000,
        )

    async def status(self, request: web.Request) -> web.Response:
        payment = await self._payment(request)
        if payment is None:
            return pages.not_found()
        return web.json_response(await self._state(payment))

    async def qr(self, request: web.Request) -> web.Response:
        payment = await self._payment(request)
        if payment is None:
            return pages.not_found()
        return web.Response(body=qr_svg(await self.payments.uri(payment)), content_type="image/svg+xml")

    async def _payment(self, request: web.Request) -> Payment | None:
        reference = request.match_info["reference"]
        if not is_reference(reference):
            return None
        payment = await self.payments.store.payment_by_reference(reference)
        if payment is None or not self._configured(payment):
            return None
        return payment

    def _configured(self, payment: Payment) -> bool:
        """A payment whose integration or currency left the config has no page (its amount could not be
        written with the right decimals, its return link is gone)."""
        config = self._config()
        try:
            config.integration(payment.integration_id)
            config.currency(payment.currency)
        except KeyError:
            return False
        return True

    async def _state(self, payment: Payment) -> dict[str, Any]:
        """The status JSON the page polls (and renders first): only what the page shows."""
        config = self._config()
        currency = config.currency(payment.currency)[1]
        deposits = await self.payments.store.address_deposits(payment.address_id)
        now = progress(payment, deposits, currency.min_confirmations)
        integration = config.integration(payment.integration_id)
        link = return_link(integration.payments.return_url, payment) if now.final else None
        return {
            "state": now.state,
            "label": now.label,
            "final": now.final,
            "confirmations": now.confirmations,
            "min_confirmations": now.min_confirmations,
            "amount_received": decimal_text(payment.received, currency.decimals),
            "expires_at_ms": int(payment.expires_at * 1000),
            "server_time_ms": int(time.time() * 1000),
            "return_url": link,
        }


def qr_svg(uri: str) -> bytes:
    """The QR code of `uri` as SVG, black on white (whatever the page behind it) with the standard
    4-module quiet zone; error correction M, which segno raises when the data leaves room."""
    out = io.BytesIO()
    code = segno.make(uri, error="m", micro=False)
    code.save(out, kind="svg", scale=8, border=4, dark="black", light="white", xmldecl=False)
    return out.getvalue()
