"""The customer's checkout page, `/pay/{payment_reference}`, in a real headless Chromium (tests/browser.py)
against the real daemon process with real anvil and bcoin nodes: one daemon, one browser for the module.

Payments are paid on the nodes while the page is open; the page must follow them to `completed` without a
reload (a marker set in the page after it loaded is still there at the end). An expired payment shows
`expired`; the copy button puts the address in the clipboard; a `<script>` in the customer's strings shows
as text; the phone-width layout has no horizontal scroll. Screenshots at desktop (1280x800) and phone
(390x844) width go to tests/browser.py's SCREENSHOTS folder.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from devnet import btc_tools as btc
from devnet import evm_tools as evm
from devnet.anvil import AnvilNode
from devnet.bcoin import BcoinNode
from tests.browser import SCREENSHOTS, Browser, Page, running_browser
from tests.daemon_process import DaemonProcess, free_port, write_config
from tests.daemon_world import ApiClient, daemon_config, regtest_chains, serve, served_url, wait_ready
from tests.test_derivation import ROOT_FINGERPRINT, account
from watcher.apikeys import new_api_key
from watcher.ui.pages import SECURITY_HEADERS

pytestmark = pytest.mark.asyncio(loop_scope="module")

SHOP = "4d2a6c1e-8f3b-4e5d-9a7c-b1c2d3e4f5a6"
API_KEY, API_HASH = new_api_key(live=False)
MIN_CONF = 2
WPKH = f"wpkh([{ROOT_FINGERPRINT}/84h/1h/0h]{account('m/84h/1h/0h', 'tpub')}/0/*)"
RETURN_URL = "https://shop.example/orders/{customer_reference}?paid={payment_reference}"
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
    api: ApiClient

    @property
    def origin(self) -> str:
        return self.api.origin

    async def create(self, key: str, amount: str, currency: str, **fields: Any) -> dict[str, Any]:
        body = {"amount": amount, "currency": currency, "customer_reference": key, **fields}  # may override
        status, made = await self.api.call("POST", "/v1/payments", body, idempotency_key=key)
        assert status == 201, made
        return made  # type: ignore[no-any-return]

    async def open(self, made: dict[str, Any], size: tuple[int, int] = DESKTOP) -> Page:
        page = await self.browser.new_page(*size, mobile=size == PHONE)
        assert await page.goto(f"{self.origin}/pay/{made['payment_reference']}") == 200
        await page.evaluate(MARKER)
        return page


async def ok(request: web.Request) -> web.Response:
    """The shop's webhook URL answers 200 (the webhooks are tests/test_payments_e2e.py's subject)."""
    return web.json_response({"received": True})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(
    chromium: str, anvil: AnvilNode, bcoin: BcoinNode, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("checkout")
    status_port, api_port = free_port(), free_port()
    hooks = await serve({"/hook": ok})
    integration = {
        "id": SHOP,
        "callback": {"callback_url": served_url(hooks, "/hook"), "format": "coinskro",
                     "secret": "whsec-checkout", "timeout_s": 2},
        "api_keys": [API_HASH.line()],
        "public_keys": {"bitcoin": WPKH, "ethereum": account("m/44h/60h/0h")},
        "payments": {"grace_s": 5, "return_url": RETURN_URL},
    }  # fmt: skip
    chains = regtest_chains(anvil, bcoin, MIN_CONF)
    config = daemon_config(tmp / "watcher.sqlite3", status_port, api_port, [integration], chains)
    daemon = DaemonProcess(write_config(tmp / "c.yaml", config), status_port, tmp / "daemon.log")
    daemon.start()
    try:
        async with running_browser() as browser:
            w = World(anvil, bcoin, daemon, browser, ApiClient(api_port, API_KEY))
            await daemon.wait_live()
            await wait_ready(daemon, w.api, "/v1/payments")
            yield w
    finally:
        code = daemon.stop()
        await hooks.cleanup()
        assert code == 0, daemon.log()


async def state_is(page: Page, state: str, timeout_s: float = 30.0) -> str:
    """Until the page shows `state`: its status line."""
    expression = f"document.getElementById('checkout').dataset.state === {json.dumps(state)}"
    await page.wait_for(expression, timeout_s)
    text: str = await page.evaluate("document.getElementById('status').textContent")
    return text


async def shown(page: Page, element_id: str) -> bool:
    visible: bool = await page.evaluate(f"!document.getElementById({json.dumps(element_id)}).hidden")
    return visible


def return_url(made: dict[str, Any]) -> str:
    return RETURN_URL.format(
        customer_reference=quote(made["customer_reference"], safe=""),
        payment_reference=made["payment_reference"],
    )


async def test_an_eth_payment_goes_to_completed_without_a_reload(world: World) -> None:
    w = world
    made = await w.create("order-eth-1", "0.05", "ETH")
    page = await w.open(made)
    assert await state_is(page, "waiting") == "Waiting for your payment."
    assert await page.evaluate("document.getElementById('amount').textContent") == "0.05"
    assert await page.evaluate("document.getElementById('address').textContent") == made["address"]
    assert await page.evaluate("document.getElementById('uri').textContent") == made["payment_uri"]
    assert await shown(page, "countdown") and not await shown(page, "return")

    evm.send_eth(w.anvil.url, evm.accounts(w.anvil.url)[0], made["address"], 5 * 10**16)  # mined: 1 of 2
    assert await state_is(page, "confirming") == f"Confirming: 1 of {MIN_CONF}."
    evm.mine(w.anvil.url, 1)
    assert await state_is(page, "completed") == "Payment received. Thank you!"
    assert await page.evaluate(STILL_LOADED)
    assert not await shown(page, "pay") and not await shown(page, "countdown")
    assert await shown(page, "return")
    assert await page.evaluate("document.getElementById('return-link').href") == return_url(made)
    await page.close()


async def test_a_btc_payment_seen_then_confirming_then_completed(world: World) -> None:
    w = world
    made = await w.create("order-btc-1", "0.0012", "BTC")
    page = await w.open(made)
    assert await state_is(page, "waiting")
    btc.pay(w.bcoin, made["address"], 120_000)  # in the mempool
    assert await state_is(page, "seen") == "Payment seen, waiting for it to be confirmed."
    btc.mine(w.bcoin, 1)
    assert await state_is(page, "confirming") == f"Confirming: 1 of {MIN_CONF}."
    btc.mine(w.bcoin, 1)
    assert await state_is(page, "completed")
    assert await page.evaluate(STILL_LOADED)
    assert await page.evaluate("document.getElementById('return-link').href") == return_url(made)
    await page.close()


async def test_an_expired_payment_shows_expired(world: World) -> None:
    w = world
    made = await w.create("order-expired", "0.001", "BTC", expires_in_s=3)
    page = await w.open(made)
    assert await state_is(page, "waiting")
    assert await shown(page, "countdown")
    assert await state_is(page, "expired", timeout_s=60) == "This payment expired."
    assert await page.evaluate(STILL_LOADED)
    assert not await shown(page, "pay") and await shown(page, "return")
    # Opened afresh, it is expired from the start: nothing to pay, no countdown.
    again = await w.open(made)
    assert await state_is(again, "expired") and not await shown(again, "countdown")
    await page.close()
    await again.close()


async def test_the_copy_button_the_phone_layout_and_screenshots(world: World) -> None:
    w = world
    made = await w.create("1042", "0.00125", "BTC", customer_email="alice@example.org")
    page = await w.open(made)
    await page.wait_for("(q => q.complete && q.naturalWidth)(document.getElementById('qr'))")
    await page.screenshot(SCREENSHOTS / "checkout-desktop.png")
    # Everything the page loaded came from the daemon: no CDN, no font, nothing else.
    loaded = await page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(w.origin + "/") for url in loaded), loaded

    await w.browser.grant_clipboard(w.origin)
    await page.click("#copy")
    await page.wait_for("!document.getElementById('copied').hidden")
    assert await page.evaluate("navigator.clipboard.readText()") == made["address"]
    await page.close()

    phone = await w.open(made, PHONE)
    await phone.wait_for("document.getElementById('qr').complete")
    assert await horizontal_scroll(phone) == 0
    await phone.screenshot(SCREENSHOTS / "checkout-phone.png")
    await phone.close()
    # An ETH payment's EIP-681 URI and 0x address are longer, with no break in them: they wrap too.
    eth = await w.open(await w.create("order-eth-phone", "0.000000000000000001", "ETH"), PHONE)
    assert await horizontal_scroll(eth) == 0
    await eth.close()


async def horizontal_scroll(page: Page) -> int:
    """How far the phone-width page reaches past the phone's 390 px (0: it fits). Measured against the
    phone's width, not window.innerWidth alone: a mobile browser widens its layout viewport to a wider
    page."""
    widths = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    return int(max(0, max(widths) - PHONE[0]))


async def test_the_customers_strings_show_as_text_and_meta_data_not_at_all(world: World) -> None:
    w = world
    reference = "<script>window.pwned = 1</script>"
    email = "<script>window.pwned=2</script>@shop.example"
    meta = "<script>window.pwned = 3</script>secret-9"
    made = await w.create("order-xss", "0.001", "ETH", customer_reference=reference, customer_email=email,
                          meta_data=meta)  # fmt: skip
    page = await w.open(made)
    assert await page.evaluate("document.getElementById('order').textContent") == reference
    assert await page.evaluate("document.getElementById('email').textContent") == email
    assert await page.evaluate("typeof window.pwned") == "undefined"
    assert await page.evaluate("[...document.scripts].map(s => s.src.split('?')[0])") == [
        f"{w.origin}/ui/static/checkout.js"
    ]
    assert "secret-9" not in await page.evaluate("document.documentElement.outerHTML")
    await page.close()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{w.origin}/pay/{made['payment_reference']}/status.json") as r:
            status = await r.json()
    assert "secret-9" not in json.dumps(status) and SHOP not in json.dumps(status)


async def test_unknown_references_are_one_plain_404_and_every_page_has_the_headers(world: World) -> None:
    w = world
    made = await w.create("order-headers", "0.002", "BTC")
    reference = made["payment_reference"]
    async with aiohttp.ClientSession() as session:  # no API key: the reference is the capability
        for path in (f"/pay/{reference}", f"/pay/{reference}/status.json", f"/pay/{reference}/qr.svg",
                     "/ui/static/checkout.js", "/ui/static/ui.css"):  # fmt: skip
            async with session.get(w.origin + path) as r:
                assert r.status == 200, path
                for name, value in SECURITY_HEADERS.items():
                    assert r.headers[name] == value, (path, name)
        async with session.get(f"{w.origin}/pay/{reference}") as r:
            html = await r.text()
        assert r.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "<script>" not in html.replace('<script src="/ui/static/checkout.js?v=', "")
        assert API_KEY not in html and SHOP not in html and "whsec" not in html
        async with session.get(f"{w.origin}/pay/{reference}/qr.svg") as r:
            assert r.content_type == "image/svg+xml" and b"<script" not in await r.read()

        bodies = set()
        unknown = "PAY_" + "A" * 32
        missing = (
            f"/pay/{unknown}", f"/pay/{unknown}/status.json", "/pay/nope", f"/pay/{reference}x",
            f"/pay/{reference.lower()}", "/pay/", f"/pay/{reference}/other", "/ui/static/nope.js",
        )  # fmt: skip
        for path in missing:
            async with session.get(w.origin + path) as r:
                assert r.status == 404, path
                assert r.headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]
                bodies.add(await r.text())
        assert len(bodies) == 1 and "Not found" in bodies.pop()
        # The API itself still wants its key.
        async with session.get(f"{w.origin}/v1/payments/{reference}") as r:
            assert r.status == 401
