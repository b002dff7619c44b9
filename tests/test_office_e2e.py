"""The back office's deposit pages in a real headless Chromium (tests/browser.py) against the real daemon
process with real anvil and bcoin nodes and a real receiver: one daemon, one browser for the module.

Signed in through the sign-in page (the operator's password, then an integration's API key), the deposits
list shows a deposit paid on a node while the page is open, without a reload (a marker set in the page
after it loaded is still there); the deposit's page shows its callbacks and their attempts; the resend
button queues the latest callback again and, after the dispatcher delivered it to the receiver (the same
bytes), the new attempt shows. An integration's key sees its own deposits only. A payment's page shows its
customer's strings as text and links the transaction paid to it. Screenshots of the list and of a deposit
page at desktop (1280x800) and phone (390x844) width, and of a payment page, go to tests/browser.py's
SCREENSHOTS folder.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from devnet import btc_tools as btc
from devnet import evm_tools as evm
from devnet.anvil import AnvilNode
from devnet.bcoin import BcoinNode
from devnet.receiver import Receiver
from tests.browser import SCREENSHOTS, Browser, Page, running_browser
from tests.daemon_process import DaemonProcess, free_port, write_config
from tests.daemon_world import ApiClient, daemon_config, regtest_chains, wait_ready
from tests.test_derivation import ROOT_FINGERPRINT, account
from watcher.apikeys import new_api_key
from watcher.operator_password import hash_password

pytestmark = pytest.mark.asyncio(loop_scope="module")

SHOP = "5e3b7d2f-9a4c-4f6e-8b1d-c2d3e4f5a6b7"
OTHER = "6f4c8e3a-0b5d-4a7f-9c2e-d3e4f5a6b7c8"
SHOP_KEY, SHOP_HASH = new_api_key(live=False)
OTHER_KEY, OTHER_HASH = new_api_key(live=False)
OPERATOR_PASSWORD = "office e2e operator password"
SECRET = "office-callback-secret"
MIN_CONF = 2
WPKH = f"wpkh([{ROOT_FINGERPRINT}/84h/1h/0h]{account('m/84h/1h/0h', 'tpub')}/0/*)"
DESKTOP = (1280, 800)
PHONE = (390, 844)
# Set in the page after it loaded: still there at the end means the page was never reloaded.
MARKER = "window.__loadedOnce = 'yes'"
STILL_LOADED = "window.__loadedOnce === 'yes'"


@dataclass
class World:
    anvil: AnvilNode
    bcoin: BcoinNode
    daemon: DaemonProcess
    browser: Browser
    receiver: Receiver
    api: ApiClient

    @property
    def origin(self) -> str:
        return self.api.origin

    async def take(self, currency: str, foreign_id: str, key: str = SHOP_KEY) -> str:
        taken = {"currency": currency, "foreign_id": foreign_id}
        status, body = await self.api.call("POST", "/v1/addresses", taken, key=key)
        assert status == 201, body
        address: str = body["address"]
        return address

    async def sign_in(self, page: Page, secret: str) -> None:
        """Through the sign-in page, as a person would: open a page, get sent to sign in, come back."""
        assert await page.goto(f"{self.origin}/ui/deposits") == 200
        assert await page.evaluate("location.pathname") == "/ui/signin"
        await page.evaluate(f"document.querySelector('input[name=secret]').value = {json.dumps(secret)}")
        await page.evaluate("document.querySelector('input[name=secret]').form.requestSubmit()")
        await page.wait_for("location.pathname === '/ui/deposits' && document.readyState === 'complete'")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(
    chromium: str, anvil: AnvilNode, bcoin: BcoinNode, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("office")
    status_port, api_port = free_port(), free_port()
    password_file = tmp / "operator-password"
    password_file.write_text(hash_password(OPERATOR_PASSWORD).line() + "\n")
    async with Receiver(key="office-key", secret=SECRET) as rx:

        def integration(id_: str, name: str, key_hash: str, ethereum: str) -> dict[str, Any]:
            return {
                "id": id_, "name": name,
                "callback": {"callback_url": rx.url, "key": rx.key, "secret": SECRET, "timeout_s": 2},
                "api_keys": [key_hash],
                "public_keys": {"ethereum": ethereum, **({"bitcoin": WPKH} if id_ == SHOP else {})},
            }  # fmt: skip

        integrations = [
            integration(SHOP, "Corner shop", SHOP_HASH.line(), account("m/44h/60h/0h")),
            integration(OTHER, "Other shop", OTHER_HASH.line(), account("m/44h/60h/1h")),
        ]
        chains = regtest_chains(anvil, bcoin, MIN_CONF)
        ui = {"operator_password_file": str(password_file)}
        config = daemon_config(tmp / "watcher.sqlite3", status_port, api_port, integrations, chains, ui=ui)
        daemon = DaemonProcess(write_config(tmp / "c.yaml", config), status_port, tmp / "daemon.log")
        daemon.start()
        try:
            async with running_browser() as browser:
                w = World(anvil, bcoin, daemon, browser, rx, ApiClient(api_port, SHOP_KEY))
                await daemon.wait_live()
                await wait_ready(daemon, w.api)
                yield w
        finally:
            code = daemon.stop()
            assert code == 0, daemon.log()


def row_of(foreign_id: str) -> str:
    """A JavaScript expression: the deposit id of the list's row with this foreign_id, or null."""
    return (
        "(() => { const row = [...document.querySelectorAll('#deposits-table tbody tr[data-id]')]"
        f".find(r => r.querySelector('td.text').textContent === {json.dumps(foreign_id)});"
        " return row ? row.dataset.id : null; })()"
    )


def requests_for(rx: Receiver, txid: str) -> list[dict[str, Any]]:
    return [r.body for r in rx.requests if r.body.get("transactions", [{}])[0].get("txid") == txid]


def delivered_for(rx: Receiver, txid: str, status: str) -> list[dict[str, Any]]:
    return [
        r.body
        for r in rx.delivered
        if r.body.get("status") == status and r.body["transactions"][0]["txid"] == txid
    ]


async def attempts_shown(page: Page) -> int:
    shown: int = await page.evaluate("document.querySelectorAll('#callbacks tr.attempt').length")
    return shown


async def attempts_after_reloads(page: Page, expected: Callable[[], int]) -> int:
    """The attempts the page shows once they are `expected()`, reloading it until then (at most 30 s)."""
    for _ in range(60):
        if await attempts_shown(page) == expected():
            break
        await asyncio.sleep(0.5)
        await page.goto(await page.evaluate("location.href"))
    return await attempts_shown(page)


async def horizontal_scroll(page: Page) -> int:
    widths = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    return int(max(0, max(widths) - PHONE[0]))


async def test_the_operator_sees_a_new_deposit_appear_opens_it_and_resends_it(world: World) -> None:
    w = world
    page = await w.browser.new_page(*DESKTOP)
    await w.sign_in(page, OPERATOR_PASSWORD)
    await page.evaluate(MARKER)
    address = await w.take("ETH", "office-e2e-eth")
    txid = evm.send_eth(w.anvil.url, evm.accounts(w.anvil.url)[0], address, 3 * 10**16)  # mined: 1 of 2
    deposit_id = await page.wait_for(row_of("office-e2e-eth"))
    assert await page.evaluate(STILL_LOADED)  # it came in without a reload
    row = f"document.getElementById('deposit-{deposit_id}')"
    assert "0.030000000000000000" in await page.evaluate(f"{row}.textContent")
    assert "Corner shop" in await page.evaluate(f"{row}.textContent")  # the operator's integration column
    # Confirmed on the node: the row follows it too, still without a reload.
    evm.mine(w.anvil.url, 1)
    text = f"{row}.textContent"
    await page.wait_for(f"{text}.includes('confirmed') && !{text}.includes('not_confirmed')")
    assert await page.evaluate(STILL_LOADED)
    await page.screenshot(SCREENSHOTS / "office-deposits-desktop.png")
    await w.receiver.wait_for(lambda rx: bool(delivered_for(rx, txid, "confirmed")), 30)

    await page.click(f"#deposit-{deposit_id} a")
    await page.wait_for(f"(d => d && d.dataset.id === '{deposit_id}')(document.getElementById('deposit'))")
    assert await page.evaluate("document.getElementById('txid').textContent") == txid.lower()
    assert await page.evaluate("document.getElementById('explorer')") is None  # a devnet: no explorer
    # Every request the receiver got is an attempt on the page (their records are written in batches:
    # reloaded until the last is in).
    before = await attempts_after_reloads(page, lambda: len(requests_for(w.receiver, txid)))
    delivered_before = len(delivered_for(w.receiver, txid, "confirmed"))

    await page.click("#resend")
    await page.wait_for("document.querySelector('.notice') !== null && document.readyState === 'complete'")
    assert "queued again" in await page.evaluate("document.querySelector('.notice').textContent")
    await w.receiver.wait_for(lambda rx: len(delivered_for(rx, txid, "confirmed")) > delivered_before, 30)
    resent = delivered_for(w.receiver, txid, "confirmed")
    assert resent[-1] == resent[-2]  # the same callback again
    assert await attempts_after_reloads(page, lambda: before + 1) == before + 1
    await page.screenshot(SCREENSHOTS / "office-deposit-desktop.png")
    url = await page.evaluate("location.href")
    await page.close()

    phone = await w.browser.new_page(*PHONE, mobile=True)
    assert await phone.goto(url) == 200
    assert await attempts_shown(phone) == before + 1
    assert await horizontal_scroll(phone) == 0  # wide tables scroll inside their box, not the page
    await phone.screenshot(SCREENSHOTS / "office-deposit-phone.png")
    await phone.close()


async def test_an_integrations_key_sees_its_own_deposits_only(world: World) -> None:
    w = world
    theirs = await w.take("ETH", "office-e2e-other", key=OTHER_KEY)
    evm.send_eth(w.anvil.url, evm.accounts(w.anvil.url)[0], theirs, 10**16)
    page = await w.browser.new_page(*PHONE, mobile=True)
    await page.send("Network.clearBrowserCookies")  # signed out of the operator's session
    await w.sign_in(page, SHOP_KEY)
    await page.evaluate(MARKER)
    address = await w.take("BTC", "office-e2e-btc")
    btc.pay(w.bcoin, address, 125_000)  # in the mempool: a deposit with 0 confirmations
    deposit_id = await page.wait_for(row_of("office-e2e-btc"))
    assert await page.evaluate(STILL_LOADED)
    row = f"document.getElementById('deposit-{deposit_id}').textContent"
    assert "0.00125000" in await page.evaluate(row) and "not_confirmed" in await page.evaluate(row)
    assert await page.evaluate(row_of("office-e2e-eth")) is not None  # its own, from the first test
    assert await page.evaluate(row_of("office-e2e-other")) is None  # never the other shop's
    heads = "[...document.querySelectorAll('#deposits-table th')].map(t => t.textContent)"
    headers = await page.evaluate(heads)
    assert "Id" in headers and "Integration" not in headers
    assert await horizontal_scroll(page) == 0
    await page.screenshot(SCREENSHOTS / "office-deposits-phone.png")
    # The other shop's deposit by id: the same 404 page as an id nobody has.
    status, body = await w.api.call("GET", "/v1/deposits", key=OTHER_KEY)
    assert status == 200
    other_id = next(d["id"] for d in body["data"] if d["foreign_id"] == "office-e2e-other")
    assert await page.goto(f"{w.origin}/ui/deposits/{other_id}") == 404
    text_404 = await page.evaluate("document.body.textContent")
    assert await page.goto(f"{w.origin}/ui/deposits/99999999") == 404
    assert await page.evaluate("document.body.textContent") == text_404
    await page.close()


async def test_a_payment_page_shows_its_customers_strings_as_text(world: World) -> None:
    w = world
    body = {
        "amount": "0.0021", "currency": "BTC", "customer_reference": "<script>window.pwned = 1</script>",
        "customer_email": "<img/src=x/onerror=window.pwned=2>@shop.example", "meta_data": '{"cart": [7, 9]}',
    }  # fmt: skip
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {SHOP_KEY}", "Idempotency-Key": "office-e2e-pay"}
        async with session.post(f"{w.origin}/v1/payments", json=body, headers=headers) as r:
            assert r.status == 201, await r.text()
            made = await r.json()
    page = await w.browser.new_page(*DESKTOP)
    await page.send("Network.clearBrowserCookies")
    await w.sign_in(page, SHOP_KEY)
    btc.pay(w.bcoin, made["address"], 210_000)
    assert await page.goto(f"{w.origin}/ui/payments") == 200
    await page.click(f"#payment-{made['payment_reference']} a")
    await page.wait_for("document.getElementById('payment') !== null")
    text = "(id => document.getElementById(id).textContent)"
    assert await page.evaluate(f"{text}('customer-reference')") == body["customer_reference"]
    assert await page.evaluate(f"{text}('customer-email')") == body["customer_email"]
    assert await page.evaluate(f"{text}('meta-data')") == body["meta_data"]
    assert await page.evaluate("typeof window.pwned") == "undefined"
    # The transaction paid to it is linked (the page reloaded until the daemon saw it in the mempool).
    for _ in range(60):
        if await page.evaluate("document.querySelector('#payment a[href^=\"/ui/deposits/\"]') !== null"):
            break
        await asyncio.sleep(0.5)
        await page.goto(await page.evaluate("location.href"))
    assert await page.evaluate("document.querySelector('#payment a[href^=\"/ui/deposits/\"]') !== null")
    await page.screenshot(SCREENSHOTS / "office-payment-desktop.png")
    await page.close()
