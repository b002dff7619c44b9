"""End to end on Bitcoin: the real bcoin regtest node, the real daemon process, a real merchant receiver.

Deposits are seen in the mempool first (`not_confirmed`, 0 confirmations), then confirmed in blocks;
reorgs move or double-spend them; the node goes away and comes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from devnet import btc_tools as btc
from devnet.bcoin import BcoinNode
from devnet.receiver import Receiver
from tests.daemon_process import DaemonProcess, free_port, write_config
from tests.tcp_proxy import TcpProxy

KEY, SECRET = "btc-key", "btc-secret"
MIN_CONF = 2
KINDS = ("p2pkh", "p2sh-p2wpkh", "p2wpkh", "p2wsh", "p2tr")


@dataclass
class World:
    node: BcoinNode
    proxy: TcpProxy
    receiver: Receiver
    daemon: DaemonProcess
    addresses: dict[str, btc.WatchedAddress]


@pytest.fixture
def node() -> Iterator[BcoinNode]:
    with BcoinNode() as n:
        btc.fund(n)
        yield n


def _config(
    tmp: Path, rpc_url: str, node: BcoinNode, receiver_url: str, addresses: dict[str, Any]
) -> dict[str, Any]:
    return {
        "network": "regtest",
        "database": str(tmp / "watcher.sqlite3"),
        "status": {"listen": f"127.0.0.1:{free_port()}"},
        "log": {"format": "json", "level": "debug"},
        "merchant": {"callback_url": receiver_url, "key": KEY, "secret": SECRET, "timeout_s": 2,
                     "retry_schedule_min": [0.005, 0.01, 0.02, 0.04]},
        "chains": {"bitcoin": {
            "adapter": "bitcoin-core", "rpc_url": rpc_url, "rpc_user": node.rpc_user,
            "rpc_password": node.rpc_password, "poll_interval_s": 0.2, "timeout_s": 5,
            "start_height": btc.height(node) + 1, "unconfirmed_expiry_s": 600,
            "currencies": {"BTC": {"min_confirmations": MIN_CONF}},
        }},
        "addresses": [
            {"currency": "BTC", "address": a.address, "foreign_id": f"customer-{kind}"}
            for kind, a in addresses.items()
        ],
    }  # fmt: skip


@pytest.fixture
async def world(node: BcoinNode, tmp_path: Path) -> AsyncIterator[World]:
    parts = urlsplit(node.rpc_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 0)
    await proxy.start()
    addresses = btc.make_addresses()
    async with Receiver(key=KEY, secret=SECRET) as rx:
        config = _config(tmp_path, proxy.url, node, rx.url, addresses)
        status_port = int(config["status"]["listen"].rsplit(":", 1)[1])
        daemon = DaemonProcess(
            write_config(tmp_path / "c.yaml", config), status_port, tmp_path / "daemon.log"
        )
        daemon.start()
        try:
            await daemon.wait_live()
            yield World(node, proxy, rx, daemon, addresses)
        finally:
            code = daemon.stop()
            await proxy.stop()
            assert code == 0, daemon.log()


def bodies_by_id(rx: Receiver) -> dict[int, list[dict[str, Any]]]:
    seen: dict[int, list[dict[str, Any]]] = {}
    for r in rx.delivered:
        seen.setdefault(r.body["id"], []).append(r.body)
    return seen


async def wait_status(rx: Receiver, status: str, count: int, timeout_s: float = 40.0) -> None:
    await rx.wait_for(lambda r: sum(1 for x in r.delivered if x.body["status"] == status) >= count, timeout_s)


async def wait_ready(
    daemon: DaemonProcess, ready: bool, reason: str = "", timeout_s: float = 40.0
) -> dict[str, Any]:
    """Wait for /readyz to be 200 (ready) or 503 with `reason` in the bitcoin chain's problem."""
    for _ in range(int(timeout_s / 0.1)):
        code, body = await daemon.get("/readyz")
        if ready and code == 200:
            return dict(body)
        if not ready and code == 503 and reason in body.get("problems", {}).get("bitcoin", ""):
            return dict(body)
        await asyncio.sleep(0.1)
    raise AssertionError(f"readyz never became {'200' if ready else '503 ' + reason}:\n{daemon.log()}")


async def test_every_address_type_mempool_then_confirmed(world: World) -> None:
    w = world
    sats = {kind: 123_457 + i for i, kind in enumerate(KINDS[:4])}
    paid = {btc.pay(w.node, w.addresses[kind].address, amount): kind for kind, amount in sats.items()}
    both = btc.pay_many(w.node, {w.addresses["p2wpkh"].address: 5_000, w.addresses["p2pkh"].address: 6_000})
    again = btc.pay(w.node, w.addresses["p2wpkh"].address, 7_000)  # a used address pays again
    await wait_status(w.receiver, "not_confirmed", 7)
    for body in (r.body for r in w.receiver.delivered):
        assert body["transactions"][0]["confirmations"] == "0"  # seen in the mempool
        assert body["transactions"][0]["block_height"] is None
    btc.mine(w.node, MIN_CONF)
    await wait_status(w.receiver, "confirmed", 7)
    deposits = bodies_by_id(w.receiver)
    assert len(deposits) == 7
    for bodies in deposits.values():
        assert [b["status"] for b in bodies] == ["not_confirmed", "confirmed"]
        assert bodies[1]["transactions"][0]["confirmations"] == str(MIN_CONF)
    by_txid: dict[str, list[dict[str, Any]]] = {}
    for bodies in deposits.values():
        by_txid.setdefault(bodies[-1]["transactions"][0]["txid"], []).append(bodies[-1])
    assert set(by_txid) == set(paid) | {both, again}
    for txid, kind in paid.items():
        [body] = by_txid[txid]
        assert body["crypto_address"]["address"] == w.addresses[kind].address
        assert body["crypto_address"]["foreign_id"] == f"customer-{kind}"
        assert body["currency_received"]["amount"] == btc.sats_to_btc(sats[kind])
        assert len(body["currency_received"]["amount"].split(".")[1]) == 8
        assert txid in btc.mempool(w.node) or btc.in_main_chain(w.node, txid)  # the real txid
    two = sorted(by_txid[both], key=lambda b: b["crypto_address"]["address"])
    assert {b["currency_sent"]["amount"] for b in two} == {"0.00005000", "0.00006000"}
    assert len({b["transactions"][0]["index"] for b in two}) == 2  # two vouts, two deposits


async def test_taproot_payment_in_a_constructed_block(world: World) -> None:
    w = world
    block_hash, txid = btc.taproot_block(w.node, w.addresses["p2tr"].script_pubkey, 77_000)
    btc.mine(w.node, MIN_CONF - 1)
    await wait_status(w.receiver, "confirmed", 1)
    [body] = [r.body for r in w.receiver.delivered if r.body["status"] == "confirmed"]
    assert body["transactions"][0]["txid"] == txid and body["transactions"][0]["block_hash"] == block_hash
    assert (
        body["crypto_address"]["address"].startswith("bcrt1p")
        and body["currency_sent"]["amount"] == "0.00077000"
    )


async def test_reorg_moves_a_deposit_without_cancelling_it(world: World) -> None:
    w = world
    txid = btc.pay(w.node, w.addresses["p2wpkh"].address, 250_000)
    btc.mine(w.node, 1)
    await w.receiver.wait_for(
        lambda r: any(x.body["transactions"][0]["confirmations"] == "1" for x in r.requests if x.body), 40
    )
    # The deposit's block is replaced by a longer branch without it; it is mined again later.
    btc.reorg(w.node, 1, include_txs=(), extra_blocks=1)
    assert txid in btc.mempool(w.node)  # back in the mempool (0 confirmations, still not_confirmed)
    btc.mine(w.node, MIN_CONF)
    await wait_status(w.receiver, "confirmed", 1)
    await asyncio.sleep(1.0)
    [bodies] = bodies_by_id(w.receiver).values()
    assert [b["status"] for b in bodies] == ["not_confirmed", "confirmed"]
    assert bodies[-1]["transactions"][0]["txid"] == txid
    assert not any(r.body.get("status") == "cancelled" for r in w.receiver.requests)
    _code, status = await w.daemon.get("/status")
    assert status["chains"]["bitcoin"]["reorgs"] >= 1


async def test_double_spend_reorg_cancels_the_deposit(world: World) -> None:
    w = world
    txid = btc.pay(w.node, w.addresses["p2pkh"].address, 300_000)
    btc.mine(w.node, 1)
    await wait_status(w.receiver, "not_confirmed", 1)
    conflict, _ = btc.double_spend_reorg(w.node, txid)
    await wait_status(w.receiver, "cancelled", 1)
    [bodies] = bodies_by_id(w.receiver).values()
    assert [b["status"] for b in bodies] == ["not_confirmed", "cancelled"]
    assert "double-spent" in bodies[-1]["error"] and conflict in bodies[-1]["error"]


async def test_node_down_at_start_and_mid_run(world: World) -> None:
    w = world
    await w.proxy.stop()  # the node goes away right at the start
    await wait_ready(w.daemon, False, "node unavailable")
    assert (await w.daemon.get("/livez"))[0] == 200
    await w.proxy.start()
    await wait_ready(w.daemon, True)

    await w.proxy.stop()  # and again mid-run, while payments and blocks go on
    paid = [btc.pay(w.node, w.addresses[k].address, 10_000 + i) for i, k in enumerate(("p2pkh", "p2wsh"))]
    btc.mine(w.node, 3)
    await wait_ready(w.daemon, False, "node unavailable")
    await asyncio.sleep(5.0)  # an outage of some seconds: the daemon keeps running and retrying
    assert w.daemon.proc is not None and w.daemon.proc.poll() is None
    await w.proxy.start()
    await wait_status(w.receiver, "confirmed", 2)
    await wait_ready(w.daemon, True)
    _code, status = await w.daemon.get("/status")
    chain = status["chains"]["bitcoin"]
    assert chain["processed_height"] == chain["node_height"] == btc.height(w.node)
    assert {b[-1]["transactions"][0]["txid"] for b in bodies_by_id(w.receiver).values()} == set(paid)
