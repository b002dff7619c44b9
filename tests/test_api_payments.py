"""The payments endpoints through the real ApiServer on loopback, every answer checked against the OpenAPI
document (tests/test_api_document.py's harness): create with Idempotency-Key, get with transactions and
webhook attempts, list with filters and cursors, cancel, resend, refusals that write nothing, scoping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.test_api_document import SHOP_A, SHOP_B, USDT, ApiHarness, Client, open_harness
from watcher.model import AttemptResult, DepositStatus

BODY = {"amount": "0.0015", "currency": "BTC", "customer_reference": "order-1"}


@pytest.fixture
async def harness(tmp_path: Path, store_location: str) -> AsyncIterator[ApiHarness]:
    async with open_harness(tmp_path, store_location) as h:
        yield h


async def create(client: Client, key: str | None = "order-1", body: Any = None) -> Any:
    headers = {} if key is None else {"Idempotency-Key": key}
    return await client.call(
        "POST", "/v1/payments", json_body=BODY if body is None else body, headers=headers
    )


async def test_create_then_the_same_key_gives_the_same_payment(harness: ApiHarness) -> None:
    a = harness.client(SHOP_A)
    body = {**BODY, "customer_email": "c@shop.example", "meta_data": '{"cart":7}', "expires_in_s": 900}
    first = await create(a, body=body)
    assert first.status == 201, first.body
    p = first.body
    assert p["payment_reference"].startswith("PAY_") and p["status"] == "pending"
    assert (p["amount"], p["amount_received"], p["currency"]) == ("0.00150000", "0.00000000", "BTC")
    assert p["payment_uri"] == f"bitcoin:{p['address']}?amount=0.0015"
    assert (p["customer_email"], p["meta_data"], p["ended_at"]) == ("c@shop.example", '{"cart":7}', None)
    again = await create(a, body={**body, "amount": "0.00150"})  # the same amount, written otherwise
    assert again.status == 200 and again.body == p
    conflict = await create(a, body={**body, "amount": "0.002"})
    assert conflict.status == 409 and conflict.error["code"] == "idempotency_conflict"
    assert conflict.error["field"] == "Idempotency-Key"
    detail = await a.call("GET", f"/v1/payments/{p['payment_reference']}")
    assert detail.status == 200
    assert detail.body == {**p, "transactions": [], "attempts": []}
    # the payment's address is no customer's standing address: not listed, not found, not registrable
    assert (await a.call("GET", "/v1/addresses")).body["data"] == []
    path = f"/v1/addresses/BTC/{p['address']}"
    assert (await a.call("GET", path)).status == 404
    assert (await a.call("DELETE", path)).status == 404
    taken = await a.call("PUT", path, json_body={"foreign_id": "someone"})
    assert (taken.status, taken.error["code"]) == (409, "address_taken")
    payment = await harness.store.payment(SHOP_A, p["payment_reference"])
    assert payment is not None
    async with harness.store.transaction() as tx:
        row = await tx.address_by_id(payment.address_id)
    assert (row.active, row.source, row.foreign_id) == (
        True,
        "payment",
        p["payment_reference"],
    )  # still watched


async def test_without_an_idempotency_key_is_a_400_naming_the_header(harness: ApiHarness) -> None:
    a = harness.client(SHOP_A)
    for key in (None, "two words"):
        answer = await create(a, key=key)
        assert answer.status == 400 and answer.error["field"] == "Idempotency-Key"
    assert (await create(a, key=None)).error["code"] == "idempotency_key_required"
    assert (await a.call("GET", "/v1/payments")).body == {"data": [], "next_cursor": None}


async def test_bad_input_is_refused_naming_the_field_and_nothing_is_written(harness: ApiHarness) -> None:
    a = harness.client(SHOP_A)
    cases: list[tuple[dict[str, Any], int, str | None]] = [
        ({**BODY, "amount": 0.0015}, 422, "amount"),
        ({**BODY, "amount": "0.000000001"}, 422, "amount"),
        ({**BODY, "amount": "-1"}, 422, "amount"),
        ({**BODY, "amount": "0"}, 422, "amount"),
        ({**BODY, "currency": "DOGE"}, 422, "currency"),
        ({**BODY, "expires_in_s": 0}, 422, "expires_in_s"),
        ({**BODY, "expires_in_s": 10**9}, 422, "expires_in_s"),
        ({**BODY, "meta_data": "x" * 3000 + "\x01"}, 422, "meta_data"),
        ({**BODY, "colour": "red"}, 422, "colour"),
        ({"currency": "BTC"}, 422, "amount"),
        ({**BODY, "meta_data": "x" * 5000}, 413, None),  # over the body bound (4 KiB in the harness)
    ]
    for n, (body, status, field) in enumerate(cases):
        answer = await create(a, key=f"k{n}", body=body)
        assert (answer.status, answer.error["field"]) == (status, field), (body, answer.body)
    # Over meta_data's own bound (4 KiB of UTF-8) in a body the API accepts: the field is named.
    harness.server.config = replace(harness.config, api=replace(harness.config.api, max_body_bytes=64 * 1024))
    for n, (body, status, field) in enumerate([({**BODY, "meta_data": "\u00e9" * 2049}, 422, "meta_data")]):
        answer = await create(a, key=f"big{n}", body=body)
        assert (answer.status, answer.error["field"]) == (status, field), (body, answer.body)
    assert (await a.call("GET", "/v1/payments")).body["data"] == []
    assert await harness.store.outbox_entries() == []


async def test_another_integrations_payment_is_a_404(harness: ApiHarness) -> None:
    reference = (await create(harness.client(SHOP_A))).body["payment_reference"]
    b = harness.client(SHOP_B)
    for method, path in (
        ("GET", f"/v1/payments/{reference}"),
        ("POST", f"/v1/payments/{reference}/cancel"),
        ("POST", f"/v1/payments/{reference}/resend"),
        ("GET", "/v1/payments/PAY_nonsense"),
    ):
        answer = await b.call(method, path)
        assert (answer.status, answer.error["code"]) == (404, "not_found"), path
    assert (await b.call("GET", "/v1/payments")).body["data"] == []
    # B's own key "order-1" is B's own payment
    assert (await create(b, body={"amount": "1", "currency": "ETH"})).status == 201


async def test_list_filters_and_pages_by_cursor(harness: ApiHarness) -> None:
    a = harness.client(SHOP_A)
    made = [
        (await create(a, key=f"k{n}", body={**BODY, "customer_reference": f"o{n % 2}"})).body
        for n in range(3)
    ]
    refs = [p["payment_reference"] for p in made]
    await a.call("POST", f"/v1/payments/{refs[1]}/cancel")
    first = await a.call("GET", "/v1/payments", params={"limit": "2"})
    assert [p["payment_reference"] for p in first.body["data"]] == refs[:2]
    assert first.body["next_cursor"] is not None
    second = await a.call("GET", "/v1/payments", params={"limit": "2", "cursor": first.body["next_cursor"]})
    assert [p["payment_reference"] for p in second.body["data"]] == refs[2:]
    assert second.body["next_cursor"] is None
    canceled = await a.call("GET", "/v1/payments", params={"status": "canceled"})
    assert [p["payment_reference"] for p in canceled.body["data"]] == [refs[1]]
    by_ref = await a.call("GET", "/v1/payments", params={"customer_reference": "o0"})
    assert [p["payment_reference"] for p in by_ref.body["data"]] == [refs[0], refs[2]]
    bad = await a.call("GET", "/v1/payments", params={"status": "confirmed"})
    assert (bad.status, bad.error["field"]) == (422, "status")
    wrong = await a.call("GET", "/v1/payments", params={"cursor": "ZDox"})  # "d:1", a deposits cursor
    assert (wrong.status, wrong.error["code"]) == (400, "invalid_cursor")


async def test_cancel_final_is_final_and_resend_needs_a_webhook(harness: ApiHarness) -> None:
    a = harness.client(SHOP_A)
    reference = (await create(a)).body["payment_reference"]
    canceled = await a.call("POST", f"/v1/payments/{reference}/cancel")
    assert canceled.status == 200 and canceled.body["status"] == "canceled" and canceled.body["ended_at"]
    again = await a.call("POST", f"/v1/payments/{reference}/cancel")
    assert (again.status, again.error["code"]) == (409, "conflict")
    nothing = await a.call("POST", f"/v1/payments/{reference}/resend")  # coinspaid format: no webhook
    assert (nothing.status, nothing.error["code"]) == (409, "nothing_to_resend")


async def test_a_coinskro_integration_gets_the_cancel_webhook_and_its_attempts_show(
    harness: ApiHarness,
) -> None:
    shop = harness.integration(SHOP_A)
    callback = replace(shop.callback, format="coinskro", events=("payment_completed", "payment_canceled"))
    others = [i for i in harness.config.integrations if i.id != SHOP_A]
    harness.reconfigure(integrations=(replace(shop, callback=callback), *others))
    a = harness.client(SHOP_A)
    reference = (await create(a)).body["payment_reference"]
    await a.call("POST", f"/v1/payments/{reference}/cancel")
    [entry] = await harness.store.outbox_entries()
    assert entry.payment_id is not None and entry.body.startswith(b'{"event":"payment_canceled"')
    await harness.store.record_attempts([(AttemptResult(entry.id, 1.7e9, 3.5, 500, "HTTP 500", "no"), 2e9)])
    resent = await a.call("POST", f"/v1/payments/{reference}/resend")
    assert resent.status == 202 and resent.body["payment_reference"] == reference
    assert resent.body["status"] == "canceled"
    detail = await a.call("GET", f"/v1/payments/{reference}")
    assert [(x["http_status"], x["error"]) for x in detail.body["attempts"]] == [(500, "HTTP 500")]
    assert [e.body for e in await harness.store.outbox_entries()] == [entry.body, entry.body]


async def test_transactions_are_the_deposits_to_its_address_and_evm_uris(harness: ApiHarness) -> None:
    a = harness.client(SHOP_A)
    eth = (await create(a, key="e", body={"amount": "0.25", "currency": "ETH"})).body
    usdt = (await create(a, key="u", body={"amount": "12.5", "currency": "USDT"})).body
    assert eth["payment_uri"] == f"ethereum:{eth['address']}@31337?value=250000000000000000"
    assert usdt["payment_uri"] == (
        f"ethereum:{USDT.lower()}@31337/transfer?address={usdt['address']}&uint256=12500000"
    )
    payment = await harness.store.payment(SHOP_A, eth["payment_reference"])
    assert payment is not None
    async with harness.store.transaction() as tx:
        address = await tx.address_by_id(payment.address_id)
    deposit = await harness.pay(address, 3 * 10**17, (DepositStatus.NOT_CONFIRMED, DepositStatus.CONFIRMED))
    detail = (await a.call("GET", f"/v1/payments/{eth['payment_reference']}")).body
    [tx_seen] = detail["transactions"]
    assert (tx_seen["id"], tx_seen["status"], tx_seen["address"]) == (deposit.id, "confirmed", eth["address"])
    assert Decimal(tx_seen["amount"]) == Decimal("0.3")
    assert (await a.call("GET", f"/v1/payments/{usdt['payment_reference']}")).body["transactions"] == []


async def test_no_new_payment_on_a_chain_not_followed_but_a_retry_is_answered(harness: ApiHarness) -> None:
    client = harness.client()
    made = await create(client, key="before")
    assert made.status == 201, made.body
    troubles = {"bitcoin": "node unavailable: connection refused"}
    harness.server.payments._trouble = troubles.get  # what the daemon's health says of each chain
    refused = await create(client, key="during")
    assert refused.status == 503, refused.body
    assert refused.error["code"] == "chain_unavailable" and refused.error["field"] == "currency"
    assert "connection refused" in refused.error["message"]
    again = await create(client, key="before")
    assert again.status == 200 and again.body == made.body
    listed = await client.call("GET", "/v1/payments")
    assert [p["payment_reference"] for p in listed.body["data"]] == [made.body["payment_reference"]]
    eth = await create(client, key="eth", body={"amount": "0.5", "currency": "ETH"})
    assert eth.status == 201, eth.body
