"""Payments for orders end to end: the real daemon process, real anvil and bcoin nodes, a real receiver
of Coinskro webhooks that checks every signature.

One integration takes Coinskro webhooks for all four events. Every path of a payment's life runs against
the same daemon at once: exact, overpaid, underpaid, nothing paid, paid during the grace period, canceled
by the merchant, double-spent, and a late payment after the end; BTC, ETH, USDT and USDC each at least
once. Then a node outage (a proxy cut between the daemon and bcoin): no new payment on the blind chain
(503), and a payment seen before the outage completes after it instead of being abandoned. Then an
Idempotency-Key retried across SIGKILLs returns the same payment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from devnet import btc_tools as btc
from devnet import evm_tools as evm
from devnet.anvil import AnvilNode
from devnet.bcoin import BcoinNode
from tests.daemon_process import DaemonProcess, free_port, write_config
from tests.daemon_world import ApiClient, daemon_config, regtest_chains, wait_ready
from tests.tcp_proxy import TcpProxy
from tests.test_derivation import ROOT_FINGERPRINT, account
from watcher import coinskro
from watcher.apikeys import new_api_key

SHOP = "7c2f3e4d-5a6b-4c7d-8e9f-a0b1c2d3e4f5"
API_KEY, API_HASH = new_api_key(live=False)
SECRET = "whsec-e2e"
MIN_CONF = 2
GRACE_S = 8
WPKH = f"wpkh([{ROOT_FINGERPRINT}/84h/1h/0h]{account('m/84h/1h/0h', 'tpub')}/0/*)"
EVENTS = ["payment_linked", "payment_completed", "payment_abandoned", "payment_canceled"]


@dataclass
class Webhook:
    raw: bytes
    body: dict[str, Any]


@dataclass
class WebhookReceiver:
    """Records every webhook with a valid X-Coinskro-Signature (200); anything else is a 401 and a failure."""

    received: list[Webhook] = field(default_factory=list)
    refused: list[bytes] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/webhooks/coinskro", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/coinskro"

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if not coinskro.verify(raw, SECRET, request.headers.get(coinskro.SIGNATURE_HEADER, "")):
            self.refused.append(raw)
            return web.Response(status=401)
        self.received.append(Webhook(raw, json.loads(raw, parse_float=Decimal)))
        return web.json_response({"received": True})

    def events(self, reference: str) -> list[str]:
        return [w.body["event"] for w in self.received if w.body["data"]["payment_reference"] == reference]


@dataclass
class World:
    anvil: AnvilNode
    bcoin: BcoinNode
    tokens: dict[str, str]
    daemon: DaemonProcess
    rx: WebhookReceiver
    proxy: TcpProxy
    api: ApiClient

    async def call(self, method: str, path: str, body: Any = None, key: str | None = None) -> tuple[int, Any]:
        """The API with the shop's key; `key`: the request's Idempotency-Key."""
        return await self.api.call(method, path, body, idempotency_key=key)

    async def create(self, key: str, amount: str, currency: str, expires_in_s: int = 600) -> dict[str, Any]:
        body = {
            "amount": amount, "currency": currency, "customer_email": f"{key}@shop.example",
            "customer_reference": key, "meta_data": json.dumps({"order": key}), "expires_in_s": expires_in_s,
        }  # fmt: skip
        status, made = await self.call("POST", "/v1/payments", body, key=key)
        assert status == 201, made
        return made  # type: ignore[no-any-return]

    async def payment(self, reference: str) -> dict[str, Any]:
        status, found = await self.call("GET", f"/v1/payments/{reference}")
        assert status == 200, found
        return found  # type: ignore[no-any-return]

    async def wait_status(self, reference: str, status: str, timeout_s: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = await self.payment(reference)
            if found["status"] == status:
                return found
            await asyncio.sleep(0.3)
        found = await self.payment(reference)
        raise AssertionError(f"{reference} is {found['status']}, not {status}\n{self.daemon.log()[-6000:]}")

    async def wait_webhooks(self, reference: str, events: list[str], timeout_s: float = 30.0) -> None:
        for _ in range(int(timeout_s / 0.2)):
            if self.rx.events(reference) == events:
                return
            await asyncio.sleep(0.2)
        assert self.rx.events(reference) == events, (reference, self.rx.events(reference))

    def mine(self, blocks: int = 1) -> None:
        btc.mine(self.bcoin, blocks)
        evm.mine(self.anvil.url, blocks)


@pytest.fixture(scope="module")
def tokens(anvil: AnvilNode) -> dict[str, str]:
    return {code: evm.deploy_token(anvil.url, code, code, 6) for code in ("USDT", "USDC")}


@pytest.fixture
async def world(
    anvil: AnvilNode, bcoin: BcoinNode, tokens: dict[str, str], tmp_path: Path
) -> AsyncIterator[World]:
    status_port, api_port = free_port(), free_port()
    rx = WebhookReceiver()
    await rx.start()
    proxy = TcpProxy("127.0.0.1", int(bcoin.rpc_url.rsplit(":", 1)[1].rstrip("/")))
    await proxy.start()
    integration = {
        "id": SHOP,
        "callback": {"callback_url": rx.url, "format": "coinskro", "secret": SECRET, "events": EVENTS,
                     "timeout_s": 2, "retry_schedule_min": [0.005, 0.01, 0.02]},
        "api_keys": [API_HASH.line()],
        "public_keys": {"bitcoin": WPKH, "ethereum": account("m/44h/60h/0h")},
        "payments": {"grace_s": GRACE_S},
    }  # fmt: skip
    chains = regtest_chains(anvil, bcoin, MIN_CONF, tokens=tokens, bitcoin_rpc_url=proxy.url)
    config = daemon_config(
        tmp_path / "watcher.sqlite3", status_port, api_port, [integration], chains, log_level="debug"
    )
    daemon = DaemonProcess(write_config(tmp_path / "c.yaml", config), status_port, tmp_path / "daemon.log")
    daemon.start()
    w = World(anvil, bcoin, tokens, daemon, rx, proxy, ApiClient(api_port, API_KEY))
    try:
        await daemon.wait_live()
        await wait_ready(w.daemon, w.api, "/v1/payments")
        yield w
    finally:
        code = daemon.stop()
        await proxy.stop()
        await rx.stop()
        assert code == 0, daemon.log()


def pay(w: World, currency: str, address: str, amount: int) -> str:
    sender = evm.accounts(w.anvil.url)[0]
    if currency == "BTC":
        return btc.pay(w.bcoin, address, amount)
    if currency == "ETH":
        return evm.send_eth(w.anvil.url, sender, address, amount)
    evm.mint(w.anvil.url, w.tokens[currency], sender, amount)
    return evm.token_transfer(w.anvil.url, w.tokens[currency], sender, address, amount)


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def check_bodies(w: World, made: dict[str, Any]) -> None:
    """Every webhook of the payment carries the seed's payload, the asked amount exactly, our fields."""
    reference = made["payment_reference"]
    for hook in w.rx.received:
        data = hook.body["data"]
        if data["payment_reference"] != reference:
            continue
        assert list(hook.body) == ["event", "timestamp", "data"]
        assert hook.body["timestamp"].endswith("Z")
        assert data["status"] == hook.body["event"].removeprefix("payment_")
        assert data["amount"] == Decimal(made["amount"]) and data["currency"] == made["currency"]
        assert data["integration_id"] == SHOP
        assert data["customer_email"] == made["customer_email"]
        assert data["customer_reference"] == made["customer_reference"]
        assert data["meta_data"] == made["meta_data"]


async def test_every_path_of_a_payments_life(world: World) -> None:
    w = world
    exact = await w.create("exact-btc", "0.00100000", "BTC")
    over = await w.create("over-eth", "0.01", "ETH")
    under = await w.create("under-usdt", "25", "USDT", expires_in_s=3)
    nothing = await w.create("nothing-usdc", "5", "USDC", expires_in_s=2)
    in_grace = await w.create("grace-btc", "0.0005", "BTC", expires_in_s=4)
    canceled = await w.create("cancel-eth", "1", "ETH")
    # The payment to be double-spent spends a coin of the test's own key (see test_callback_docs).
    spent = await w.create("spent-btc", "0.002", "BTC")
    key, coin = btc.funded_key_utxo(w.bcoin, 200_000 + btc.DEFAULT_FEE)
    assert exact["payment_uri"] == f"bitcoin:{exact['address']}?amount=0.001"

    pay(w, "BTC", exact["address"], 100_000)
    pay(w, "ETH", over["address"], 2 * 10**16)
    pay(w, "USDT", under["address"], 24_999_999)
    pay(w, "BTC", in_grace["address"], 50_000)  # in the mempool before its expiry, confirmed after it
    double = btc.send_raw(w.bcoin, btc.build_payment(coin, key, [(btc.script_of(spent["address"]), 200_000)]))
    status, after_cancel = await w.call("POST", f"/v1/payments/{canceled['payment_reference']}/cancel")
    assert status == 200 and after_cancel["status"] == "canceled", after_cancel

    for made in (exact, in_grace, spent):
        await w.wait_status(made["payment_reference"], "linked")
    btc.double_spend_reorg(w.bcoin, double, key=key)
    await w.wait_status(spent["payment_reference"], "canceled")
    await w.wait_status(in_grace["payment_reference"], "linked")
    await asyncio.sleep(max(0.0, epoch(in_grace["expires_at"]) - time.time()) + 1)
    # Past its expiry: in its grace period, still linked.
    assert (await w.payment(in_grace["payment_reference"]))["status"] == "linked"
    w.mine(MIN_CONF)

    done = await w.wait_status(exact["payment_reference"], "completed")
    assert done["amount_received"] == "0.00100000"
    done = await w.wait_status(over["payment_reference"], "completed")
    assert done["amount_received"] == "0.020000000000000000"
    done = await w.wait_status(in_grace["payment_reference"], "completed")
    assert done["amount_received"] == "0.00050000"
    assert (await w.payment(in_grace["payment_reference"]))["ended_at"] is not None
    await w.wait_status(nothing["payment_reference"], "abandoned")
    # Underpaid and confirmed: linked, then abandoned once the grace period is over, showing what came.
    ended = await w.wait_status(under["payment_reference"], "abandoned", timeout_s=GRACE_S + 30)
    assert ended["amount_received"] == "24.999999"

    # A late payment to the address of a payment that ended: recorded and reported as a deposit.
    late = pay(w, "USDC", nothing["address"], 5_000_000)
    w.mine(MIN_CONF)
    for _ in range(100):
        detail = await w.payment(nothing["payment_reference"])
        if any(t["txid"] == late for t in detail["transactions"]):
            break
        await asyncio.sleep(0.3)
    assert detail["status"] == "abandoned"
    assert [t["txid"] for t in detail["transactions"]] == [late], detail
    assert "late_payment" in w.daemon.log()

    expected = [
        (exact, ["payment_linked", "payment_completed"]),
        (over, ["payment_linked", "payment_completed"]),
        (in_grace, ["payment_linked", "payment_completed"]),
        (under, ["payment_linked", "payment_abandoned"]),
        (nothing, ["payment_abandoned"]),
        (canceled, ["payment_canceled"]),
        (spent, ["payment_linked", "payment_canceled"]),
    ]
    for made, events in expected:
        await w.wait_webhooks(made["payment_reference"], events)
        check_bodies(w, made)
    assert not w.rx.refused


async def test_no_payment_on_a_blind_chain_and_none_abandoned_for_time_not_seen(world: World) -> None:
    w = world
    before = await w.create("before-outage", "0.0007", "BTC", expires_in_s=3)
    pay(w, "BTC", before["address"], 70_000)
    await w.wait_status(before["payment_reference"], "linked")
    await w.proxy.stop()  # the node keeps running; the daemon sees connection refused
    for _ in range(150):
        status, ready = await w.daemon.get("/readyz")
        if status == 503:
            break
        await asyncio.sleep(0.2)
    assert status == 503, ready
    body = {"amount": "0.001", "currency": "BTC"}
    status, refused = await w.call("POST", "/v1/payments", body, key="during-outage")
    assert status == 503, refused
    assert refused["error"]["code"] == "chain_unavailable" and "bitcoin" in refused["error"]["message"]
    status, eth = await w.call("POST", "/v1/payments", {"amount": "0.001", "currency": "ETH"}, key="eth-ok")
    assert status == 201, eth
    # Past its expiry and its whole grace period while the daemon cannot see the chain: still linked.
    await asyncio.sleep(max(0.0, epoch(before["expires_at"]) + GRACE_S - time.time()) + 2)
    assert (await w.payment(before["payment_reference"]))["status"] == "linked"
    btc.mine(w.bcoin, MIN_CONF)  # it confirmed during the outage
    await w.proxy.start()
    done = await w.wait_status(before["payment_reference"], "completed")
    assert done["amount_received"] == "0.00070000"
    await w.wait_webhooks(before["payment_reference"], ["payment_linked", "payment_completed"])
    status, made = await w.call("POST", "/v1/payments", body, key="during-outage")
    assert status == 201, made  # the same key, now that the chain is followed: a new payment
    assert not w.rx.refused


async def test_an_idempotency_key_retried_across_sigkills_gives_one_payment(world: World) -> None:
    w = world
    body = {"amount": "0.25", "currency": "USDT", "customer_reference": "crash"}
    references = set()
    for attempt in range(4):
        key = f"crash-{attempt}"
        request = asyncio.create_task(w.call("POST", "/v1/payments", body, key=key))
        await asyncio.sleep(0.002 * attempt)  # the kill lands before, during or after the commit
        w.daemon.kill()
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            await request
        w.daemon.start()
        await w.daemon.wait_live()
        await wait_ready(w.daemon, w.api, "/v1/payments")
        status, made = await w.call("POST", "/v1/payments", body, key=key)
        assert status in (200, 201), made
        status, again = await w.call("POST", "/v1/payments", body, key=key)
        assert status == 200 and again == made
        references.add(made["payment_reference"])
        status, listed = await w.call("GET", "/v1/payments?customer_reference=crash")
        assert [p["payment_reference"] for p in listed["data"]].count(made["payment_reference"]) == 1
    assert len(references) == 4
