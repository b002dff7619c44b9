"""The merchant API end to end: the real daemon process, real anvil and bcoin nodes, real receivers.

Two integrations, each with its own API key, public keys and callback URL: one derives Bitcoin addresses
from a `wpkh` descriptor, the other from a `tr` one. Addresses are taken over HTTP and paid at once; each
callback must carry the right foreign_id and reach its own integration's URL.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from chains.base import CurrencySpec
from chains.evm.address import to_checksum
from chains.registry import adapter_class
from devnet import btc_tools as btc
from devnet import evm_tools as evm
from devnet.anvil import AnvilNode
from devnet.bcoin import BcoinNode
from devnet.receiver import Receiver
from tests.daemon_process import DaemonProcess, free_port, write_config
from tests.daemon_world import ApiClient, daemon_config, regtest_chains, wait_ready
from tests.test_derivation import ROOT_FINGERPRINT, account
from watcher.apikeys import new_api_key

SHOP_A, SHOP_B = "5a0d1c7e-2b3f-4a6d-8e9f-0a1b2c3d4e5f", "6b1e2d8f-3c4a-4b7e-9fa0-1b2c3d4e5f60"
KEY_A, HASH_A = new_api_key(live=False)
KEY_B, HASH_B = new_api_key(live=False)
MIN_CONF = 2
SECRETS = {"key-a": "secret-a", "key-b": "secret-b"}
WPKH = f"wpkh([{ROOT_FINGERPRINT}/84h/1h/0h]{account('m/84h/1h/0h', 'tpub')}/0/*)"
TR = f"tr([{ROOT_FINGERPRINT}/86h/1h/0h]{account('m/86h/1h/0h', 'tpub')}/0/*)"


@pytest.fixture(scope="module")
def tokens(anvil: AnvilNode) -> dict[str, str]:
    return {code: evm.deploy_token(anvil.url, code, code, 6) for code in ("USDT", "USDC")}


class Api(ApiClient):
    async def take(self, currency: str, foreign_id: str) -> tuple[int, dict[str, Any]]:
        return await self.call("POST", "/v1/addresses", {"currency": currency, "foreign_id": foreign_id})


@dataclass
class World:
    anvil: AnvilNode
    bcoin: BcoinNode
    tokens: dict[str, str]
    daemon: DaemonProcess
    rx_a: Receiver
    rx_b: Receiver
    a: Api
    b: Api

    async def restart(self, *, kill: bool = False) -> None:
        if kill:
            self.daemon.kill()
        else:
            assert self.daemon.stop() == 0, self.daemon.log()
        self.daemon.start()
        await self.daemon.wait_live()
        await wait_ready(self.daemon, self.a)


def _integration(id_: str, key_hash: str, rx: Receiver, bitcoin: str, ethereum: str) -> dict[str, Any]:
    return {
        "id": id_,
        "callback": {"callback_url": rx.url, "key": rx.key, "secret": SECRETS[rx.key], "timeout_s": 2,
                     "retry_schedule_min": [0.005, 0.01, 0.02]},
        "api_keys": [key_hash],
        "public_keys": {"bitcoin": bitcoin, "ethereum": ethereum},
    }  # fmt: skip


@pytest.fixture
async def world(
    anvil: AnvilNode, bcoin: BcoinNode, tokens: dict[str, str], tmp_path: Path
) -> AsyncIterator[World]:
    status_port, api_port = free_port(), free_port()
    async with (
        Receiver(key="key-a", secret="secret-a") as rx_a,
        Receiver(key="key-b", secret="secret-b") as rx_b,
    ):
        integrations = [
            _integration(SHOP_A, HASH_A.line(), rx_a, WPKH, account("m/44h/60h/0h")),
            _integration(SHOP_B, HASH_B.line(), rx_b, TR, account("m/44h/60h/1h")),
        ]
        chains = regtest_chains(anvil, bcoin, MIN_CONF, tokens=tokens, timeout_s=5)
        config = daemon_config(
            tmp_path / "watcher.sqlite3", status_port, api_port, integrations, chains, log_level="debug"
        )
        daemon = DaemonProcess(
            write_config(tmp_path / "c.yaml", config), status_port, tmp_path / "daemon.log"
        )
        daemon.start()
        w = World(anvil, bcoin, tokens, daemon, rx_a, rx_b, Api(api_port, KEY_A), Api(api_port, KEY_B))
        try:
            await daemon.wait_live()
            await wait_ready(w.daemon, w.a)
            yield w
        finally:
            assert daemon.stop() == 0, daemon.log()


def pay(w: World, currency: str, address: str, amount: int) -> str:
    """Pay from the nodes' funded accounts right away; the txid."""
    sender = evm.accounts(w.anvil.url)[0]
    if currency == "BTC":
        if address.startswith("bcrt1p"):  # bcoin's wallet predates taproot: a block built by hand
            script = adapter_class("bitcoin-core").watch_key(CurrencySpec("BTC", 8), address, "regtest")
            return btc.taproot_block(w.bcoin, script, amount)[1]
        return btc.pay(w.bcoin, address, amount)
    if currency == "ETH":
        return evm.send_eth(w.anvil.url, sender, address, amount)
    evm.mint(w.anvil.url, w.tokens[currency], sender, amount)
    return evm.token_transfer(w.anvil.url, w.tokens[currency], sender, address, amount)


def confirmed(rx: Receiver) -> dict[str, dict[str, Any]]:
    """The confirmed callbacks received, by txid."""
    return {
        r.body["transactions"][0]["txid"]: r.body for r in rx.delivered if r.body["status"] == "confirmed"
    }


async def mine_until_confirmed(w: World, rx: Receiver, count: int) -> dict[str, dict[str, Any]]:
    for _ in range(200):
        if len(confirmed(rx)) >= count:
            return confirmed(rx)
        btc.mine(w.bcoin, 1)
        evm.mine(w.anvil.url, 1)
        await asyncio.sleep(0.3)
    raise AssertionError(f"{len(confirmed(rx))} of {count} confirmed:\n{rx.summary()}\n{w.daemon.log()}")


async def test_taken_addresses_paid_at_once_reach_their_own_integration(world: World) -> None:
    w = world
    paid: dict[str, tuple[str, str, str, int]] = {}  # txid -> (shop, currency, foreign_id, amount)
    for n in range(1, 4):
        fid = f"customer-{n}"
        for currency in ("BTC", "ETH", "USDT", "USDC"):
            status, body = await w.a.take(currency, fid)
            assert status == 201, body
            amount = 10_000 + n if currency == "BTC" else 10**15 + n if currency == "ETH" else 1_000_000 + n
            paid[pay(w, currency, body["address"], amount)] = ("a", currency, fid, amount)
        status, body = await w.b.take("BTC", fid)
        assert status == 201 and body["address"].startswith("bcrt1p"), body
        paid[pay(w, "BTC", body["address"], 20_000 + n)] = ("b", "BTC", fid, 20_000 + n)
    got_a = await mine_until_confirmed(w, w.rx_a, 12)
    got_b = await mine_until_confirmed(w, w.rx_b, 3)
    assert set(got_a) | set(got_b) == set(paid) and not set(got_a) & set(got_b)
    for txid, (shop, currency, fid, _) in paid.items():
        body = (got_a if shop == "a" else got_b)[txid]
        assert body["currency_sent"]["currency"] == currency
        assert body["crypto_address"]["foreign_id"] == fid
    # One 0x address per customer serves ETH and both tokens.
    _, listed = await w.a.call("GET", "/v1/addresses?foreign_id=customer-1")
    evm_addresses = {x["address"] for x in listed["data"] if x["currency"] != "BTC"}
    assert len(evm_addresses) == 1
    # Integration b sees none of a's addresses or deposits.
    btc_a = next(x["address"] for x in listed["data"] if x["currency"] == "BTC")
    assert (await w.b.call("GET", f"/v1/addresses/BTC/{btc_a}"))[0] == 404
    deposit_a = next(iter(got_a.values()))["id"]
    assert (await w.b.call("GET", f"/v1/deposits/{deposit_a}"))[0] == 404
    await check_event_feed(w)
    await w.restart()
    await check_event_feed(w)


async def check_event_feed(w: World) -> None:
    """Every status change in order, paged with `after` (no gap, no repeat), agreeing with the callbacks."""
    for api, rx in ((w.a, w.rx_a), (w.b, w.rx_b)):
        events: list[dict[str, Any]] = []
        after = 0
        while True:
            status, page = await api.call("GET", f"/v1/events?after={after}&limit=5")
            assert status == 200, page
            if not page["data"]:
                break
            events += page["data"]
            after = page["data"][-1]["id"]
        ids = [e["id"] for e in events]
        assert ids == sorted(set(ids))
        changes = [(e["deposit_id"], e["status"]) for e in events]
        assert sorted(changes) == sorted({(r.body["id"], r.body["status"]) for r in rx.delivered})
        for deposit_id in {d for d, _ in changes}:
            # First seen in a block already deep enough, a deposit is confirmed at once.
            assert [s for d, s in changes if d == deposit_id] in (
                ["not_confirmed", "confirmed"],
                ["confirmed"],
            )


async def test_same_customer_same_address_after_restart_and_sigkill(world: World) -> None:
    w = world
    status, first = await w.a.take("BTC", "loyal")
    assert status == 201
    await w.restart()
    assert await w.a.take("BTC", "loyal") == (200, first)
    await w.restart(kill=True)
    assert await w.a.take("BTC", "loyal") == (200, first)
    status, other = await w.a.take("BTC", "newcomer")
    assert status == 201 and other["derivation_path"] != first["derivation_path"]


async def test_fifty_concurrent_takes_for_one_customer_give_one_address(world: World) -> None:
    results = await asyncio.gather(*(world.a.take("ETH", "rush") for _ in range(50)))
    assert sorted(status for status, _ in results) == [200] * 49 + [201]
    assert len({body["address"] for _, body in results}) == 1


async def test_put_with_from_height_finds_an_older_payment_exactly_once(world: World) -> None:
    w = world
    elsewhere = to_checksum(secrets.token_bytes(20))
    from_height = evm.head_height(w.anvil.url) + 1
    txid = pay(w, "ETH", elsewhere, 777)
    evm.mine(w.anvil.url, MIN_CONF + 2)
    status, body = await w.a.call(
        "PUT", f"/v1/addresses/ETH/{elsewhere}", {"foreign_id": "old", "from_height": from_height}
    )
    assert status == 201, body
    got = await mine_until_confirmed(w, w.rx_a, 1)
    assert set(got) == {txid} and got[txid]["crypto_address"]["foreign_id"] == "old"
    evm.mine(w.anvil.url, 3)
    await asyncio.sleep(1.5)  # several polls: nothing is reported again
    assert [r.body["transactions"][0]["txid"] for r in w.rx_a.delivered].count(txid) == 1
    _, deposits = await w.a.call("GET", "/v1/deposits?foreign_id=old")
    assert [d["txid"] for d in deposits["data"]] == [txid]
