"""End to end on Ethereum: a real anvil, the real daemon process, a real merchant receiver.

Each test runs `python -m watcher run` on a fresh SQLite file and checks what the receiver got.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devnet import evm_tools as evm
from devnet.anvil import AnvilNode
from devnet.receiver import Receiver
from tests.daemon_process import DaemonProcess, free_port, write_config
from watcher.store import Store

KEY, SECRET = "shop-key", "e2e-secret-\u00e9"
MIN_CONF = 4


@dataclass
class World:
    node: AnvilNode
    url: str
    receiver: Receiver
    daemon: DaemonProcess
    config_path: Path
    database: Path
    usdt: str
    usdc: str
    fake_usdt: str
    acct: list[str]
    reverting: str

    @property
    def a(self) -> str:  # watched for ETH, USDT, USDC
        return self.acct[1]

    @property
    def b(self) -> str:  # watched for ETH and USDC
        return self.acct[2]


def _config(w: dict[str, Any], status_port: int, receiver_url: str, tmp: Path) -> dict[str, Any]:
    a, b = w["acct"][1], w["acct"][2]
    addresses = [
        {"currency": "ETH", "address": a, "foreign_id": "customer-a"},
        {"currency": "USDT", "address": a.lower(), "foreign_id": "customer-a"},
        {"currency": "USDC", "address": a, "foreign_id": "customer-a"},
        {"currency": "ETH", "address": b, "foreign_id": "customer-b"},
        {"currency": "USDC", "address": b, "foreign_id": "customer-b"},
        {"currency": "ETH", "address": w["reverting"], "foreign_id": "customer-r"},
    ]
    return {
        "network": "regtest",
        "database": str(tmp / "watcher.sqlite3"),
        "status": {"listen": f"127.0.0.1:{status_port}"},
        "log": {"format": "json", "level": "debug"},
        "merchant": {
            "callback_url": receiver_url, "key": KEY, "secret": "${E2E_SECRET}", "timeout_s": 2,
            "retry_schedule_min": [0.005, 0.01, 0.02, 0.04, 0.08],
        },
        "chains": {
            "ethereum": {
                "adapter": "evm", "rpc_url": w["url"], "chain_id": 31337, "poll_interval_s": 0.2,
                "start_height": w["start"], "unconfirmed_expiry_s": 600,
                "currencies": {
                    "ETH": {"min_confirmations": MIN_CONF},
                    "USDT": {"contract": w["usdt"], "decimals": 6, "min_confirmations": MIN_CONF},
                    "USDC": {"contract": w["usdc"], "decimals": 6, "min_confirmations": MIN_CONF},
                },
            }
        },
        "addresses": addresses,
    }  # fmt: skip


@pytest.fixture
def node() -> Iterator[AnvilNode]:
    with AnvilNode() as n:
        yield n


@pytest.fixture
async def world(node: AnvilNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    url = node.url
    acct = evm.accounts(url)
    usdt = evm.deploy_token(url, "Tether USD", "USDT", 6)
    usdc = evm.deploy_token(url, "USD Coin", "USDC", 6)
    fake = evm.deploy_token(url, "Tether USD", "USDT", 6)  # same symbol, not configured
    for token in (usdt, usdc, fake):
        evm.mint(url, token, acct[0], 10**15)
    reverting = acct[7]
    evm.make_reverting(url, reverting)
    # From here on blocks are mined only when a test says so: confirmations are the test's to count.
    evm.set_automine(url, False)
    monkeypatch.setenv("E2E_SECRET", SECRET)
    status_port = free_port()
    async with Receiver(key=KEY, secret=SECRET, slow_answer_s=4.0) as rx:
        facts = {"url": url, "acct": acct, "usdt": usdt, "usdc": usdc, "reverting": reverting,
                 "start": evm.head_height(url) + 1}  # fmt: skip
        config_path = write_config(tmp_path / "watcher.yaml", _config(facts, status_port, rx.url, tmp_path))
        daemon = DaemonProcess(config_path, status_port, tmp_path / "daemon.log")
        w = World(
            node,
            url,
            rx,
            daemon,
            config_path,
            tmp_path / "watcher.sqlite3",
            usdt,
            usdc,
            fake,
            acct,
            reverting,
        )
        daemon.start()
        try:
            await daemon.wait_live()
            yield w
        finally:
            code = daemon.stop()
            assert code == 0, f"daemon exit code {code}:\n{daemon.log()}"


def by_deposit(rx: Receiver) -> dict[int, list[dict[str, Any]]]:
    seen: dict[int, list[dict[str, Any]]] = {}
    for r in rx.delivered:
        seen.setdefault(r.body["id"], []).append(r.body)
    return seen


def statuses(bodies: list[dict[str, Any]]) -> list[str]:
    return [b["status"] for b in bodies]


async def wait_callbacks(rx: Receiver, count: int, status: str, timeout_s: float = 30.0) -> None:
    def enough(r: Receiver) -> bool:
        return sum(1 for x in r.delivered if x.body["status"] == status) >= count

    await rx.wait_for(enough, timeout_s)


async def test_eth_usdt_usdc_deposits_become_signed_callbacks(world: World) -> None:
    w, url, src = world, world.url, world.acct[0]
    paid = {
        evm.send_eth(url, src, w.a, 1_500_000_000_000_000_001): (
            "ETH",
            w.a,
            "1.500000000000000001",
            "customer-a",
        ),
        evm.token_transfer(url, w.usdt, src, w.a, 12_345_678): (
            "USDT",
            w.a.lower(),
            "12.345678",
            "customer-a",
        ),
        evm.token_transfer(url, w.usdc, src, w.b, 1): ("USDC", w.b, "0.000001", "customer-b"),
        evm.send_eth(url, w.acct[3], w.a, 7): (
            "ETH",
            w.a,
            "0.000000000000000007",
            "customer-a",
        ),  # reused address
    }
    batch = evm.token_batch_transfer(url, w.usdc, src, [w.a, w.b], [2_000_000, 3_000_000])
    ignored = [
        evm.send_eth(url, src, w.acct[5], 10**18),  # unwatched address
        evm.send_eth(url, src, w.reverting, 10**18),  # reverted
        evm.token_transfer(url, w.fake_usdt, src, w.a, 5_000_000),  # unconfigured token named USDT
        evm.send_eth(url, src, w.a, 0),  # zero value
        evm.token_transfer(url, w.usdt, src, w.a, 0),  # zero-value token transfer
    ]
    evm.mine(url, 1)
    assert evm.wait_mined(url, ignored[1])["status"] == "0x0"  # mined, and reverted
    await wait_callbacks(w.receiver, 6, "not_confirmed")
    evm.mine(url, MIN_CONF - 2)
    await asyncio.sleep(1.0)
    assert not any(r.body["status"] == "confirmed" for r in w.receiver.delivered)  # one short
    evm.mine(url, 1)
    await wait_callbacks(w.receiver, 6, "confirmed")

    deposits = by_deposit(w.receiver)
    assert len(deposits) == 6
    for deposit_id, bodies in deposits.items():
        assert statuses(bodies) == ["not_confirmed", "confirmed"], bodies
        assert all(b["id"] == deposit_id == b["transactions"][0]["id"] for b in bodies)
        assert bodies[1]["transactions"][0]["confirmations"] == str(MIN_CONF)
    txids = {b[0]["transactions"][0]["txid"] for b in deposits.values()}
    assert txids == set(paid) | {batch}
    assert not txids & set(ignored)
    for bodies in deposits.values():
        body = bodies[-1]
        txid = body["transactions"][0]["txid"]
        if txid in paid:
            currency, address, amount, foreign_id = paid[txid]
            assert body["crypto_address"]["currency"] == currency
            assert body["crypto_address"]["address"] == address  # exactly as configured
            assert body["crypto_address"]["foreign_id"] == foreign_id
            assert body["currency_sent"]["amount"] == body["transactions"][0]["amount"] == amount
    batch_bodies = sorted(
        (b[-1] for b in deposits.values() if b[-1]["transactions"][0]["txid"] == batch),
        key=lambda b: b["transactions"][0]["index"],
    )
    assert [(b["crypto_address"]["address"], b["currency_received"]["amount"]) for b in batch_bodies] == [
        (w.a, "2.000000"), (w.b, "3.000000")
    ]  # fmt: skip
    for r in w.receiver.delivered:  # an independent HMAC-SHA512 check of the exact bytes received
        expected = hmac.new(SECRET.encode(), r.raw, hashlib.sha512).hexdigest()
        assert json.loads(r.raw) == r.body and r.signature_ok
        assert hmac.compare_digest(expected, hmac.new(SECRET.encode(), r.raw, hashlib.sha512).hexdigest())
    code, status = await w.daemon.get("/status")
    assert code == 200 and status["deposits"] == {"confirmed": 6}
    assert (await w.daemon.get("/readyz"))[0] == 200


async def test_reorg_reincludes_one_deposit_and_drops_another(world: World) -> None:
    w, url = world, world.url
    evm.mine(url, 1)
    kept = evm.send_eth(url, w.acct[3], w.a, 10**17)
    dropped = evm.token_transfer(url, w.usdt, w.acct[0], w.a, 5_000_000)
    evm.mine(url, 1)
    await wait_callbacks(w.receiver, 2, "not_confirmed")
    first = {b[0]["transactions"][0]["txid"]: b[0] for b in by_deposit(w.receiver).values()}
    # The last two blocks are replaced: `kept` is mined again one block lower, `dropped` is gone.
    evm.reorg_reinclude(url, 2, [kept], offset=0)
    evm.mine(url, MIN_CONF)
    await wait_callbacks(w.receiver, 1, "confirmed")
    await wait_callbacks(w.receiver, 1, "cancelled")
    deposits = by_deposit(w.receiver)
    kept_bodies = deposits[first[kept]["id"]]
    assert statuses(kept_bodies) == ["not_confirmed", "confirmed"]
    moved = kept_bodies[-1]["transactions"][0]
    assert moved["block_hash"] != first[kept]["transactions"][0]["block_hash"]
    assert moved["block_height"] == first[kept]["transactions"][0]["block_height"] - 1
    dropped_bodies = deposits[first[dropped]["id"]]
    assert statuses(dropped_bodies) == ["not_confirmed", "cancelled"]
    assert "dropped" in dropped_bodies[-1]["error"]


async def test_replaced_deposit_is_cancelled_with_reason(world: World) -> None:
    w, url = world, world.url
    paid = evm.send_eth(url, w.acct[4], w.b, 10**16)
    evm.mine(url, 1)
    await wait_callbacks(w.receiver, 1, "not_confirmed")
    evm.reorg_replace(url, 1, paid)  # same sender and nonce, another transaction
    evm.mine(url, 2)
    await wait_callbacks(w.receiver, 1, "cancelled")
    [bodies] = by_deposit(w.receiver).values()
    assert statuses(bodies) == ["not_confirmed", "cancelled"]
    assert "replaced" in bodies[-1]["error"] and "nonce" in bodies[-1]["error"]


async def test_sigkill_before_delivery_then_restart_delivers_once_per_id(world: World) -> None:
    w, url = world, world.url
    w.receiver.plan([500] * 1000)  # the merchant is failing: callbacks stay in the outbox
    paid = evm.send_eth(url, w.acct[0], w.a, 42)
    evm.mine(url, MIN_CONF)
    await w.receiver.wait_for(lambda r: len(r.requests) >= 1, 30)
    w.daemon.kill()
    w.receiver.clear_plan()
    evm.send_eth(url, w.acct[0], w.b, 43)  # paid while the daemon was down
    evm.mine(url, MIN_CONF)
    w.daemon.start()
    await w.daemon.wait_live()
    await wait_callbacks(w.receiver, 2, "confirmed")
    deposits = by_deposit(w.receiver)
    assert len(deposits) == 2
    ids_per_tx: dict[str, set[int]] = {}
    for r in w.receiver.requests:
        if r.body:
            ids_per_tx.setdefault(r.body["transactions"][0]["txid"], set()).add(r.body["id"])
    assert all(len(ids) == 1 for ids in ids_per_tx.values()), ids_per_tx
    assert paid in ids_per_tx
    store = await Store.open(str(w.database))
    try:
        assert len(await store.deposits()) == 2
        assert await store.integrity_check() == "ok"
    finally:
        await store.close()


async def test_status_port_reports_a_stopped_node(world: World) -> None:
    w = world
    evm.mine(w.url, 1)
    await wait_ready(w.daemon, True)
    code, status = await w.daemon.get("/status")
    chain = status["chains"]["ethereum"]
    assert chain["processed_height"] == chain["node_height"] and chain["lag"] == 0
    assert SECRET not in json.dumps(status) and KEY not in json.dumps(status)
    w.node.stop()
    await wait_ready(w.daemon, False)
    code, body = await w.daemon.get("/readyz")
    assert code == 503 and "node unavailable" in body["problems"]["ethereum"]
    assert (await w.daemon.get("/livez"))[0] == 200


async def wait_ready(daemon: DaemonProcess, ready: bool, timeout_s: float = 20.0) -> None:
    for _ in range(int(timeout_s / 0.1)):
        if ((await daemon.get("/readyz"))[0] == 200) == ready:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"readyz never became {'200' if ready else '503'}:\n{daemon.log()}")


async def test_unreachable_merchant_is_retried_and_the_daemon_goes_on(world: World) -> None:
    w, url = world, world.url
    port = int(w.receiver.url.split(":")[2].split("/")[0])
    await w.receiver.stop()  # connection refused from now on
    evm.send_eth(url, w.acct[0], w.a, 10**15)
    evm.mine(url, MIN_CONF)
    for _ in range(200):
        _code, status = await w.daemon.get("/status")
        if status["deposits"].get("confirmed") == 1 and status["outbox"]["pending"] >= 1:
            break
        await asyncio.sleep(0.1)
    assert status["deposits"] == {"confirmed": 1}  # followed and committed while the merchant is down
    assert (await w.daemon.get("/readyz"))[0] == 200
    await w.receiver.start(port=port)
    await wait_callbacks(w.receiver, 1, "confirmed")
    store = await Store.open(str(w.database))
    try:
        for _ in range(100):  # the delivery is committed in the dispatcher's next batch
            delivered = [e for e in await store.outbox_entries() if str(e.state) == "delivered"]
            if delivered:
                break
            await asyncio.sleep(0.05)
        [entry] = delivered
        attempts = await store.attempts(entry.id)
        assert len(attempts) >= 2 and attempts[0].http_status is None and attempts[-1].http_status == 200
    finally:
        await store.close()


async def test_token_decimals_mismatch_refuses_to_start(node: AnvilNode, tmp_path: Path) -> None:
    """A token configured with other decimals than its contract's would credit amounts scaled wrongly:
    the daemon stops with exit code 78 (EX_CONFIG, which the unit file does not restart on)."""
    url = node.url
    usdc = evm.deploy_token(url, "USD Coin", "USDC", 6)
    port = free_port()
    config = {
        "network": "regtest", "database": str(tmp_path / "w.sqlite3"),
        "status": {"listen": f"127.0.0.1:{port}"}, "log": {"format": "json"},
        "merchant": {"callback_url": "http://127.0.0.1:9/cb", "key": KEY, "secret": "s"},
        "chains": {"ethereum": {"adapter": "evm", "rpc_url": url, "chain_id": 31337, "poll_interval_s": 0.2,
                                "currencies": {"USDC": {"contract": usdc, "decimals": 18}}}},
    }  # fmt: skip
    daemon = DaemonProcess(write_config(tmp_path / "c.yaml", config), port, tmp_path / "daemon.log")
    daemon.start()
    assert daemon.proc is not None
    code = await asyncio.to_thread(daemon.proc.wait, 30)
    assert code == 78, daemon.log()
    assert "config_refused" in daemon.log() and "configured decimals 18" in daemon.log()


async def test_deep_reorg_beyond_a_confirmed_deposit_halts_the_chain_loudly(world: World) -> None:
    """A reorg that removes a confirmed deposit: the chain halts with the facts in /status, /readyz and
    the log; the confirmed callback is never taken back and nothing else is sent for that deposit."""
    w, url = world, world.url
    evm.mine(url, 1)
    paid = evm.send_eth(url, w.acct[3], w.a, 10**15)
    evm.mine(url, MIN_CONF)
    await wait_callbacks(w.receiver, 1, "confirmed")
    evm.reorg_drop(url, MIN_CONF + 1)  # the deposit's block and every block after it are replaced
    evm.mine(url, 1)
    for _ in range(300):
        code, body = await w.daemon.get("/readyz")
        if code == 503 and "halted" in body["problems"].get("ethereum", ""):
            break
        await asyncio.sleep(0.1)
    assert code == 503 and "removes confirmed deposits" in body["problems"]["ethereum"], w.daemon.log()
    _code, status = await w.daemon.get("/status")
    assert paid in status["chains"]["ethereum"]["halted"]
    assert "chain_halted" in w.daemon.log() and paid in w.daemon.log()
    await asyncio.sleep(1.0)
    assert [r.body["status"] for r in w.receiver.delivered] == ["confirmed"]  # never taken back
    assert (await w.daemon.get("/livez"))[0] == 200  # the process lives on; only that chain stopped
