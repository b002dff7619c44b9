"""The back office's overview against the real daemon process with real anvil and bcoin nodes and a real
merchant endpoint (one shop answers 200, the other 500), in a real headless Chromium (tests/browser.py):
one daemon, one browser for the module.

The overview's numbers (each chain's head, processed height, lag and state; the outbox's counts) are the
daemon's own, as its status port reports them at the same moment; an integration sees its own callbacks
only; a `<script>` in an integration's name is text. The browser signs in through the form, sees the
overview, finds no horizontal scroll at phone width, and signs out. Screenshots at desktop (1280x800) and
phone (390x844) width go to tests/browser.py's SCREENSHOTS folder (office-overview-desktop.png,
office-overview-phone.png).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from devnet import evm_tools as evm
from devnet.anvil import AnvilNode
from devnet.bcoin import BcoinNode
from tests.browser import SCREENSHOTS, Browser, running_browser
from tests.daemon_process import DaemonProcess, free_port, write_config
from tests.daemon_world import daemon_config, regtest_chains, serve, served_url, wait_ready
from tests.test_derivation import account
from tests.test_office_auth import Browser as Client
from tests.test_office_auth import csrf_of
from watcher.apikeys import new_api_key
from watcher.operator_password import hash_password
from watcher.ui.pages import SECURITY_HEADERS

pytestmark = pytest.mark.asyncio(loop_scope="module")

SHOP = "5e3b7d2f-9a4c-4f6e-8b8d-c2d3e4f5a6b7"
OTHER = "6f4c8e3a-0b5d-4a7f-9c9e-d3e4f5a6b7c8"
HOSTILE = "<script>alert('shop')</script>"
SHOP_KEY, SHOP_HASH = new_api_key(live=False)
OTHER_KEY, OTHER_HASH = new_api_key(live=False)
PASSWORD = "operator password for the e2e test"
MIN_CONF = 2
DESKTOP = (1280, 800)
PHONE = (390, 844)
STATES = ("pending", "failed", "delivered")


@dataclass
class World:
    tmp: Path
    anvil: AnvilNode
    bcoin: BcoinNode
    daemon: DaemonProcess
    browser: Browser
    api_port: int
    http: aiohttp.ClientSession

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def client(self) -> Client:
        return Client(self.origin, self.http)

    async def take(self, key: str, foreign_id: str) -> str:
        headers = {"Authorization": f"Bearer {key}"}
        body = {"currency": "ETH", "foreign_id": foreign_id}
        async with self.http.post(self.origin + "/v1/addresses", json=body, headers=headers) as r:
            assert r.status == 201, await r.text()
            address: str = (await r.json())["address"]
            return address


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="*ok*")


async def fail(request: web.Request) -> web.Response:
    return web.Response(status=500, text="shop database is down")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(
    chromium: str, anvil: AnvilNode, bcoin: BcoinNode, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("office")
    (tmp / "operator.pw").write_text(hash_password(PASSWORD).line() + "\n")
    status_port, api_port = free_port(), free_port()
    # The shops' callback URLs: /ok answers 200, /fail answers 500 (so its callbacks keep failing).
    hooks = await serve({"/ok": ok, "/fail": fail})

    def integration(id_: str, name: str, path: str, key_line: str, derivation: str) -> dict[str, Any]:
        # Retries an hour apart: a failing callback stays "retrying" while the test looks at it.
        callback = {"callback_url": served_url(hooks, path), "key": "k", "secret": "s", "timeout_s": 2,
                    "retry_schedule_min": [60, 60]}  # fmt: skip
        return {"id": id_, "name": name, "callback": callback, "api_keys": [key_line],
                "public_keys": {"ethereum": account(derivation)}}  # fmt: skip

    integrations = [
        integration(SHOP, "Shop", "/ok", SHOP_HASH.line(), "m/44h/60h/0h"),
        integration(OTHER, HOSTILE, "/fail", OTHER_HASH.line(), "m/44h/60h/1h"),
    ]
    chains = regtest_chains(anvil, bcoin, MIN_CONF)
    ui = {"operator_password_file": str(tmp / "operator.pw")}
    config = daemon_config(tmp / "watcher.sqlite3", status_port, api_port, integrations, chains, ui=ui)
    daemon = DaemonProcess(write_config(tmp / "c.yaml", config), status_port, tmp / "daemon.log")
    daemon.start()
    try:
        async with running_browser() as browser, aiohttp.ClientSession() as http:
            w = World(tmp, anvil, bcoin, daemon, browser, api_port, http)
            await daemon.wait_live()
            await wait_ready(daemon)
            await paid(w)
            yield w
    finally:
        code = daemon.stop()
        await hooks.cleanup()
        assert code == 0, daemon.log()


async def paid(w: World) -> None:
    """A deposit to each shop, confirmed; until the daemon tried every callback (the shop's delivered,
    the other's failing and waiting for its retry)."""
    sender = evm.accounts(w.anvil.url)[0]
    for key, foreign_id in ((SHOP_KEY, "customer-1"), (OTHER_KEY, "customer-2")):
        evm.send_eth(w.anvil.url, sender, await w.take(key, foreign_id), 10**16)
    evm.mine(w.anvil.url, MIN_CONF)
    shop = await signed_in(w, SHOP_KEY)
    for _ in range(300):
        shop_page = (await shop.get("/ui/")).text
        if stat(shop_page, "delivered") >= 1 and stat(shop_page, "pending") == 0:
            if failing(await operator_overview(w)):
                return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the callbacks were never tried\n{w.daemon.log()[-4000:]}")


async def signed_in(w: World, secret: str) -> Client:
    client = w.client()
    answer = await client.sign_in(secret)
    assert answer.status == 303, answer.text
    return client


async def operator_overview(w: World) -> str:
    return (await (await signed_in(w, PASSWORD)).get("/ui/")).text


def stat(page: str, field: str) -> int:
    found = re.search(rf'<dd data-field="{field}">(\d+)</dd>', page)
    assert found is not None, field
    return int(found[1])


def failing(page: str) -> set[int]:
    return {int(n) for n in re.findall(r'<tr data-outbox="(\d+)">', page)}


def chain_cells(page: str, chain: str) -> dict[str, str]:
    row = re.search(rf'<tr data-chain="{chain}">(.*?)</tr>', page, re.S)
    assert row is not None, chain
    cells = dict(re.findall(r'data-field="(\w+)">(.*?)</td>', row[1], re.S))
    state = re.search(r'class="badge badge-(\w+)"', cells["state"])
    assert state is not None
    return {**{k: v.strip() for k, v in cells.items()}, "state": state[1]}


async def consistent(w: World, client: Client) -> tuple[dict[str, Any], str]:
    """The overview and the status port's snapshot of one moment: the status read before and after the
    page are the same (nothing moved meanwhile)."""
    for _ in range(50):
        before = (await w.daemon.get("/status"))[1]
        page = (await client.get("/ui/")).text
        after = (await w.daemon.get("/status"))[1]
        keep = ("node_height", "processed_height", "lag", "halted")
        if before["outbox"] == after["outbox"] and all(
            {k: before["chains"][c][k] for k in keep} == {k: after["chains"][c][k] for k in keep}
            for c in before["chains"]
        ):
            return before, page
        await asyncio.sleep(0.2)
    raise AssertionError("the daemon's state never held still")


async def test_the_overview_shows_the_daemons_state(world: World) -> None:
    w = world
    operator = await signed_in(w, PASSWORD)
    status, page = await consistent(w, operator)
    assert status["ready"]
    for name, chain in status["chains"].items():
        cells = chain_cells(page, name)
        assert cells["node_height"] == str(chain["node_height"])
        assert cells["processed_height"] == str(chain["processed_height"])
        assert cells["lag"] == str(chain["lag"])
        assert cells["state"] == "following"
        assert chain["rpc_url"] in page  # the node, as /status shows it (no credentials)
    assert "rpc_password" not in page and str(w.bcoin.rpc_password) not in page
    for state in STATES:
        assert stat(page, state) == status["outbox"][state], state
    assert stat(page, "retrying") >= 1 and failing(page)
    # The other shop's name is text: escaped in the HTML, no script element anywhere.
    assert "&lt;script&gt;alert(&#39;shop&#39;)&lt;/script&gt;" in page and "<script" not in page


async def test_an_integration_sees_its_own_callbacks_only(world: World) -> None:
    w = world
    operator_page = (await (await signed_in(w, PASSWORD)).get("/ui/")).text
    shop_page = (await (await signed_in(w, SHOP_KEY)).get("/ui/")).text
    other_page = (await (await signed_in(w, OTHER_KEY)).get("/ui/")).text
    for state in (*STATES, "retrying"):
        assert stat(shop_page, state) + stat(other_page, state) == stat(operator_page, state), state
    assert stat(shop_page, "delivered") >= 1 and stat(shop_page, "retrying") == 0
    assert failing(shop_page) == set() and 'id="no-failing"' in shop_page
    assert failing(other_page) == failing(operator_page) != set()
    assert stat(other_page, "delivered") == 0
    assert "HTTP 500" in other_page
    # The chains are no secret: both see the same rows.
    for name in ("bitcoin", "ethereum"):
        assert chain_cells(shop_page, name)["node_height"] == chain_cells(other_page, name)["node_height"]


async def test_the_browser_signs_in_sees_the_overview_and_signs_out(world: World) -> None:
    w = world
    page = await w.browser.new_page(*DESKTOP)
    assert await page.goto(w.origin + "/ui/") == 200  # the sign-in page, after the gate's redirect
    assert await page.evaluate("location.pathname + location.search") == "/ui/signin?next=/ui/"
    await page.evaluate(f"document.getElementById('secret').value = {json.dumps(PASSWORD)}")
    await page.click("#signin")
    await page.wait_for("location.pathname === '/ui/' && !!document.getElementById('chains')")
    await page.wait_for("document.readyState === 'complete'")
    assert await page.evaluate("document.getElementById('viewer').textContent") == "operator"
    # The session cookie is HttpOnly: the page's scripts cannot read it.
    assert "office_session" not in await page.evaluate("document.cookie")
    names = await page.evaluate(
        "[...document.querySelectorAll('#failing td')].map(td => td.textContent.trim())"
    )
    assert HOSTILE in names
    assert await page.evaluate("document.scripts.length") == 0
    assert await page.evaluate("!!document.querySelector('#lag-chart polyline, #lag-chart text')")
    assert await page.evaluate("document.querySelectorAll('#delivery-chart g.bar rect').length") >= 1
    await page.screenshot(SCREENSHOTS / "office-overview-desktop.png")

    phone = await w.browser.new_page(*PHONE, mobile=True)
    assert await phone.goto(w.origin + "/ui/") == 200  # the same browser: the same session
    assert await phone.evaluate("location.pathname") == "/ui/"
    assert await phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    await phone.screenshot(SCREENSHOTS / "office-overview-phone.png")
    await phone.close()

    await page.click(".office-signout button")
    await page.wait_for("location.pathname === '/ui/signin'")
    assert await page.goto(w.origin + "/ui/") == 200
    assert await page.evaluate("location.pathname") == "/ui/signin"
    await page.close()


async def test_the_pages_carry_the_security_headers(world: World) -> None:
    w = world
    client = await signed_in(w, SHOP_KEY)
    for path in ("/ui/", "/ui/signin", "/ui/nothing-here"):
        answer = await client.get(path)
        for name, value in SECURITY_HEADERS.items():
            assert answer.headers[name] == value, (path, name)
    token = csrf_of((await client.get("/ui/")).text)
    assert (await client.post("/ui/signout", {"csrf_token": "wrong"})).status == 403
    assert (await client.post("/ui/signout", {"csrf_token": token})).status == 303
    assert (await client.get("/ui/")).status == 303


async def test_a_reload_reads_the_password_file_again_and_ends_the_old_sessions(world: World) -> None:
    """Last in the module: it changes the operator's password."""
    w = world
    old_session = await signed_in(w, PASSWORD)
    shop = await signed_in(w, SHOP_KEY)
    new_password = "the operator's next password"
    (w.tmp / "operator.pw").write_text(hash_password(new_password).line() + "\n")
    assert w.daemon.proc is not None
    w.daemon.proc.send_signal(signal.SIGHUP)
    for _ in range(300):  # until the reload is applied: the old session is refused
        if (await old_session.get("/ui/")).status == 303:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"the reload never ended the session\n{w.daemon.log()[-4000:]}")
    assert (await w.client().sign_in(PASSWORD)).status == 403
    assert (await signed_in(w, new_password)).session_id is not None
    assert (await shop.get("/ui/")).status == 200  # a key's session is not the password's business
