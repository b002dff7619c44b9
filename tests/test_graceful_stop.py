"""A planned stop sends nothing twice: on SIGTERM the daemon starts no new callback, lets the requests in
flight be answered, records them, and only then exits; after the restart it sends what was never sent
and nothing that was delivered.

The merchant here holds every request until the test releases it, so "in flight at the SIGTERM" is a
fact the test sets up, not a timing it hopes for. The daemon is the real process on a real SQLite file;
its chain points at a node nobody runs (only the dispatcher works), and the outbox is filled through
the store as the ledger fills it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.daemon_process import DaemonProcess, free_port, write_config
from watcher import dispatcher as dispatcher_module
from watcher.callbacks import KEY_HEADER, SIGNATURE_HEADER, verify
from watcher.config import MerchantConfig
from watcher.dispatcher import Dispatcher
from watcher.model import DepositStatus, OutboxState
from watcher.store import NewAddress, Store

KEY, SECRET = "shop-key", "shop-secret-graceful-stop"


class HoldingMerchant:
    """A merchant endpoint that verifies each callback and answers 200 only once released."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []  # every valid request, in arrival order
        self.answered: list[bytes] = []  # those that got their 200 written
        self.held = 0
        self.release = asyncio.Event()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> HoldingMerchant:
        app = web.Application()
        app.router.add_post("/callbacks", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/callbacks"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        signature = request.headers.get(SIGNATURE_HEADER, "")
        if request.headers.get(KEY_HEADER) != KEY or not verify(raw, SECRET, signature):
            return web.Response(status=403)
        self.bodies.append(raw)
        self.held += 1
        self._changed.set()
        try:
            await self.release.wait()
        finally:
            self.held -= 1
        self.answered.append(raw)
        self._changed.set()
        return web.Response(status=200, text="ok")

    async def wait(self, check: Any, timeout_s: float = 30.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not check():
                self._changed.clear()
                await self._changed.wait()


async def fill_outbox(database: Path, count: int) -> list[bytes]:
    """`count` deposits, each with one pending confirmed callback; their bodies."""
    store = await Store.open(str(database))
    await store.sync_addresses(
        "ethereum", [NewAddress("ethereum", "ETH", b"\x01" * 20, "0x01", "customer-1")]
    )
    bodies = []
    async with store.transaction() as tx:
        for n in range(count):
            deposit_id = await tx.insert_deposit(
                chain="ethereum", currency="ETH", address_id=1, txid=f"0x{n:064x}", tx_index=-1, amount=5,
                sender=None, nonce=None, inputs=(), now=1.0,
            )  # fmt: skip
            body = json.dumps({"id": deposit_id, "status": "confirmed"}).encode()
            await tx.enqueue_callback(deposit_id, DepositStatus.CONFIRMED, body, now=0.0)
            bodies.append(body)
    await store.close()
    return bodies


async def outbox(database: Path) -> dict[bytes, tuple[OutboxState, int]]:
    """Each callback body with its outbox state and the number of attempts recorded."""
    store = await Store.open(str(database))
    try:
        return {e.body: (e.state, len(await store.attempts(e.id))) for e in await store.outbox_entries()}
    finally:
        await store.close()


def config_file(tmp_path: Path, callback_url: str, *, concurrency: int, timeout_s: float) -> DaemonProcess:
    port = free_port()
    config = {
        "network": "regtest",
        "database": str(tmp_path / "watcher.sqlite3"),
        "status": {"listen": f"127.0.0.1:{port}"},
        "log": {"format": "json", "level": "info"},
        "merchant": {"callback_url": callback_url, "key": KEY, "secret": SECRET, "timeout_s": timeout_s,
                     "concurrency": concurrency, "retry_schedule_min": [0.01, 0.02]},
        "chains": {
            # A node nobody runs: the follower retries quietly; only the dispatcher works here.
            "ethereum": {"adapter": "evm", "rpc_url": f"http://127.0.0.1:{free_port()}",
                         "currencies": {"ETH": {"min_confirmations": 1}}},
        },
    }  # fmt: skip
    path = write_config(tmp_path / "watcher.yaml", config)
    return DaemonProcess(path, port, tmp_path / "daemon.log")


def events(daemon: DaemonProcess, name: str) -> list[dict[str, Any]]:
    found = []
    for line in daemon.log_path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") == name:
                found.append(record)
    return found


async def wait_event(daemon: DaemonProcess, name: str, timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := events(daemon, name):
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {name} in the log:\n{daemon.log()}")


async def exit_code(daemon: DaemonProcess, timeout_s: float = 30.0) -> int:
    assert daemon.proc is not None
    return await asyncio.to_thread(daemon.proc.wait, timeout_s)


async def test_sigterm_with_callbacks_in_flight_records_them_and_sends_none_twice(tmp_path: Path) -> None:
    async with HoldingMerchant() as merchant:
        daemon = config_file(tmp_path, merchant.url, concurrency=3, timeout_s=10)
        bodies = await fill_outbox(tmp_path / "watcher.sqlite3", 7)
        daemon.start()
        try:
            await merchant.wait(lambda: merchant.held == 3)  # three in flight, four waiting their turn
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGTERM)
            draining = await wait_event(daemon, "callbacks_draining")
            assert draining["in_flight"] == 3
            assert daemon.proc.poll() is None, "exited with requests in flight"
            merchant.release.set()  # the merchant answers after the stop began
            assert await exit_code(daemon) == 0, daemon.log()
        finally:
            daemon.stop()
        in_flight = merchant.bodies[:3]
        assert len(merchant.bodies) == 3, "a new request was started after the SIGTERM"
        assert [e["event"] for e in events(daemon, "callback_delivered")] == ["callback_delivered"] * 3
        drained = events(daemon, "callbacks_drained")[0]
        assert (drained["answered"], drained["cut"]) == (3, 0)
        stored = await outbox(tmp_path / "watcher.sqlite3")
        assert {b for b, (state, attempts) in stored.items() if state is OutboxState.DELIVERED} == set(
            in_flight
        )
        assert all(stored[b] == (OutboxState.DELIVERED, 1) for b in in_flight)
        assert all(stored[b] == (OutboxState.PENDING, 0) for b in bodies if b not in in_flight)

        # The restart sends the four never sent, and none of the three delivered.
        daemon.start()
        try:
            await merchant.wait(lambda: len(merchant.answered) == 7)
            await asyncio.sleep(0.5)  # a duplicate would come now
            assert daemon.stop() == 0, daemon.log()
        finally:
            daemon.stop()
        assert sorted(merchant.bodies) == sorted(bodies), "a callback was sent twice or never"
        stored = await outbox(tmp_path / "watcher.sqlite3")
        assert all(stored[b] == (OutboxState.DELIVERED, 1) for b in bodies)


async def test_sigterm_with_a_merchant_that_never_answers_ends_within_the_request_timeout(
    tmp_path: Path,
) -> None:
    """A merchant that hangs: the stop waits for the requests' own timeout, records them as failed
    attempts (retried on the schedule after the restart, as any timeout), and exits 0."""
    async with HoldingMerchant() as merchant:
        daemon = config_file(tmp_path, merchant.url, concurrency=2, timeout_s=1.5)
        await fill_outbox(tmp_path / "watcher.sqlite3", 2)
        daemon.start()
        try:
            await merchant.wait(lambda: merchant.held == 2)
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGTERM)
            assert await exit_code(daemon) == 0, daemon.log()
        finally:
            daemon.stop()
        drained = events(daemon, "callbacks_drained")[0]
        assert (drained["answered"], drained["cut"]) == (2, 0)
        stored = await outbox(tmp_path / "watcher.sqlite3")
        assert sorted(stored.values()) == [(OutboxState.PENDING, 1)] * 2  # one failed attempt each
        assert len(events(daemon, "callback_failed")) == 2


async def test_requests_longer_than_the_drain_bound_are_cut_and_stay_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drain is bounded (STOP_DRAIN_MAX_S, here shortened): a request still unanswered then is cut,
    has no result and stays pending, so it is sent again after the restart (at least once)."""
    monkeypatch.setattr(dispatcher_module, "STOP_DRAIN_MAX_S", 0.3)
    bodies = await fill_outbox(tmp_path / "watcher.sqlite3", 2)
    store = await Store.open(str(tmp_path / "watcher.sqlite3"))
    async with HoldingMerchant() as merchant:
        config = MerchantConfig(
            callback_url=merchant.url, key=KEY, secret=SECRET, timeout_s=30, concurrency=2
        )
        dispatcher = Dispatcher(store, config, asyncio.Event())
        running = asyncio.create_task(dispatcher.run())
        await merchant.wait(lambda: merchant.held == 2)
        dispatcher.stop()
        async with asyncio.timeout(10):
            await running
        assert not merchant.answered
    entries = {e.body: e for e in await store.outbox_entries()}
    assert set(entries) == set(bodies)
    assert [e.state for e in entries.values()] == [OutboxState.PENDING] * 2
    assert [await store.attempts(e.id) for e in entries.values()] == [[], []]
    await store.close()
