"""The handlers: each validates its input (watcher.api.inputs), calls the address book scoped to the
integration the key named, and renders the answer (watcher.api.render). The book scopes every read and
write by integration, so no handler can reach another integration's objects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from watcher.address_book import AddressBook
from watcher.api import inputs, render
from watcher.api.document import document_json
from watcher.api.refusals import INTERNAL, Refused
from watcher.config import Config, IntegrationConfig
from watcher.model import Deposit, Payment
from watcher.payment_book import IDEMPOTENCY_HEADER, PaymentBook, check_idempotency_key

INTEGRATION = web.RequestKey("integration", IntegrationConfig)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


class Views:
    """The routes' handlers. `config` is a callable: the server's config is replaced on reload."""

    def __init__(self, config: Callable[[], Config], book: AddressBook, payments: PaymentBook) -> None:
        self._config = config
        self.book = book
        self.payments = payments

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/openapi.json", self.openapi),
            web.post("/v1/addresses", self.take),
            web.get("/v1/addresses", self.list_addresses),
            web.put("/v1/addresses/{currency}/{address}", self.register),
            web.get("/v1/addresses/{currency}/{address}", self.get_address),
            web.delete("/v1/addresses/{currency}/{address}", self.delete_address),
            web.get("/v1/deposits", self.list_deposits),
            web.get("/v1/deposits/{id}", self.get_deposit),
            web.post("/v1/deposits/{id}/resend", self.resend),
            web.post("/v1/payments", self.create_payment),
            web.get("/v1/payments", self.list_payments),
            web.get("/v1/payments/{reference}", self.get_payment),
            web.post("/v1/payments/{reference}/cancel", self.cancel_payment),
            web.post("/v1/payments/{reference}/resend", self.resend_payment),
            web.get("/v1/events", self.events),
            web.get("/v1/keys", self.keys),
        ]

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=document_json(), content_type="application/json")

    # --------------------------------------------------------------------------------------- addresses

    async def take(self, request: web.Request) -> web.Response:
        body = await inputs.read_object(request, self._config().api.max_body_bytes)
        inputs.check_fields(body, ("currency", "foreign_id"))
        currency = inputs.text_field(body, "currency")
        foreign_id = inputs.foreign_id(body["foreign_id"])
        issued, created = await self.book.take(request[INTEGRATION], currency, foreign_id)
        return _json(render.address(issued), 201 if created else 200)

    async def register(self, request: web.Request) -> web.Response:
        body = await inputs.read_object(request, self._config().api.max_body_bytes)
        inputs.check_fields(body, ("foreign_id",), ("from_height",))
        foreign_id = inputs.foreign_id(body["foreign_id"])
        from_height = inputs.int_field(body, "from_height") if "from_height" in body else None
        currency, address = request.match_info["currency"], request.match_info["address"]
        issued, created = await self.book.register(
            request[INTEGRATION], currency, address, foreign_id, from_height
        )
        return _json(render.address(issued), 201 if created else 200)

    async def list_addresses(self, request: web.Request) -> web.Response:
        params = inputs.query(request, ("foreign_id", "currency", "cursor", "limit"))
        after = inputs.cursor_param(params, "a")
        limit = inputs.limit_param(params)
        found = await self.book.list(
            request[INTEGRATION],
            foreign_id=inputs.foreign_id_param(params),
            currency=inputs.text_param(params, "currency"),
            after=after,
            limit=limit,
        )
        return _json(
            {
                "data": [render.address(a) for a in found],
                "next_cursor": inputs.encode_cursor("a", found[-1].id) if len(found) == limit else None,
            }
        )

    async def get_address(self, request: web.Request) -> web.Response:
        inputs.query(request, ())
        currency, address = request.match_info["currency"], request.match_info["address"]
        return _json(render.address(await self.book.get(request[INTEGRATION], currency, address)))

    async def delete_address(self, request: web.Request) -> web.Response:
        inputs.query(request, ())
        currency, address = request.match_info["currency"], request.match_info["address"]
        return _json(render.address(await self.book.delete(request[INTEGRATION], currency, address)))

    # --------------------------------------------------------------------------------------- deposits

    async def list_deposits(self, request: web.Request) -> web.Response:
        params = inputs.query(request, ("status", "currency", "foreign_id", "since", "cursor", "limit"))
        after = inputs.cursor_param(params, "d")
        limit = inputs.limit_param(params)
        found = await self.book.deposits(
            request[INTEGRATION],
            status=inputs.status_param(params),
            currency=inputs.text_param(params, "currency"),
            foreign_id=inputs.foreign_id_param(params),
            since=inputs.since_param(params),
            after=after,
            limit=limit,
        )
        return _json(
            {
                "data": [self._deposit(d) for d in found],
                "next_cursor": inputs.encode_cursor("d", found[-1].id) if len(found) == limit else None,
            }
        )

    async def get_deposit(self, request: web.Request) -> web.Response:
        inputs.query(request, ())
        found, attempts = await self.book.deposit(request[INTEGRATION], inputs.path_id(request))
        return _json({**self._deposit(found), "attempts": [render.attempt(r) for r in attempts]})

    async def resend(self, request: web.Request) -> web.Response:
        inputs.query(request, ())
        entry = await self.book.resend(request[INTEGRATION], inputs.path_id(request))
        return _json(render.resend(entry), 202)

    def _deposit(self, d: Deposit) -> dict[str, Any]:
        try:
            decimals = self._config().currency(d.currency)[1].decimals
        except KeyError:
            # Its currency left the config: an amount printed with guessed decimals would be wrong money.
            raise Refused(500, INTERNAL, f"currency {d.currency} is no longer configured") from None
        return render.deposit(d, decimals)

    # --------------------------------------------------------------------------------------- payments

    async def create_payment(self, request: web.Request) -> web.Response:
        inputs.query(request, ())
        # The header first: a request without it is refused before its body is read.
        key = check_idempotency_key(request.headers.get(IDEMPOTENCY_HEADER))
        optional = ("customer_email", "customer_reference", "meta_data", "expires_in_s")
        body = await inputs.read_object(request, self._config().api.max_body_bytes)
        inputs.check_fields(body, ("amount", "currency"), optional)
        payment, created = await self.payments.create(
            request[INTEGRATION], idempotency_key=key, amount=body["amount"], currency=body["currency"],
            **{name: body[name] for name in optional if name in body},
        )  # fmt: skip
        return _json(await self._payment(payment), 201 if created else 200)

    async def list_payments(self, request: web.Request) -> web.Response:
        params = inputs.query(
            request, ("status", "currency", "customer_reference", "since", "cursor", "limit")
        )
        after = inputs.cursor_param(params, "p")
        limit = inputs.limit_param(params)
        found = await self.payments.list(
            request[INTEGRATION],
            status=inputs.payment_status_param(params),
            currency=inputs.text_param(params, "currency"),
            customer_reference=inputs.text_param(params, "customer_reference"),
            since=inputs.since_param(params),
            after=after,
            limit=limit,
        )
        return _json(
            {
                "data": [await self._payment(p) for p in found],
                "next_cursor": inputs.encode_cursor("p", found[-1].id) if len(found) == limit else None,
            }
        )

    async def get_payment(self, request: web.Request) -> web.Response:
        inputs.query(request, ())
        payment, deposits, attempts = await self.payments.get(request[INTEGRATION], _reference(request))
        return _json(
            {
                **await self._payment(payment),
                "transactions": [self._deposit(d) for d in deposits],
                "attempts": [render.attempt(r) for r in attempts],
            }
        )

    async def cancel_payment(self, request: web.Request) -> web.Response:
        inputs.query(request, ())
        payment = await self.payments.cancel(request[INTEGRATION], _reference(request))
        return _json(await self._payment(payment))

    async def resend_payment(self, request: web.Request) -> web.Response:
        inputs.query(request, ())
        reference = _reference(request)
        entry = await self.payments.resend(request[INTEGRATION], reference)
        return _json(render.payment_resend(reference, entry), 202)

    async def _payment(self, p: Payment) -> dict[str, Any]:
        return render.payment(p, self.payments.decimals(p), await self.payments.uri(p))

    # --------------------------------------------------------------------------------------- events, keys

    async def events(self, request: web.Request) -> web.Response:
        params = inputs.query(request, ("after", "limit"))
        after = inputs.int_param(params, "after", 0, 0, inputs.MAX_ID)
        found = await self.book.events(request[INTEGRATION], after, inputs.limit_param(params))
        return _json({"data": [render.event(e) for e in found], "last_id": found[-1].id if found else after})

    async def keys(self, request: web.Request) -> web.Response:
        inputs.query(request, ())
        integration = request[INTEGRATION]
        config = self._config()
        highest = await self.book.highest_indexes(integration)
        data = []
        for key in integration.public_keys:
            index = highest.get(key.deriver.id)
            data.append(
                {
                    "chain": key.chain,
                    "currencies": [c.code for c in config.chain(key.chain).currencies],
                    "key_id": key.deriver.id,
                    "kind": key.deriver.kind,
                    "descriptor": key.deriver.descriptor,
                    "first_index": key.first_index,
                    "highest_index": index,
                    "gap_limit_hint": render.gap_limit_hint(index),
                }
            )
        return _json({"data": data})


def _reference(request: web.Request) -> str:
    return request.match_info["reference"]
