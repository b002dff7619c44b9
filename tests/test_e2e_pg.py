"""End to end on PostgreSQL: the real daemon process with `database.url`, a real anvil, a real receiver.

Deposits to a watched address become signed callbacks, not_confirmed then confirmed; a daemon killed with
SIGKILL while the merchant fails, started again on the same database, delivers each deposit once, with
its id. The store's own tests run on both backends elsewhere (test_store.py, test_follower.py, ...).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devnet import evm_tools as evm
from devnet.anvil import AnvilNode
from devnet.receiver import Receiver
from tests.daemon_process import DaemonProcess, free_port, write_config
from watcher.store import Store

KEY, SECRET = "shop-key", "pg-e2e-secret"
MIN_CONF = 3


@dataclass
class World:
    url: str
    database: str
    receiver: Receiver
    daemon: DaemonProcess
    acct: list[str]


@pytest.fixture
async def world(anvil: AnvilNode, pg_url: str, tmp_path: Path) -> AsyncIterator[World]:
    acct = evm.accounts(anvil.url)
    status_port = free_port()
    async with Receiver(key=KEY, secret=SECRET) as rx:
        config: dict[str, Any] = {
            "network": "regtest",
            "database": {"url": pg_url},
            "status": {"listen": f"127.0.0.1:{status_port}"},
            "log": {"format": "json", "level": "debug"},
            "merchant": {
                "callback_url": rx.url, "key": KEY, "secret": SECRET, "timeout_s": 2,
                "retry_schedule_min": [0.005, 0.01, 0.02, 0.04, 0.08],
            },
            "chains": {
                "ethereum": {
                    "adapter": "evm", "rpc_url": anvil.url, "chain_id": 31337, "poll_interval_s": 0.2,
                    "start_height": evm.head_height(anvil.url) + 1,
                    "currencies": {"ETH": {"min_confirmations": MIN_CONF}},
                }
            },
            "addresses": [
                {"currency": "ETH", "address": acct[1], "foreign_id": "customer-a"},
                {"currency": "ETH", "address": acct[2], "foreign_id": "customer-b"},
            ],
        }  # fmt: skip
        config_path = write_config(tmp_path / "watcher.yaml", config)
        daemon = DaemonProcess(config_path, status_port, tmp_path / "daemon.log")
        daemon.start()
        try:
            await daemon.wait_live()
            yield World(anvil.url, pg_url, rx, daemon, acct)
        finally:
            code = daemon.stop()
            assert code == 0, f"daemon exit code {code}:\n{daemon.log()}"


def _deliveries(rx: Receiver, status: str) -> list[dict[str, Any]]:
    return [r.body for r in rx.delivered if r.body["status"] == status]


async def test_a_deposit_becomes_signed_callbacks_from_a_postgresql_store(world: World) -> None:
    w = world
    txid = evm.send_eth(w.url, w.acct[0], w.acct[1], 1_500_000_000_000_000_001)  # mined at once
    await w.receiver.wait_for(lambda r: len(_deliveries(r, "not_confirmed")) >= 1, 30)
    evm.mine(w.url, MIN_CONF - 1)  # its own block is the first confirmation
    await w.receiver.wait_for(lambda r: len(_deliveries(r, "confirmed")) >= 1, 30)
    [first] = _deliveries(w.receiver, "not_confirmed")
    [confirmed] = _deliveries(w.receiver, "confirmed")
    assert first["id"] == confirmed["id"] and confirmed["transactions"][0]["txid"] == txid
    assert confirmed["currency_sent"]["amount"] == "1.500000000000000001"
    assert confirmed["crypto_address"]["foreign_id"] == "customer-a"
    assert confirmed["transactions"][0]["confirmations"] == str(MIN_CONF)
    assert all(r.signature_ok and json.loads(r.raw) == r.body for r in w.receiver.delivered)
    code, status = await w.daemon.get("/status")
    assert code == 200 and status["deposits"] == {"confirmed": 1}
    assert (await w.daemon.get("/readyz"))[0] == 200
    assert w.database.split("/")[-1] in w.daemon.log()  # the database is named in the daemon's log
    store = await Store.open(w.database)
    try:
        [deposit] = await store.deposits()
        assert (deposit.id, deposit.status, deposit.confirmations) == (first["id"], "confirmed", MIN_CONF)
    finally:
        await store.close()


async def test_sigkill_before_delivery_then_restart_delivers_once_per_id(world: World) -> None:
    w = world
    w.receiver.plan([500] * 1000)  # the merchant is failing: callbacks stay in the outbox
    paid = evm.send_eth(w.url, w.acct[0], w.acct[1], 42)
    evm.mine(w.url, MIN_CONF)
    await w.receiver.wait_for(lambda r: len(r.requests) >= 1, 30)
    w.daemon.kill()
    w.receiver.clear_plan()
    evm.send_eth(w.url, w.acct[0], w.acct[2], 43)  # paid while the daemon was down
    evm.mine(w.url, MIN_CONF)
    w.daemon.start()
    await w.daemon.wait_live()
    await w.receiver.wait_for(lambda r: len(_deliveries(r, "confirmed")) >= 2, 30)
    ids_per_tx: dict[str, set[int]] = {}
    for r in w.receiver.requests:
        if r.body:
            ids_per_tx.setdefault(r.body["transactions"][0]["txid"], set()).add(r.body["id"])
    assert len(ids_per_tx) == 2 and all(len(ids) == 1 for ids in ids_per_tx.values()), ids_per_tx
    assert paid in ids_per_tx
    store = await Store.open(w.database)
    try:
        assert sorted(d.status for d in await store.deposits()) == ["confirmed", "confirmed"]
    finally:
        await store.close()


def test_a_daemon_whose_database_does_not_answer_fails_to_start_showing_no_password(tmp_path: Path) -> None:
    """No server at the URL: the daemon logs one start_failed line naming the database (never the
    password of its password_file) and exits non-zero; the service manager starts it again later."""
    (tmp_path / "pgpass").write_text("hunter2-secret")
    url = f"postgresql://watcher@127.0.0.1:{free_port()}/deposits"
    config: dict[str, Any] = {
        "network": "regtest",
        "database": {"url": url, "password_file": "pgpass"},
        "status": {"listen": f"127.0.0.1:{free_port()}"},
        "log": {"format": "json", "level": "debug"},
        "merchant": {"callback_url": "http://127.0.0.1:1/cb", "key": KEY, "secret": SECRET},
        "chains": {
            "ethereum": {"adapter": "evm", "rpc_url": "http://127.0.0.1:1", "currencies": {"ETH": {}}}
        },
    }
    daemon = DaemonProcess(write_config(tmp_path / "watcher.yaml", config), 0, tmp_path / "daemon.log")
    daemon.start()
    assert daemon.proc is not None
    code = daemon.proc.wait(timeout=60)
    log = daemon.log()
    assert code != 0 and "start_failed" in log and "cannot connect" in log and url in log
    assert "hunter2" not in log
