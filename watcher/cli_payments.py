"""The `payments` commands: a merchant's operator creating, reading, cancelling and resending payments for
orders by hand or from a script. Each goes through `PaymentBook`, as the merchant API does, so both refuse
and answer alike (`--json` prints the API's payment objects). A payment created here while the daemon runs
is watched from its next poll (the followers pick new address rows up by id).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from watcher.address_book import AddressBook
from watcher.api import render
from watcher.cli_addresses import integration_of
from watcher.config import Config, IntegrationConfig
from watcher.model import Payment
from watcher.payment_book import PaymentBook
from watcher.store_open import open_store


def add_parsers(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", required=True, help="the YAML configuration file")
    common.add_argument("--integration", help="the integration's id (default: the only one)")
    common.add_argument("--json", action="store_true", help="answer in JSON (the API's payment objects)")
    payments = sub.add_parser("payments", help="create, list, show, cancel payments for orders; resend")
    actions = payments.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", parents=[common], help="a payment to a fresh derived address")
    create.add_argument("--amount", required=True, help='a decimal of whole coins, e.g. "0.0015"')
    create.add_argument("--currency", required=True)
    create.add_argument("--idempotency-key", required=True, help="the same key again gives the same payment")
    create.add_argument("--customer-email")
    create.add_argument("--customer-reference")
    create.add_argument("--meta-data")
    create.add_argument("--expires-in-s", type=int)
    listing = actions.add_parser("list", parents=[common], help="the integration's payments, oldest first")
    listing.add_argument("--status")
    listing.add_argument("--currency")
    listing.add_argument("--customer-reference")
    listing.add_argument("--after", type=int, default=0, help="list the payments after this id")
    listing.add_argument("--limit", type=int, default=100)
    for name, text in (
        ("show", "one payment with its transactions and webhook attempts"),
        ("cancel", "cancel a pending or linked payment"),
        ("resend", "send the payment's latest webhook again"),
    ):
        action = actions.add_parser(name, parents=[common], help=text)
        action.add_argument("reference", help="the payment's PAY_ reference")


async def payments(config: Config, args: argparse.Namespace) -> int:
    integration = integration_of(config, args.integration)
    store = await open_store(config)
    try:
        return await _action(PaymentBook(AddressBook(store, config)), integration, args)
    finally:
        await store.close()


async def _action(book: PaymentBook, integration: IntegrationConfig, args: argparse.Namespace) -> int:
    if args.action == "create":
        payment, created = await book.create(
            integration, amount=args.amount, currency=args.currency, idempotency_key=args.idempotency_key,
            customer_email=args.customer_email, customer_reference=args.customer_reference,
            meta_data=args.meta_data, expires_in_s=args.expires_in_s,
        )  # fmt: skip
        await _print(book, [payment], args.json, "new" if created else "already created with this key")
    elif args.action == "list":
        found = await book.list(
            integration, status=args.status, currency=args.currency,
            customer_reference=args.customer_reference, after=args.after, limit=args.limit,
        )  # fmt: skip
        await _print(book, found, args.json)
    elif args.action == "show":
        payment, deposits, attempts = await book.get(integration, args.reference)
        if args.json:
            shown = await _json(book, payment)
            transactions = [render.deposit(d, book.decimals(payment)) for d in deposits]
            print(
                json.dumps(
                    {**shown, "transactions": transactions, "attempts": list(map(render.attempt, attempts))}
                )
            )
        else:
            await _print(book, [payment], False)
            print(f"  {len(deposits)} transaction(s), {len(attempts)} webhook attempt(s)")
    elif args.action == "cancel":
        await _print(book, [await book.cancel(integration, args.reference)], args.json)
    else:
        entry = await book.resend(integration, args.reference)
        answer = render.payment_resend(args.reference, entry)
        print(
            json.dumps(answer)
            if args.json
            else f"queued webhook {entry.id} ({entry.status}) of {args.reference}"
        )
    return 0


async def _json(book: PaymentBook, payment: Payment) -> dict[str, Any]:
    return render.payment(payment, book.decimals(payment), await book.uri(payment))


async def _print(book: PaymentBook, found: list[Payment], as_json: bool, note: str = "") -> None:
    for payment in found:
        shown = await _json(book, payment)
        if as_json:
            print(json.dumps(shown if not note else {**shown, "created": note == "new"}))
            continue
        suffix = f" ({note})" if note else ""
        print(
            f"{shown['payment_reference']} {shown['status']} {shown['amount']} {shown['currency']}"
            f" to {shown['address']} expires {shown['expires_at']}{suffix}\n  {shown['payment_uri']}"
        )
