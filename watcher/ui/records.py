"""The back office's records: deposits, payments and addresses as the signed-in viewer may see them (the
operator every integration's, an integration's key its own; watcher/ui/session.py).

- `GET /ui/deposits`: one search box (a deposit id, or exactly a foreign_id, an address or a txid),
  filters by status and currency (and the operator's by integration), pages of 50 newest first by keyset
  (`before=<id>`: a deposit arriving meanwhile shifts no page, so paging has no gap and no repeat).
  `?fragment=1` answers the table alone: static/records.js fetches it every few seconds on the first
  page, so a new deposit shows without a reload.
- `GET /ui/deposits/{id}`: the deposit, its transaction with a block explorer link (watcher/ui/explorer.py),
  its callbacks with every attempt, and a resend button (`POST .../resend`: what the API's resend does).
- `GET /ui/payments`, `/ui/payments/{reference}`, `POST .../resend`: the same for payments.
- `GET /ui/addresses`: addresses by customer (foreign_id) or by address, with their deposit counts.

Another integration's record is the same 404 page as an unknown one. The session layer guarantees a viewer
and a checked CSRF token before any handler here runs; every string is escaped by the templates.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from watcher.callbacks import format_amount
from watcher.config import Config, IntegrationConfig
from watcher.errors import RequestRefused
from watcher.model import Deposit, DepositStatus, IssuedAddress, OutboxEntry, Payment, PaymentStatus
from watcher.payment_book import PaymentBook, is_reference
from watcher.store import DepositSearch, PaymentSearch, Store
from watcher.ui import explorer, pages
from watcher.ui.office import render
from watcher.ui.session import VIEWER, Viewer

PAGE_SIZE = 50
REFRESH_MS = 3000  # how often the first page of a list asks for new rows
MAX_QUERY = 255  # a foreign_id's limit; a longer search can match nothing
_TXID = re.compile(r"(0x)?[0-9a-f]{64}")
_MAX_ID = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Listing:
    """A list page's query: the search text, the filters and the keyset cursor, as parsed (a value the
    page's own forms cannot produce is dropped rather than refused)."""

    q: str
    status: str | None
    currency: str | None
    before: int | None
    integration: str | None = None  # the operator's filter (an integration's key sees its own anyway)

    def url(self, path: str, **changes: Any) -> str:
        """`path` with this query, `changes` applied (a None drops the parameter)."""
        values: dict[str, Any] = {"q": self.q or None, "status": self.status, "currency": self.currency}
        values.update(integration=self.integration, before=self.before)
        values.update(changes)
        query = urlencode({k: v for k, v in values.items() if v is not None})
        return f"{path}?{query}" if query else path


def listing(
    request: web.Request, statuses: Sequence[str], currencies: Sequence[str], integrations: Sequence[str] = ()
) -> Listing:
    query = request.query
    status = query.get("status") or None
    currency = query.get("currency") or None
    integration = query.get("integration") or None
    return Listing(
        q=query.get("q", "").strip()[: MAX_QUERY + 1],
        status=status if status in statuses else None,
        currency=currency if currency in currencies else None,
        before=_positive_int(query.get("before", "")),
        integration=integration if integration in integrations else None,
    )


def _positive_int(text: str) -> int | None:
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        return None
    value = int(text)
    return value if 0 < value <= _MAX_ID else None


def txid_forms(text: str) -> tuple[str, ...]:
    """The stored forms a txid may have (lower-case hex; EVM's with 0x): any case, with or without 0x."""
    lower = text.lower()
    if not _TXID.fullmatch(lower):
        return ()
    bare = lower.removeprefix("0x")
    return (bare, "0x" + bare)


def search_url(path: str, q: str) -> str:
    return f"{path}?{urlencode({'q': q})}"


def when(unix_s: float | None) -> str:
    return "" if unix_s is None else datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class Records:
    """The handlers. `config` is called per request: a reload's new currencies and names apply at once."""

    def __init__(self, config: Callable[[], Config], store: Store, payments: PaymentBook) -> None:
        self._config = config
        self.store = store
        self.payments = payments

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/ui/deposits", self.deposits),
            web.get("/ui/deposits/{id}", self.deposit),
            web.post("/ui/deposits/{id}/resend", self.resend_deposit),
            web.get("/ui/payments", self.payment_list),
            web.get("/ui/payments/{reference}", self.payment),
            web.post("/ui/payments/{reference}/resend", self.resend_payment),
            web.get("/ui/addresses", self.addresses),
        ]

    # --------------------------------------------------------------------------------------- deposits

    async def deposits(self, request: web.Request) -> web.Response:
        viewer = request[VIEWER]
        config = self._config()
        query = listing(request, [s.value for s in DepositStatus], _currencies(config), _ids(config))
        search = await self._deposit_search(viewer, query.q) if query.q else None
        found = await self.store.office_deposits(
            _scope(viewer, query), search=search, status=query.status, currency=query.currency,
            before=query.before, limit=PAGE_SIZE + 1,
        )  # fmt: skip
        rows = found[:PAGE_SIZE]
        context = {
            "query": query,
            "rows": rows,
            "older": query.url("/ui/deposits", before=rows[-1][1].id) if len(found) > PAGE_SIZE else None,
            "refresh_url": query.url("/ui/deposits", fragment=1) if query.before is None else None,
            **self._helpers(request),
        }
        if request.query.get("fragment") == "1":
            return pages.render("office/deposits_table.html", **context)
        return render(request, "office/deposits.html", statuses=list(DepositStatus), **context)

    async def _deposit_search(self, viewer: Viewer, q: str) -> DepositSearch:
        """What `q` may name: a deposit id (digits), a customer (foreign_id), an address, a txid."""
        addresses = await self._addresses_named(viewer, q)
        return DepositSearch(
            deposit_id=_positive_int(q),
            address_ids=tuple(a.id for a in addresses),
            txids=txid_forms(q),
            chains=self._chains(),
        )

    async def _addresses_named(self, viewer: Viewer, q: str) -> list[IssuedAddress]:
        """The viewer's addresses whose foreign_id is `q` or which are the address `q` (in any currency it is
        valid for), by id."""
        if len(q) > MAX_QUERY:
            return []
        owners = await self._owners(viewer)
        found = {a.id: a for a in await self.store.addresses_of_customer(owners, q)}
        for a in await self.store.addresses_by_watch_keys(self._watch_keys(q)):
            if viewer.sees(a.integration_id):
                found[a.id] = a
        return [found[i] for i in sorted(found)]

    def _chains(self) -> tuple[str, ...]:
        return tuple(c.name for c in self._config().chains)

    async def _owners(self, viewer: Viewer) -> list[str]:
        if viewer.integration_id is not None:
            return [viewer.integration_id]
        # The operator: every integration with addresses, configured or not any more.
        return sorted(await self.store.integration_ids())

    def _watch_keys(self, text: str) -> list[tuple[str, bytes]]:
        """(currency, watch key) of `text` as an address of each configured currency it is valid for."""
        book = self.payments.addresses
        keys: list[tuple[str, bytes]] = []
        for chain in self._config().chains:
            for currency in chain.currencies:
                try:
                    keys.append((currency.code, book.watch_key(chain, currency, text)))
                except RequestRefused:
                    continue  # not an address of this currency
        return keys

    async def deposit(self, request: web.Request) -> web.Response:
        found = await self._visible_deposit(request)
        if found is None:
            return pages.not_found()
        owner, deposit = found
        callbacks = await self._callbacks(await self.store.outbox_entries(deposit_id=deposit.id))
        return render(
            request, "office/deposit.html",
            deposit=deposit, owner=owner, callbacks=callbacks, payment=await self._payment_of(deposit),
            explorer_url=await self._explorer_url(deposit.chain, deposit.txid),
            resend=request.query.get("resend"), **self._helpers(request),
        )  # fmt: skip

    async def resend_deposit(self, request: web.Request) -> web.Response:
        found = await self._visible_deposit(request)
        integration = None if found is None else self._integration(found[0])
        if found is None or integration is None:
            return pages.not_found()
        try:
            await self.payments.addresses.resend(integration, found[1].id)
            outcome = "queued"
        except RequestRefused as e:
            if e.status != 409:  # 409: no callback was ever queued for it
                raise
            outcome = "nothing"
        return _see_other(f"/ui/deposits/{found[1].id}?resend={outcome}")

    async def _payment_of(self, deposit: Deposit) -> Payment | None:
        """The payment the deposit paid, if its address was derived for one (whose foreign_id is then the
        payment's reference)."""
        if not is_reference(deposit.foreign_id):
            return None
        payment = await self.store.payment_by_reference(deposit.foreign_id)
        return payment if payment is not None and payment.address_id == deposit.address_id else None

    async def _visible_deposit(self, request: web.Request) -> tuple[str, Deposit] | None:
        deposit_id = _positive_int(request.match_info["id"])
        found = None if deposit_id is None else await self.store.office_deposit(deposit_id)
        if found is None or not request[VIEWER].sees(found[0]):
            return None  # another integration's: not saying it exists
        return found

    # --------------------------------------------------------------------------------------- payments

    async def payment_list(self, request: web.Request) -> web.Response:
        viewer = request[VIEWER]
        config = self._config()
        query = listing(request, [s.value for s in PaymentStatus], _currencies(config), _ids(config))
        search = None
        if query.q:
            addresses = await self._addresses_named(viewer, query.q)
            search = PaymentSearch(
                query.q, tuple(a.id for a in addresses), txid_forms(query.q), self._chains()
            )
        found = await self.store.office_payments(
            _scope(viewer, query), search=search, status=query.status, currency=query.currency,
            before=query.before, limit=PAGE_SIZE + 1,
        )  # fmt: skip
        rows = found[:PAGE_SIZE]
        context = {
            "query": query,
            "rows": rows,
            "older": query.url("/ui/payments", before=rows[-1].id) if len(found) > PAGE_SIZE else None,
            "refresh_url": query.url("/ui/payments", fragment=1) if query.before is None else None,
            **self._helpers(request),
        }
        if request.query.get("fragment") == "1":
            return pages.render("office/payments_table.html", **context)
        return render(request, "office/payments.html", statuses=list(PaymentStatus), **context)

    async def payment(self, request: web.Request) -> web.Response:
        payment = await self._visible_payment(request)
        if payment is None:
            return pages.not_found()
        deposits = await self.store.address_deposits(payment.address_id)
        return render(
            request, "office/payment.html",
            payment=payment, deposits=deposits,
            callbacks=await self._callbacks(await self.store.outbox_entries(payment_id=payment.id)),
            explorer_urls={d.id: await self._explorer_url(d.chain, d.txid) for d in deposits},
            resend=request.query.get("resend"), **self._helpers(request),
        )  # fmt: skip

    async def resend_payment(self, request: web.Request) -> web.Response:
        payment = await self._visible_payment(request)
        integration = None if payment is None else self._integration(payment.integration_id)
        if payment is None or integration is None:
            return pages.not_found()
        try:
            await self.payments.resend(integration, payment.reference)
            outcome = "queued"
        except RequestRefused as e:
            if e.status != 409:  # 409: no webhook was ever queued for it
                raise
            outcome = "nothing"
        return _see_other(f"/ui/payments/{payment.reference}?resend={outcome}")

    async def _visible_payment(self, request: web.Request) -> Payment | None:
        reference = request.match_info["reference"]
        payment = await self.store.payment_by_reference(reference) if is_reference(reference) else None
        if payment is None or not request[VIEWER].sees(payment.integration_id):
            return None
        return payment

    # --------------------------------------------------------------------------------------- addresses

    async def addresses(self, request: web.Request) -> web.Response:
        viewer = request[VIEWER]
        query = listing(request, (), ())
        if query.q:
            rows, older = await self._addresses_named(viewer, query.q), None
        else:
            found = await self.store.office_addresses(
                viewer.integration_id, before=query.before, limit=PAGE_SIZE + 1
            )
            rows = found[:PAGE_SIZE]
            older = query.url("/ui/addresses", before=rows[-1].id) if len(found) > PAGE_SIZE else None
        counts = await self.store.deposit_counts_by_address([a.id for a in rows])
        return render(
            request, "office/addresses.html",
            query=query, rows=rows, counts=counts, older=older, **self._helpers(request),
        )  # fmt: skip

    # --------------------------------------------------------------------------------------- shared

    async def _callbacks(self, entries: Sequence[OutboxEntry]) -> list[tuple[OutboxEntry, list[Any]]]:
        """Each callback (outbox entry), oldest first, with its attempts, oldest first."""
        return [(entry, await self.store.attempts(entry.id)) for entry in entries]

    async def _explorer_url(self, chain_name: str, txid: str) -> str | None:
        config = self._config()
        try:
            chain = config.chain(chain_name)
        except KeyError:
            return None
        chain_id = chain.settings.chain_id
        if chain.adapter == "evm" and chain_id is None:
            chain_id = _pinned_chain_id((await self.store.chain_state(chain.name)).identity)
        return explorer.tx_link(chain.adapter, config.network, chain_id, txid, chain.explorer_url)

    def _integration(self, integration_id: str) -> IntegrationConfig | None:
        try:
            return self._config().integration(integration_id)
        except KeyError:
            return None  # left the config: its callbacks have nowhere to go

    def _helpers(self, request: web.Request) -> dict[str, Any]:
        """What the templates call to show values (amounts with the currency's decimals, times, names), and
        whether the viewer is the operator (who sees the integration column)."""
        config = self._config()

        def amount(currency: str, base_units: int) -> str:
            try:
                return format_amount(base_units, config.currency(currency)[1].decimals)
            except KeyError:
                return f"{base_units} (base units)"  # its currency left the config: no guessed decimals

        def integration_name(integration_id: str) -> str:
            found = self._integration(integration_id)
            return integration_id if found is None else found.name

        return {
            "amount": amount,
            "when": when,
            "search_url": search_url,
            "integration_name": integration_name,
            "currencies": _currencies(config),
            "integrations": [(i.id, i.name) for i in config.integrations],
            "refresh_ms": REFRESH_MS,
            "operator": request[VIEWER].integration_id is None,
        }


def _ids(config: Config) -> list[str]:
    return [i.id for i in config.integrations]


def _scope(viewer: Viewer, query: Listing) -> str | None:
    """Whose records a list shows: an integration's key its own, whatever the query says; the operator
    every integration's, or the one it filtered by."""
    return viewer.integration_id if viewer.integration_id is not None else query.integration


def _currencies(config: Config) -> list[str]:
    return [c.code for chain in config.chains for c in chain.currencies]


def _pinned_chain_id(identity: str | None) -> int | None:
    """The chain id in the identity the store pinned at the first start (`evm:ID:GENESIS`)."""
    parts = (identity or "").split(":")
    return int(parts[1]) if len(parts) == 3 and parts[0] == "evm" and parts[1].isdigit() else None


def _see_other(location: str) -> web.Response:
    # Returned, not raised: the API's error middleware turns a raised HTTPException into a JSON error.
    return web.Response(status=303, headers={"Location": location})
