"""Coinskro's own webhook handlers, run unchanged behind the documented signature check, receive real
webhooks from the real daemon following real anvil and bcoin nodes (issue 11's first acceptance point).

One daemon for the module; each handler in turn (they all listen on port 3000) becomes the integration's
callback URL through a SIGHUP reload. For each, a payment is made through the API and paid on the node;
the handler prints its own `Payment … completed for $…` line for it. Then the exact bytes the daemon
sent, read from its store, are tampered with and posted with the daemon's signature: the check in front
refuses them (401) and the handler never sees them. (tests/test_seed_handlers.py runs the same handlers
against bodies built by watcher.coinskro, with every kind of forgery.)
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devnet import evm_tools as evm
from devnet.anvil import AnvilNode
from devnet.bcoin import BcoinNode
from tests.daemon_process import DaemonProcess, free_port, write_config
from tests.daemon_world import ApiClient, daemon_config, regtest_chains, wait_ready
from tests.seed_servers import HANDLERS, run_seed_handler
from tests.test_derivation import ROOT_FINGERPRINT, account
from tests.test_seed_handlers import post
from watcher import coinskro
from watcher.apikeys import new_api_key

SHOP = "3d4e5f60-7a8b-4c9d-8eaf-b0c1d2e3f4a5"
API_KEY, API_HASH = new_api_key(live=False)
SECRET = "seed-handlers-secret"
MIN_CONF = 2
WPKH = f"wpkh([{ROOT_FINGERPRINT}/84h/1h/0h]{account('m/84h/1h/0h', 'tpub')}/0/*)"


def _config(
    anvil: AnvilNode, bcoin: BcoinNode, callback_url: str, db: Path, status_port: int, api_port: int
) -> dict[str, Any]:
    integration = {
        "id": SHOP,
        "callback": {"callback_url": callback_url, "format": "coinskro", "secret": SECRET,
                     "timeout_s": 5, "retry_schedule_min": [0.01, 0.02, 0.05]},
        "api_keys": [API_HASH.line()],
        "public_keys": {"bitcoin": WPKH, "ethereum": account("m/44h/60h/0h")},
    }  # fmt: skip
    chains = regtest_chains(anvil, bcoin, MIN_CONF, timeout_s=5)
    return daemon_config(db, status_port, api_port, [integration], chains)


class Shop:
    def __init__(self, daemon: DaemonProcess, config_path: Path, api_port: int, db: Path) -> None:
        self.daemon, self.config_path, self.db = daemon, config_path, db
        self.api = ApiClient(api_port, API_KEY)

    async def call(self, method: str, path: str, body: Any = None, key: str | None = None) -> tuple[int, Any]:
        """The API with the shop's key; `key`: the request's Idempotency-Key."""
        return await self.api.call(method, path, body, idempotency_key=key)

    async def point_callbacks_at(self, url: str) -> None:
        """Change the integration's callback URL with a SIGHUP, as an operator would."""
        config = yaml.safe_load(self.config_path.read_text())
        config["integrations"][0]["callback"]["callback_url"] = url
        reloads = self.daemon.log_path.read_text().count('"config_reloaded"')
        write_config(self.config_path, config)
        assert self.daemon.proc is not None
        self.daemon.proc.send_signal(signal.SIGHUP)
        for _ in range(150):
            if self.daemon.log_path.read_text().count('"config_reloaded"') > reloads:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"no reload after SIGHUP\n{self.daemon.log()}")

    def sent_bodies(self, reference: str) -> list[bytes]:
        """The exact bytes of the payment's webhooks, as the daemon stored (and sent) them."""
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            rows = conn.execute(
                "SELECT o.body FROM outbox o JOIN payments p ON p.id = o.payment_id WHERE p.reference = ?"
                " ORDER BY o.id",
                (reference,),
            ).fetchall()
        return [bytes(r[0]) for r in rows]


@pytest.fixture
async def shop(anvil: AnvilNode, bcoin: BcoinNode, tmp_path: Path) -> AsyncIterator[Shop]:
    status_port, api_port = free_port(), free_port()
    db = tmp_path / "watcher.sqlite3"
    # Nothing listens at the first callback URL; each handler's is given by a reload.
    config = _config(anvil, bcoin, "http://127.0.0.1:9/", db, status_port, api_port)
    path = write_config(tmp_path / "c.yaml", config)
    daemon = DaemonProcess(path, status_port, tmp_path / "daemon.log")
    daemon.start()
    try:
        await daemon.wait_live()
        await wait_ready(daemon)
        yield Shop(daemon, path, api_port, db)
    finally:
        assert daemon.stop() == 0, daemon.log()


async def test_coinskros_own_handlers_print_each_payment_completed_from_the_daemon(
    shop: Shop, anvil: AnvilNode, tmp_path: Path
) -> None:
    sender = evm.accounts(anvil.url)[0]
    for n, handler in enumerate(HANDLERS):
        workdir = tmp_path / handler.name
        workdir.mkdir()
        with run_seed_handler(handler, SECRET, workdir) as server:
            await shop.point_callbacks_at(server.url)
            amount_wei = 10**15 * (n + 1) + 1
            status, made = await shop.call(
                "POST", "/v1/payments", {"amount": f"0.00{n + 1}000000000000001", "currency": "ETH"},
                key=f"order-{handler.name}",
            )  # fmt: skip
            assert status == 201, made
            reference = made["payment_reference"]
            evm.send_eth(anvil.url, sender, made["address"], amount_wei)
            evm.mine(anvil.url, MIN_CONF)
            lines = await asyncio.to_thread(server.wait_printed, 1, 60.0)
            assert [line for line in lines if reference in line], (lines, server.outputs(), shop.daemon.log())
            for _ in range(100):
                status, found = await shop.call("GET", f"/v1/payments/{reference}")
                if any(a["http_status"] == 200 for a in found["attempts"]):
                    break
                await asyncio.sleep(0.1)
            assert found["status"] == "completed", found
            (sent,) = shop.sent_bodies(reference)
            assert json.loads(sent)["event"] == "payment_completed"
            # The daemon's own bytes, tampered with, under its own signature: refused before the handler.
            forged = sent.replace(b'"amount":0.00', b'"amount":9.00', 1)
            assert forged != sent
            printed = len(server.printed())
            status_code, _ = await asyncio.to_thread(post, server.url, forged, coinskro.headers(sent, SECRET))
            assert status_code == 401, server.outputs()
            await asyncio.sleep(0.3)
            assert len(server.printed()) == printed
