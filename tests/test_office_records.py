"""The back office's deposits, payments and addresses pages (watcher/ui/records.py) on a real API server
over a real SQLite store (tests/test_api_document.py's harness), signed in through the real sign-in form
with an integration's API key or the operator's password: the search box each way, the filters, keyset
paging without gap or repeat while deposits arrive, one integration never reaching another's record (the
same 404 as an unknown id), every user string escaped, and the CSRF-protected resend queueing exactly what
the API's resend does. tests/test_office_e2e.py drives the pages in Chromium against the real daemon.
"""

from __future__ import annotations

import contextlib
import html
import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from tests.test_api_document import CONFIG, SHOP_A, SHOP_B, ApiHarness, open_harness
from watcher.config import UiConfig, load_config
from watcher.model import Deposit, DepositStatus, IssuedAddress, OutboxState
from watcher.operator_password import hash_password
from watcher.ui import explorer

OPERATOR_PASSWORD = "correct horse battery staple"
OPERATOR_HASH = hash_password(OPERATOR_PASSWORD)  # scrypt: made once for the module
XSS = "<script>window.pwned = 1</script>"
NOT_CONFIRMED, CONFIRMED = DepositStatus.NOT_CONFIRMED, DepositStatus.CONFIRMED


@dataclass
class Answer:
    status: int
    text: str
    location: str | None

    def ids(self, kind: str) -> list[int]:
        """The ids of the `kind` rows (deposit, address), in page order."""
        return [int(n) for n in re.findall(rf'<tr id="{kind}-(\d+)"', self.text)]

    def references(self) -> list[str]:
        return re.findall(r'<tr id="payment-(PAY_\w+)"', self.text)

    def older(self) -> str | None:
        found = re.search(r'<a id="older" href="([^"]+)"', self.text)
        return html.unescape(found.group(1)) if found else None


class Office:
    """A browser's view of the back office: its own cookie jar, signed in through the form."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        # The cookies are set by 127.0.0.1: aiohttp keeps cookies of an IP host only when told to.
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf_token = ""

    async def sign_in(self, secret: str) -> None:
        form = await self.get("/ui/signin")
        token = _field(form.text, "csrf_token")
        fields = {"secret": secret, "csrf_token": token, "next": "/ui/deposits"}
        signed = await self.post("/ui/signin", fields)
        assert (signed.status, signed.location) == (303, "/ui/deposits"), signed.text
        self.csrf_token = _field((await self.get("/ui/deposits")).text, "csrf_token")

    async def get(self, path: str) -> Answer:
        async with self.session.get(self.base_url + path, allow_redirects=False) as r:
            return Answer(r.status, await r.text(), r.headers.get("Location"))

    async def post(self, path: str, data: dict[str, str]) -> Answer:
        async with self.session.post(self.base_url + path, data=data, allow_redirects=False) as r:
            return Answer(r.status, await r.text(), r.headers.get("Location"))

    async def resend(self, path: str) -> Answer:
        return await self.post(path, {"csrf_token": self.csrf_token})

    async def close(self) -> None:
        await self.session.close()


def _field(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found is not None, page
    return html.unescape(found.group(1))


@dataclass
class World:
    harness: ApiHarness
    shop_a: Office
    shop_b: Office
    operator: Office

    async def customer(self, currency: str, foreign_id: str, shop: str = SHOP_A) -> IssuedAddress:
        api = self.harness.client(shop)
        body = {"currency": currency, "foreign_id": foreign_id}
        taken = await api.call("POST", "/v1/addresses", json_body=body)
        assert taken.status in (200, 201), taken.body
        return await self.harness.book.get(self.harness.integration(shop), currency, taken.body["address"])

    async def pay(self, address: IssuedAddress, amount: int, *statuses: DepositStatus) -> Deposit:
        return await self.harness.pay(address, amount, statuses or (NOT_CONFIRMED,))


@contextlib.asynccontextmanager
async def _world(tmp_path: Path, location: str) -> AsyncIterator[World]:
    async with open_harness(tmp_path, location) as h:
        h.reconfigure(ui=UiConfig(operator_password=OPERATOR_HASH))
        offices = [Office(h.base_url) for _ in range(3)]
        try:
            await offices[0].sign_in(h.keys[SHOP_A])
            await offices[1].sign_in(h.keys[SHOP_B])
            await offices[2].sign_in(OPERATOR_PASSWORD)
            yield World(h, *offices)
        finally:
            for office in offices:
                await office.close()


@pytest.fixture
async def world(tmp_path: Path, store_location: str) -> AsyncIterator[World]:
    # Both backends: the searches' SQL is written once and translated for PostgreSQL (watcher/pg_dialect.py).
    async with _world(tmp_path, store_location) as w:
        yield w


@pytest.fixture
async def sqlite_world(tmp_path: Path) -> AsyncIterator[World]:
    """On SQLite only: for what reads SQLite's own query plans."""
    async with _world(tmp_path, str(tmp_path / "w.sqlite3")) as w:
        yield w


# ------------------------------------------------------------------------------------------ deposits


async def test_the_search_box_finds_deposits_by_id_foreign_id_address_and_txid(world: World) -> None:
    eth = await world.customer("ETH", "alice")
    btc = await world.customer("BTC", "alice")
    bob = await world.customer("ETH", "bob")
    a1 = await world.pay(eth, 10**18)
    a2 = await world.pay(btc, 150_000)
    b1 = await world.pay(bob, 2 * 10**18)
    office = world.shop_a
    assert (await office.get("/ui/deposits")).ids("deposit") == [b1.id, a2.id, a1.id]  # newest first
    assert (await office.get("/ui/deposits?q=alice")).ids("deposit") == [a2.id, a1.id]
    assert (await office.get("/ui/deposits?q=%20bob%20")).ids("deposit") == [b1.id]  # trimmed
    assert (await office.get("/ui/deposits?q=alic")).ids("deposit") == []  # exact, not a prefix
    # An EVM address in any case; a Bitcoin address as issued.
    assert (await office.get(f"/ui/deposits?q={eth.address.lower()}")).ids("deposit") == [a1.id]
    shouting = "0x" + eth.address[2:].upper()
    assert (await office.get(f"/ui/deposits?q={shouting}")).ids("deposit") == [a1.id]
    assert (await office.get(f"/ui/deposits?q={btc.address}")).ids("deposit") == [a2.id]
    # A txid in any case, with or without 0x.
    for q in (a1.txid, a1.txid.upper(), "0x" + a1.txid):
        assert (await office.get(f"/ui/deposits?q={q}")).ids("deposit") == [a1.id], q
    assert (await office.get(f"/ui/deposits?q={b1.id}")).ids("deposit") == [b1.id]
    nothing = await office.get("/ui/deposits?q=nobody")
    assert nothing.ids("deposit") == [] and "No deposits match." in nothing.text


async def test_filters_by_status_and_currency_combine_with_the_search(world: World) -> None:
    eth = await world.customer("ETH", "carol")
    usdt = await world.customer("USDT", "carol")
    open_eth = await world.pay(eth, 1)
    done_eth = await world.pay(eth, 2, NOT_CONFIRMED, CONFIRMED)
    done_usdt = await world.pay(usdt, 1_500_001, NOT_CONFIRMED, CONFIRMED)
    office = world.shop_a
    assert (await office.get("/ui/deposits?status=confirmed")).ids("deposit") == [done_usdt.id, done_eth.id]
    assert (await office.get("/ui/deposits?status=not_confirmed")).ids("deposit") == [open_eth.id]
    assert (await office.get("/ui/deposits?currency=USDT")).ids("deposit") == [done_usdt.id]
    both = await office.get("/ui/deposits?q=carol&status=confirmed&currency=ETH")
    assert both.ids("deposit") == [done_eth.id]
    # The exact amount with the currency's decimals (USDT: 6), never a float.
    assert ">1.500001<" in (await office.get("/ui/deposits?currency=USDT")).text
    # A value the page's own selects cannot produce is no filter at all.
    assert len((await office.get("/ui/deposits?status=bogus&currency=DOGE")).ids("deposit")) == 3


async def test_paging_is_newest_first_without_gap_or_repeat_while_deposits_arrive(world: World) -> None:
    address = await world.customer("ETH", "dave")
    made = [(await world.pay(address, n + 1)).id for n in range(120)]
    office = world.shop_a
    first = await office.get("/ui/deposits")
    seen = first.ids("deposit")
    assert len(seen) == 50 and 'data-refresh-url="/ui/deposits?fragment=1"' in first.text
    older = first.older()
    # New deposits after the first page was read shift nothing on the next pages.
    arrived = [(await world.pay(address, 1000 + n)).id for n in range(3)]
    pages = 1
    while older is not None:
        page = await office.get(older)
        assert "data-refresh-url" not in page.text  # only the first page refreshes itself
        seen += page.ids("deposit")
        older, pages = page.older(), pages + 1
    assert pages == 3 and seen == sorted(made, reverse=True)
    assert (await office.get("/ui/deposits")).ids("deposit")[:3] == sorted(arrived, reverse=True)
    # The filters ride along in the page links.
    page = await office.get("/ui/deposits?q=dave&currency=ETH")
    assert page.older() == f"/ui/deposits?q=dave&currency=ETH&before={page.ids('deposit')[-1]}"


async def test_the_fragment_is_the_table_alone_for_the_refresh(world: World) -> None:
    deposit = await world.pay(await world.customer("BTC", "erin"), 5000)
    fragment = await world.shop_a.get("/ui/deposits?fragment=1")
    assert fragment.status == 200 and fragment.ids("deposit") == [deposit.id]
    assert "<html" not in fragment.text and "<script" not in fragment.text and "<form" not in fragment.text
    page = await world.shop_a.get("/ui/deposits")
    assert '<script src="/ui/static/records.js?v=' in page.text
    assert all(" src=" in tag for tag in re.findall(r"<script[^>]*>", page.text))  # nothing inline


async def test_a_deposit_page_shows_the_transaction_and_every_attempt(world: World) -> None:
    address = await world.customer("USDT", "frank")
    deposit = await world.pay(address, 2_500_000, NOT_CONFIRMED, CONFIRMED)
    await world.harness.attempt(deposit.id, 500, "HTTP 500")
    page = await world.shop_a.get(f"/ui/deposits/{deposit.id}")
    assert page.status == 200
    assert '<span id="amount">2.500000</span> USDT' in page.text
    assert deposit.txid in page.text and address.address in page.text
    assert 'id="explorer"' not in page.text  # a devnet (regtest, chain 31337) has no explorer
    entries = await world.harness.store.outbox_entries(deposit_id=deposit.id)
    assert [f'id="callback-{e.id}"' in page.text for e in entries] == [True, True]
    assert page.text.count('<tr class="attempt">') == 1 and "HTTP 500" in page.text
    # The shop's own page has no integration column or field; the operator's has the shop's name.
    assert "<dt>Integration</dt>" not in page.text
    operator = await world.operator.get(f"/ui/deposits/{deposit.id}")
    assert operator.status == 200 and "<dt>Integration</dt><dd>0b7a</dd>" in operator.text


# ------------------------------------------------------------------------------------------ resend


async def test_resend_needs_the_csrf_token_and_queues_what_the_api_queues(world: World) -> None:
    deposit = await world.pay(await world.customer("ETH", "grace"), 7, NOT_CONFIRMED, CONFIRMED)
    store = world.harness.store
    before = await store.outbox_entries(deposit_id=deposit.id)
    path = f"/ui/deposits/{deposit.id}/resend"
    assert (await world.shop_a.post(path, {})).status == 403
    assert (await world.shop_a.post(path, {"csrf_token": "x" * 43})).status == 403
    assert (await world.shop_b.post(path, {"csrf_token": world.shop_a.csrf_token})).status == 403
    assert await store.outbox_entries(deposit_id=deposit.id) == before  # nothing queued
    done = await world.shop_a.resend(path)
    assert (done.status, done.location) == (303, f"/ui/deposits/{deposit.id}?resend=queued")
    after = await store.outbox_entries(deposit_id=deposit.id)
    assert len(after) == len(before) + 1
    # The same bytes as the latest callback, pending now, the earlier one superseded: the API's resend.
    assert (after[-1].body, after[-1].status) == (before[-1].body, CONFIRMED)
    assert after[-1].state is OutboxState.PENDING
    assert after[-2].state is OutboxState.SUPERSEDED
    page = await world.shop_a.get(done.location or "")
    assert "The latest callback was queued again." in page.text
    assert f'id="callback-{after[-1].id}"' in page.text
    # Without a session: no page, no resend.
    stranger = Office(world.harness.base_url)
    try:
        answer = await stranger.get(f"/ui/deposits/{deposit.id}")
        assert answer.status == 303 and (answer.location or "").startswith("/ui/signin?next=")
        assert (await stranger.post(path, {"csrf_token": world.shop_a.csrf_token})).status == 403
    finally:
        await stranger.close()
    assert len(await store.outbox_entries(deposit_id=deposit.id)) == len(after)


# ------------------------------------------------------------------------------------------ scoping


async def test_an_integration_never_sees_anothers_records(world: World) -> None:
    mine = await world.pay(await world.customer("ETH", "heidi"), 1)
    theirs_address = await world.customer("ETH", "heidi", shop=SHOP_B)
    theirs = await world.pay(theirs_address, 2)
    body = {"amount": "0.01", "currency": "BTC"}
    payment = await world.harness.client(SHOP_B).call(
        "POST", "/v1/payments", json_body=body, headers={"Idempotency-Key": "b-1"}
    )
    assert payment.status == 201, payment.body
    reference = payment.body["payment_reference"]
    a = world.shop_a
    assert (await a.get("/ui/deposits")).ids("deposit") == [mine.id]
    assert (await a.get("/ui/deposits?q=heidi")).ids("deposit") == [mine.id]
    assert (await a.get(f"/ui/deposits?q={theirs.txid}")).ids("deposit") == []
    assert (await a.get(f"/ui/deposits?q={theirs.id}")).ids("deposit") == []
    assert (await a.get(f"/ui/deposits?q={theirs_address.address}")).ids("deposit") == []
    unknown = await a.get("/ui/deposits/999999")
    for path in (f"/ui/deposits/{theirs.id}", f"/ui/payments/{reference}"):
        answer = await a.get(path)
        assert (answer.status, answer.text) == (404, unknown.text), path  # not saying it exists
    for path in (f"/ui/deposits/{theirs.id}/resend", f"/ui/payments/{reference}/resend"):
        assert (await a.resend(path)).status == 404, path
    assert (await a.get("/ui/payments")).references() == []
    assert (await a.get(f"/ui/payments?q={reference}")).references() == []
    assert (await a.get("/ui/addresses?q=heidi")).text.count('<tr id="address-') == 1
    # The operator sees both shops, named in the integration column.
    operator = await world.operator.get("/ui/deposits?q=heidi")
    assert operator.ids("deposit") == [theirs.id, mine.id] and "<th>Integration</th>" in operator.text
    assert (await world.operator.get(f"/ui/payments/{reference}")).status == 200
    # The operator narrows a list to one integration; an integration's key cannot widen its own that way.
    assert 'name="integration"' in operator.text
    assert 'name="integration"' not in (await a.get("/ui/deposits")).text
    narrowed = await world.operator.get(f"/ui/deposits?q=heidi&integration={SHOP_B}")
    assert narrowed.ids("deposit") == [theirs.id]
    assert (await world.operator.get(f"/ui/deposits?integration={SHOP_A}")).ids("deposit") == [mine.id]
    assert (await world.operator.get(f"/ui/payments?integration={SHOP_A}")).references() == []
    assert (await world.operator.get(f"/ui/payments?integration={SHOP_B}")).references() == [reference]
    assert (await a.get(f"/ui/deposits?integration={SHOP_B}")).ids("deposit") == [mine.id]
    assert (await a.get(f"/ui/payments?integration={SHOP_B}")).references() == []
    assert (await world.shop_b.get(f"/ui/payments/{reference}")).status == 200


# ------------------------------------------------------------------------------------------ escaping


async def test_user_strings_are_escaped_everywhere(world: World) -> None:
    address = await world.customer("ETH", XSS)
    deposit = await world.pay(address, 1)
    email = "<script>window.pwned=2</script>@shop.example"
    created = await world.harness.client().call(
        "POST", "/v1/payments",
        json_body={"amount": "0.5", "currency": "ETH", "customer_reference": XSS, "customer_email": email,
                   "meta_data": '{"note": "<script>window.pwned = 3</script>"}'},
        headers={"Idempotency-Key": "xss-1"},
    )  # fmt: skip
    assert created.status == 201, created.body
    reference = created.body["payment_reference"]
    for office in (world.shop_a, world.operator):
        for path in (
            "/ui/deposits", "/ui/deposits?fragment=1", f"/ui/deposits/{deposit.id}",
            f"/ui/deposits?q={quote(XSS)}", "/ui/addresses", f"/ui/addresses?q={quote(XSS)}",
            "/ui/payments", f"/ui/payments/{reference}", f"/ui/payments?q={quote(email)}",
        ):  # fmt: skip
            page = await office.get(path)
            assert page.status == 200, path
            assert "<script>window" not in page.text, path
            assert "&lt;script&gt;window" in page.text, path
    payment_page = (await world.shop_a.get(f"/ui/payments/{reference}")).text
    escaped = "{&#34;note&#34;: &#34;&lt;script&gt;window.pwned = 3&lt;/script&gt;&#34;}"
    assert f'<pre id="meta-data">{escaped}</pre>' in payment_page


# ------------------------------------------------------------------------------------------ payments


async def test_payments_search_page_webhooks_and_resend(world: World) -> None:
    h = world.harness
    # Shop A speaks coinskro and wants `payment_canceled`: a cancel queues a webhook.
    shop = h.integration(SHOP_A)
    callback = replace(shop.callback, format="coinskro", events=("payment_canceled",))
    h.reconfigure(integrations=(replace(shop, callback=callback), h.integration(SHOP_B)))
    api = h.client()
    made = []
    for n, (currency, email) in enumerate((("BTC", "ivan@example.org"), ("ETH", None), ("BTC", None))):
        body = {"amount": "0.001", "currency": currency, "customer_reference": f"order-{n}"}
        if email:
            body["customer_email"] = email
        answer = await api.call("POST", "/v1/payments", json_body=body, headers={"Idempotency-Key": f"p-{n}"})
        assert answer.status == 201, answer.body
        made.append(answer.body)
    refs = [m["payment_reference"] for m in made]
    office = world.shop_a
    assert (await office.get("/ui/payments")).references() == refs[::-1]
    fragment = await office.get("/ui/payments?fragment=1")  # what records.js fetches on the first page
    assert fragment.references() == refs[::-1] and "<html" not in fragment.text
    assert (await office.get(f"/ui/payments?q={refs[1]}")).references() == [refs[1]]
    assert (await office.get("/ui/payments?q=order-2")).references() == [refs[2]]
    assert (await office.get("/ui/payments?q=ivan@example.org")).references() == [refs[0]]
    assert (await office.get(f"/ui/payments?q={made[1]['address'].lower()}")).references() == [refs[1]]
    assert (await office.get("/ui/payments?currency=ETH")).references() == [refs[1]]
    assert (await office.get("/ui/payments?status=canceled")).references() == []

    # A deposit to the payment's address is linked from its page, and links back.
    first_payment = await h.store.payment_by_reference(refs[0])
    assert first_payment is not None
    async with h.store.transaction() as tx:
        issued = await tx.address_by_id(first_payment.address_id)
    deposit = await world.pay(issued, 120_000)
    page = await office.get(f"/ui/payments/{refs[0]}")
    assert page.status == 200 and f'<a href="/ui/deposits/{deposit.id}">' in page.text
    assert '<span id="amount">0.00100000</span> BTC' in page.text and "ivan@example.org" in page.text
    assert f'<a href="/ui/payments/{refs[0]}">' in (await office.get(f"/ui/deposits/{deposit.id}")).text
    # Found by the txid paid to it; its deposits by its reference (their address's foreign_id).
    assert (await office.get(f"/ui/payments?q={deposit.txid.upper()}")).references() == [refs[0]]
    assert (await office.get(f"/ui/deposits?q={refs[0]}")).ids("deposit") == [deposit.id]

    # No webhook yet: nothing to resend, said so. Canceled: one webhook; resent: a second, the same bytes.
    nothing = await office.resend(f"/ui/payments/{refs[0]}/resend")
    assert nothing.location == f"/ui/payments/{refs[0]}?resend=nothing"
    assert "no webhook to send again" in (await office.get(nothing.location)).text
    assert (await api.call("POST", f"/v1/payments/{refs[0]}/cancel")).status == 200
    assert (await office.get("/ui/payments?status=canceled")).references() == [refs[0]]
    first = await h.store.outbox_entries(payment_id=first_payment.id)
    done = await office.resend(f"/ui/payments/{refs[0]}/resend")
    assert done.location == f"/ui/payments/{refs[0]}?resend=queued"
    entries = await h.store.outbox_entries(payment_id=first_payment.id)
    assert len(first) == 1 and len(entries) == 2 and entries[1].body == first[0].body
    page = await office.get(done.location)
    assert all(f'id="callback-{e.id}"' in page.text for e in entries)
    assert "The latest webhook was queued again." in page.text


# ------------------------------------------------------------------------------------------ addresses


async def test_addresses_by_customer_with_deposit_counts(world: World) -> None:
    eth = await world.customer("ETH", "judy")
    btc = await world.customer("BTC", "judy")
    await world.customer("BTC", "someone-else")
    for amount in (1, 2):
        await world.pay(eth, amount)
    office = world.shop_a
    page = await office.get("/ui/addresses?q=judy")
    assert page.ids("address") == [eth.id, btc.id]
    counts = re.findall(r'class="deposits-link" href="([^"]+)">(\d+)<', page.text)
    assert counts == [("/ui/deposits?q=judy", "2"), ("/ui/deposits?q=judy", "0")]
    assert "m/84&#39;/1&#39;/0&#39;/0/0" in page.text  # the derivation path (escaped quote marks)
    assert (await office.get(f"/ui/addresses?q={btc.address}")).ids("address") == [btc.id]
    assert len((await office.get("/ui/addresses")).ids("address")) == 3


# ------------------------------------------------------------------------------------------ explorer

EXPLORER_CASES = [
    ("bitcoin-core", "mainnet", None, "https://mempool.space/tx/ab"),
    ("esplora", "testnet", None, "https://mempool.space/testnet/tx/ab"),
    ("bitcoin-core", "regtest", None, None),
    ("evm", "mainnet", 1, "https://etherscan.io/tx/ab"),
    ("evm", "mainnet", None, "https://etherscan.io/tx/ab"),
    ("evm", "testnet", 11155111, "https://sepolia.etherscan.io/tx/ab"),
    ("evm", "testnet", None, "https://sepolia.etherscan.io/tx/ab"),
    ("evm", "mainnet", 137, None),  # another EVM chain: no Etherscan page for it
    ("evm", "regtest", 31337, None),
    ("evm", "regtest", None, None),
    ("other", "mainnet", 1, None),
]


@pytest.mark.parametrize(("adapter", "network", "chain_id", "link"), EXPLORER_CASES)
def test_explorer_links(adapter: str, network: str, chain_id: int | None, link: str | None) -> None:
    assert explorer.tx_link(adapter, network, chain_id, "ab") == link


def test_an_explorer_link_cannot_leave_the_txid_path() -> None:
    assert explorer.tx_link("evm", "mainnet", 1, "../x?y#z") == "https://etherscan.io/tx/..%2Fx%3Fy%23z"


def test_a_chains_explorer_url_replaces_the_default() -> None:
    template = "https://mempool.space/signet/tx/{txid}"
    link = explorer.tx_link("bitcoin-core", "testnet", None, "ab", template)
    assert link == "https://mempool.space/signet/tx/ab"
    assert explorer.tx_link("evm", "regtest", 31337, "0xab", "http://127.0.0.1:5100/tx/{txid}") == (
        "http://127.0.0.1:5100/tx/0xab"
    )


def test_explorer_url_is_read_from_the_config(tmp_path: Path) -> None:
    line = "    explorer_url: https://x.example/tx/{txid}\n"
    good = CONFIG.replace("    adapter: bitcoin-core\n", "    adapter: bitcoin-core\n" + line)
    (tmp_path / "c.yaml").write_text(good)
    loaded = load_config(str(tmp_path / "c.yaml"))
    assert loaded.chain("bitcoin").explorer_url == "https://x.example/tx/{txid}"
    assert loaded.chain("ethereum").explorer_url is None


# ------------------------------------------------------------------------------------------ query plans


async def test_searches_by_txid_address_and_foreign_id_use_indexes(sqlite_world: World) -> None:
    """The statements a search runs, as SQLite ran them (bound values in), explained on another
    connection: the txid search and the address look-ups (by foreign_id, by address) search indexes and
    scan no table. (SQLite's plans; PostgreSQL has the same indexes, from the same schema versions.)"""
    world = sqlite_world
    eth = await world.customer("ETH", "kim")
    deposit = await world.pay(eth, 1)
    store = world.harness.store
    ran: list[str] = []
    await store._reader.set_trace_callback(ran.append)
    try:
        assert (await world.operator.get(f"/ui/deposits?q={deposit.txid}")).ids("deposit") == [deposit.id]
        txid_statements = [s for s in ran if "txid IN" in s]
        ran.clear()
        assert (await world.shop_a.get(f"/ui/addresses?q={eth.address}")).ids("address") == [eth.id]
        assert (await world.shop_a.get("/ui/addresses?q=kim")).ids("address") == [eth.id]
        address_statements = [s for s in ran if s.startswith("SELECT") and "FROM addresses WHERE" in s]
    finally:
        await store._reader.set_trace_callback(None)
    # The address: by foreign_id and by (currency, watch key); "kim": by foreign_id (no address's shape).
    assert len(txid_statements) == 1 and len(address_statements) == 3
    explain = sqlite3.connect(store.path)
    try:
        for statement in txid_statements + address_statements:
            plan = [row[3] for row in explain.execute("EXPLAIN QUERY PLAN " + statement)]
            assert not [step for step in plan if step.startswith("SCAN") and "CONSTANT" not in step], plan
            assert any("INDEX" in step or "PRIMARY KEY" in step for step in plan), plan
    finally:
        explain.close()


async def test_a_deposit_without_a_callback_has_nothing_to_resend(world: World) -> None:
    address = await world.customer("BTC", "lena")
    async with world.harness.store.transaction() as tx:  # as a chain with callbacks turned off records it
        deposit_id = await tx.insert_deposit(
            chain="bitcoin", currency="BTC", address_id=address.id, txid="ab" * 32, tx_index=1, amount=5000,
            sender=None, nonce=None, inputs=(), now=1_700_000_000.0,
        )  # fmt: skip
    page = await world.shop_a.get(f"/ui/deposits/{deposit_id}")
    assert page.status == 200 and "None queued yet." in page.text and 'id="resend"' not in page.text
    done = await world.shop_a.resend(f"/ui/deposits/{deposit_id}/resend")
    assert done.location == f"/ui/deposits/{deposit_id}?resend=nothing"
    assert "no callback to send again" in (await world.shop_a.get(done.location)).text
    assert await world.harness.store.outbox_entries(deposit_id=deposit_id) == []


async def test_the_addresses_list_pages_newest_first(world: World) -> None:
    made = [(await world.customer("ETH", f"m-{n}")).id for n in range(55)]
    page = await world.shop_a.get("/ui/addresses")
    seen = page.ids("address")
    older = page.older()
    assert len(seen) == 50 and older is not None
    last = await world.shop_a.get(older)
    assert last.older() is None
    assert seen + last.ids("address") == sorted(made, reverse=True)
    # Shop B has none of them; the operator all.
    assert (await world.shop_b.get("/ui/addresses")).ids("address") == []
    assert len((await world.operator.get("/ui/addresses")).ids("address")) == 50
