"""The merchant API's endpoints against a real server, a real AddressBook and a real SQLite store: issuing,
registering, listing with cursors, deposits with their attempts, resend, the event feed, the public keys,
and one integration never reaching another's objects. Every answer is checked against the OpenAPI
document by the harness (tests/test_api_document.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.test_api_document import SHOP_A, SHOP_B, ApiHarness, open_harness
from watcher.model import DepositStatus

# m/44'/60'/0'/0/0 of "abandon x11 about" (the issue's vector): shop A's first EVM address.
FIRST_EVM = "0x9858EfFD232B4033E47d90003D41EC34EcaEda94"
OTHER_BTC = "bcrt1qfxy4uv2dwwmyyc4th220cuj3s6cf4d896nslvq"


@pytest.fixture
async def harness(tmp_path: Path, store_location: str) -> AsyncIterator[ApiHarness]:
    async with open_harness(tmp_path, store_location) as h:
        yield h


# ------------------------------------------------------------------------------------------ addresses


async def test_take_creates_once_then_answers_the_same_address(harness: ApiHarness) -> None:
    api = harness.client()
    first = await api.call("POST", "/v1/addresses", json_body={"currency": "ETH", "foreign_id": "cust-1"})
    assert first.status == 201
    assert first.body["address"] == FIRST_EVM
    assert first.body["derivation_path"].endswith("/0/0")
    assert first.body["integration_id"] == SHOP_A and first.body["source"] == "api" and first.body["active"]
    again = await api.call("POST", "/v1/addresses", json_body={"currency": "ETH", "foreign_id": "cust-1"})
    assert again.status == 200 and again.body == first.body
    # One address serves every currency of the EVM chain, and the next customer gets the next index.
    token = await api.call("POST", "/v1/addresses", json_body={"currency": "USDT", "foreign_id": "cust-1"})
    assert token.status == 201 and token.body["address"] == FIRST_EVM and token.body["currency"] == "USDT"
    other = await api.call("POST", "/v1/addresses", json_body={"currency": "ETH", "foreign_id": "cust-2"})
    assert other.body["derivation_path"].endswith("/0/1") and other.body["address"] != FIRST_EVM
    btc = await api.call("POST", "/v1/addresses", json_body={"currency": "BTC", "foreign_id": "cust-1"})
    assert btc.status == 201 and btc.body["address"].startswith("bcrt1q")
    assert btc.body["derivation_path"] == "m/84'/1'/0'/0/0"


async def test_concurrent_takes_for_one_customer_answer_one_address(harness: ApiHarness) -> None:
    api = harness.client()
    take = {"currency": "BTC", "foreign_id": "c"}
    answers = await asyncio.gather(*(api.call("POST", "/v1/addresses", json_body=take) for _ in range(20)))
    assert len({a.body["address"] for a in answers}) == 1
    assert sorted(a.status for a in answers) == [200] * 19 + [201]


async def test_register_get_list_delete(harness: ApiHarness) -> None:
    api = harness.client()
    path = f"/v1/addresses/BTC/{OTHER_BTC}"
    put = await api.call("PUT", path, json_body={"foreign_id": "old-1", "from_height": 5})
    assert put.status == 201 and put.body["source"] == "api" and put.body["derivation_path"] is None
    assert (await api.call("PUT", path, json_body={"foreign_id": "old-1"})).status == 200
    got = await api.call("GET", path)
    assert got.status == 200 and got.body["id"] == put.body["id"]
    gone = await api.call("DELETE", path)
    assert gone.status == 200 and gone.body["active"] is False
    listed = await api.call("GET", "/v1/addresses", params={"foreign_id": "old-1"})
    assert [a["active"] for a in listed.body["data"]] == [False]
    # Registered again: watched again, the same row.
    again = await api.call("PUT", path, json_body={"foreign_id": "old-1"})
    assert again.status == 200 and again.body["active"] and again.body["id"] == put.body["id"]


async def test_list_pages_with_an_opaque_cursor_and_filters(harness: ApiHarness) -> None:
    api = harness.client()
    for n in range(5):
        await api.call("POST", "/v1/addresses", json_body={"currency": "ETH", "foreign_id": f"c{n}"})
    await api.call("POST", "/v1/addresses", json_body={"currency": "BTC", "foreign_id": "c0"})
    seen: list[str] = []
    params = {"limit": "2", "currency": "ETH"}
    pages = 0
    while True:
        page = await api.call("GET", "/v1/addresses", params=params)
        assert page.status == 200
        seen += [a["foreign_id"] for a in page.body["data"]]
        pages += 1
        if page.body["next_cursor"] is None:
            break
        params = {**params, "cursor": page.body["next_cursor"]}
    assert seen == [f"c{n}" for n in range(5)] and pages == 3
    by_customer = await api.call("GET", "/v1/addresses", params={"foreign_id": "c0"})
    assert sorted(a["currency"] for a in by_customer.body["data"]) == ["BTC", "ETH"]


async def test_bad_cursors_are_400_naming_cursor(harness: ApiHarness) -> None:
    api = harness.client()
    for n in range(2):
        await api.call("POST", "/v1/addresses", json_body={"currency": "ETH", "foreign_id": f"c{n}"})
    page = await api.call("GET", "/v1/addresses", params={"limit": "1"})
    cursor = page.body["next_cursor"]
    for bad in ("nope", "!!!", cursor + "x", "ZDox"):  # "ZDox" is a deposits cursor ("d:1")
        answer = await api.call("GET", "/v1/addresses", params={"cursor": bad})
        assert answer.status == 400, bad
        assert (answer.error["code"], answer.error["field"]) == ("invalid_cursor", "cursor")
    answer = await api.call("GET", "/v1/deposits", params={"cursor": cursor})
    assert answer.status == 400 and answer.error["field"] == "cursor"


# ------------------------------------------------------------------------------------------ deposits


async def test_deposits_list_detail_with_attempts_and_resend(harness: ApiHarness) -> None:
    api = harness.client()
    taken = await api.call("POST", "/v1/addresses", json_body={"currency": "USDT", "foreign_id": "c1"})
    address = await harness.book.get(harness.integration(SHOP_A), "USDT", taken.body["address"])
    paid = await harness.pay(address, 1_500_001, (DepositStatus.NOT_CONFIRMED, DepositStatus.CONFIRMED))
    await harness.attempt(paid.id, 500, "HTTP 500")
    await harness.attempt(paid.id, 200)
    listed = await api.call("GET", "/v1/deposits", params={"status": "confirmed", "currency": "USDT"})
    assert [d["id"] for d in listed.body["data"]] == [paid.id]
    # The exact amount with the token's 6 decimals, never a float.
    assert listed.body["data"][0]["amount"] == "1.500001"
    assert listed.body["next_cursor"] is None
    assert (await api.call("GET", "/v1/deposits", params={"status": "not_confirmed"})).body["data"] == []
    detail = await api.call("GET", f"/v1/deposits/{paid.id}")
    assert detail.status == 200 and detail.body["foreign_id"] == "c1" and detail.body["confirmations"] == 1
    assert [(a["http_status"], a["error"]) for a in detail.body["attempts"]] == [(500, "HTTP 500"), (200, "")]
    resent = await api.call("POST", f"/v1/deposits/{paid.id}/resend")
    assert resent.status == 202 and resent.body["status"] == "confirmed"
    assert (await api.call("GET", "/v1/deposits/999999")).status == 404
    assert (await api.call("POST", "/v1/deposits/999999/resend")).status == 404


async def test_deposits_since_accepts_rfc3339_and_unix_seconds(harness: ApiHarness) -> None:
    api = harness.client()
    taken = await api.call("POST", "/v1/addresses", json_body={"currency": "ETH", "foreign_id": "c1"})
    address = await harness.book.get(harness.integration(SHOP_A), "ETH", taken.body["address"])
    paid = await harness.pay(address, 10**18, (DepositStatus.NOT_CONFIRMED,))
    for since, found in (
        ("2000-01-01T00:00:00Z", [paid.id]),
        ("2999-01-01T00:00:00+02:00", []),
        (str(int(paid.first_seen_at) - 10), [paid.id]),
        (str(int(paid.first_seen_at) + 10), []),
    ):
        answer = await api.call("GET", "/v1/deposits", params={"since": since})
        assert [d["id"] for d in answer.body["data"]] == found, since
        assert answer.body["data"] == [] or answer.body["data"][0]["amount"] == "1.000000000000000000"
    for bad in ("yesterday", "2025-01-01T00:00:00", "2025-13-01T00:00:00Z"):
        answer = await api.call("GET", "/v1/deposits", params={"since": bad})
        assert answer.status == 422 and answer.error["field"] == "since", bad


async def test_resend_without_a_callback_is_409(harness: ApiHarness) -> None:
    api = harness.client()
    taken = await api.call("POST", "/v1/addresses", json_body={"currency": "ETH", "foreign_id": "c1"})
    address = await harness.book.get(harness.integration(SHOP_A), "ETH", taken.body["address"])
    async with harness.store.transaction() as tx:
        deposit_id = await tx.insert_deposit(
            chain="ethereum", currency="ETH", address_id=address.id, txid="0x" + "ab" * 32, tx_index=0,
            amount=1, sender=None, nonce=None, inputs=(), now=1.0,
        )  # fmt: skip
    answer = await api.call("POST", f"/v1/deposits/{deposit_id}/resend")
    assert answer.status == 409 and answer.error["code"] == "nothing_to_resend"


# ------------------------------------------------------------------------------------------ events, keys


async def test_events_page_every_status_change_in_order(harness: ApiHarness) -> None:
    api = harness.client()
    taken = await api.call("POST", "/v1/addresses", json_body={"currency": "BTC", "foreign_id": "c1"})
    address = await harness.book.get(harness.integration(SHOP_A), "BTC", taken.body["address"])
    first = await harness.pay(address, 150_000, (DepositStatus.NOT_CONFIRMED, DepositStatus.CONFIRMED))
    second = await harness.pay(address, 7, (DepositStatus.NOT_CONFIRMED, DepositStatus.CANCELLED))
    everything = await api.call("GET", "/v1/events")
    expected = [
        (first.id, "not_confirmed"),
        (first.id, "confirmed"),
        (second.id, "not_confirmed"),
        (second.id, "cancelled"),
    ]
    assert [(e["deposit_id"], e["status"]) for e in everything.body["data"]] == expected
    assert everything.body["last_id"] == everything.body["data"][-1]["id"]
    # The callback body as it was queued: the deposit as the callback carried it.
    body = everything.body["data"][1]["deposit"]
    assert body["status"] == "confirmed" and body["currency_sent"]["amount"] == "0.00150000"
    assert body["crypto_address"]["foreign_id"] == "c1"
    # Paging with `after` misses and repeats nothing, and an empty page keeps `last_id`.
    after, paged = 0, []
    while True:
        page = await api.call("GET", "/v1/events", params={"after": str(after), "limit": "3"})
        if not page.body["data"]:
            assert page.body["last_id"] == after
            break
        paged += page.body["data"]
        after = page.body["last_id"]
    assert paged == everything.body["data"]


async def test_keys_show_the_highest_issued_index_and_a_gap_limit_hint(harness: ApiHarness) -> None:
    api = harness.client()
    before = await api.call("GET", "/v1/keys")
    assert [(k["chain"], k["highest_index"], k["gap_limit_hint"]) for k in before.body["data"]] == [
        ("ethereum", None, 20),
        ("bitcoin", None, 20),
    ]
    assert before.body["data"][0]["currencies"] == ["ETH", "USDT"]
    for n in range(3):
        await api.call("POST", "/v1/addresses", json_body={"currency": "BTC", "foreign_id": f"c{n}"})
    after = await api.call("GET", "/v1/keys")
    btc = after.body["data"][1]
    assert btc["highest_index"] == 2 and btc["first_index"] == 0 and btc["descriptor"].startswith("wpkh(")
    assert "prv" not in btc["descriptor"]
    assert after.body["data"][0]["highest_index"] is None


# ------------------------------------------------------------------------------------------ isolation


async def test_another_integrations_key_gets_404_for_this_ones_objects(harness: ApiHarness) -> None:
    mine, theirs = harness.client(SHOP_A), harness.client(SHOP_B)
    taken = await mine.call("POST", "/v1/addresses", json_body={"currency": "ETH", "foreign_id": "c1"})
    address = taken.body["address"]
    stored = await harness.book.get(harness.integration(SHOP_A), "ETH", address)
    paid = await harness.pay(stored, 5, (DepositStatus.NOT_CONFIRMED,))
    path = f"/v1/addresses/ETH/{address}"
    for method, url in (
        ("GET", path),
        ("DELETE", path),
        ("GET", f"/v1/deposits/{paid.id}"),
        ("POST", f"/v1/deposits/{paid.id}/resend"),
    ):
        answer = await theirs.call(method, url)
        assert answer.status == 404 and answer.error["code"] == "not_found", (method, url)
    # Registering it is refused without saying whose it is; listing shows nothing of shop A.
    put = await theirs.call("PUT", path, json_body={"foreign_id": "c1"})
    assert put.status == 409 and put.error["code"] == "address_taken"
    assert (await theirs.call("GET", "/v1/addresses")).body["data"] == []
    assert (await theirs.call("GET", "/v1/deposits")).body["data"] == []
    assert (await theirs.call("GET", "/v1/events")).body == {"data": [], "last_id": 0}
    # The same foreign_id is another customer in another integration: another address.
    own = await theirs.call("POST", "/v1/addresses", json_body={"currency": "ETH", "foreign_id": "c1"})
    assert own.status == 201 and own.body["address"] != address
    # And shop A's address is untouched by all of it.
    assert (await mine.call("GET", path)).body["active"] is True
