"""Running as a service: systemd's notify protocol (READY, STATUS, WATCHDOG) over a socket the test binds
itself, the watchdog stopping for a wedged follower but not for a node outage, and live reload on SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devnet import evm_tools as evm
from devnet.anvil import AnvilNode
from devnet.receiver import Receiver
from tests.daemon_process import DaemonProcess, free_port, write_config
from watcher.config import load_config
from watcher.daemon import Daemon
from watcher.notify import Notifier

KEY, SECRET = "svc-key", "svc-secret"
RPC_TIMEOUT_S = 0.25
STEP_BUDGET_S = 5 + 20 * RPC_TIMEOUT_S  # Follower._step_budget_s


def base_config(
    tmp: Path, rpc_url: str, callback_url: str, addresses: list[dict[str, str]]
) -> dict[str, Any]:
    return {
        "network": "regtest",
        "database": str(tmp / "watcher.sqlite3"),
        "status": {"listen": f"127.0.0.1:{free_port()}"},
        "log": {"format": "json", "level": "info"},
        "merchant": {"callback_url": callback_url, "key": KEY, "secret": SECRET, "timeout_s": 5,
                     "retry_schedule_min": [0.01, 0.02]},
        "chains": {"ethereum": {"adapter": "evm", "rpc_url": rpc_url, "chain_id": 31337,
                                "poll_interval_s": 0.1, "timeout_s": RPC_TIMEOUT_S,
                                "currencies": {"ETH": {"min_confirmations": 1}}}},
        "addresses": addresses,
    }  # fmt: skip


class NotifySocket:
    """The datagram socket systemd would listen on; collects what the daemon sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []
        # Read as systemd does, as soon as a datagram arrives (the socket's queue holds only ~10).
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self.drain)

    def drain(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()

    def pings_since(self, index: int) -> int:
        return sum(1 for m in self.drain()[index:] if m.get("WATCHDOG") == "1")

    def last_status(self) -> str:
        statuses = [m["STATUS"] for m in self.drain() if "STATUS" in m]
        return statuses[-1] if statuses else ""


@pytest.fixture
def node() -> Iterator[AnvilNode]:
    with AnvilNode() as n:
        yield n


@contextlib.asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(daemon.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Any, timeout_s: float, what: str, log: Any = None) -> None:
    """Wait for `predicate`; on a time-out, fail with the daemon's log (`log`, a DaemonProcess) if given."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            tail = f"\ndaemon log:\n{log.log()}" if log is not None else ""
            raise AssertionError(f"timed out waiting for {what}{tail}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def systemd(tmp_path: Path) -> AsyncIterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


async def test_ready_status_and_watchdog_and_wedged_follower(
    node: AnvilNode, tmp_path: Path, systemd: NotifySocket
) -> None:
    config_path = write_config(
        tmp_path / "c.yaml", base_config(tmp_path, node.url, "http://127.0.0.1:9/cb", [])
    )
    notifier = Notifier({"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "200000"})
    assert notifier.watchdog_interval_s == 0.1
    daemon = Daemon(load_config(str(config_path)), notifier)
    async with running(daemon):
        await until(lambda: any(m.get("READY") == "1" for m in systemd.drain()), 20, "READY=1")
        await until(lambda: "ethereum: height" in systemd.last_status(), 20, "STATUS with the height")
        await until(lambda: systemd.pings_since(0) >= 3, 10, "WATCHDOG=1 pings")

        follower = daemon.followers[0]
        entered = asyncio.Event()

        async def wedged() -> bool:
            entered.set()
            await asyncio.Event().wait()  # never returns: a follower stuck on something that has no timeout
            return False

        follower.step = wedged  # type: ignore[method-assign]
        # The follower may first finish a retry back-off (it beats through it); then it wedges.
        async with asyncio.timeout(90):
            await entered.wait()
        await asyncio.sleep(STEP_BUDGET_S + 1)
        mark = len(systemd.drain())
        await asyncio.sleep(1.0)
        assert systemd.pings_since(mark) == 0, "the watchdog must stop while a follower is wedged"
        assert "STALLED: follower:ethereum" in systemd.last_status()


async def test_node_outage_keeps_the_watchdog_going(
    node: AnvilNode, tmp_path: Path, systemd: NotifySocket
) -> None:
    config_path = write_config(
        tmp_path / "c.yaml", base_config(tmp_path, node.url, "http://127.0.0.1:9/cb", [])
    )
    notifier = Notifier({"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "200000"})
    daemon = Daemon(load_config(str(config_path)), notifier)
    async with running(daemon):
        await until(lambda: "ethereum: height" in systemd.last_status(), 20, "STATUS with the height")
        node.stop()
        await until(lambda: "node unavailable" in systemd.last_status(), 20, "STATUS naming the outage")
        mark = len(systemd.drain())
        await asyncio.sleep(8.0)  # longer than a step's budget: the retrying loop keeps beating
        assert systemd.pings_since(mark) >= 20
        assert "STALLED" not in systemd.last_status()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver(key=KEY, secret=SECRET) as rx:
        yield rx


async def test_sighup_adds_an_address_and_refuses_a_broken_file(
    node: AnvilNode, receiver: Receiver, tmp_path: Path
) -> None:
    acct = evm.accounts(node.url)
    first = [{"currency": "ETH", "address": acct[1], "foreign_id": "first"}]
    config = base_config(tmp_path, node.url, receiver.url, first)
    config_path = write_config(tmp_path / "c.yaml", config)
    status_port = int(config["status"]["listen"].rsplit(":", 1)[1])
    daemon = DaemonProcess(config_path, status_port, tmp_path / "daemon.log")
    daemon.start()
    try:
        await daemon.wait_live()
        await until_ready(daemon)
        config["addresses"].append({"currency": "ETH", "address": acct[2], "foreign_id": "added-live"})
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        pid = daemon.proc.pid  # type: ignore[union-attr]
        os.kill(pid, signal.SIGHUP)
        await until(lambda: "config_reloaded" in daemon.log(), 20, "config_reloaded in the log")
        evm.send_eth(node.url, acct[0], acct[2], 12345)
        await receiver.wait_for(lambda r: any(x.body["crypto_address"]["foreign_id"] == "added-live"
                                              for x in r.delivered), 30)  # fmt: skip

        config_path.write_text("network: regtest\nchains: [this is not a mapping\n")
        os.kill(pid, signal.SIGHUP)
        await until(lambda: "config_reload_refused" in daemon.log(), 20, "config_reload_refused in the log")
        assert daemon.proc is not None and daemon.proc.poll() is None  # still running, old config kept
        evm.send_eth(node.url, acct[0], acct[1], 777)
        await receiver.wait_for(lambda r: any(x.body["crypto_address"]["foreign_id"] == "first"
                                              for x in r.delivered), 30)  # fmt: skip
        assert daemon.proc.pid == pid
    finally:
        assert daemon.stop() == 0


async def until_ready(daemon: DaemonProcess) -> None:
    for _ in range(200):
        if (await daemon.get("/readyz"))[0] == 200:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(daemon.log())


async def test_metrics_parse_with_the_expected_series(
    node: AnvilNode, receiver: Receiver, tmp_path: Path
) -> None:
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    acct = evm.accounts(node.url)
    config = base_config(
        tmp_path, node.url, receiver.url, [{"currency": "ETH", "address": acct[1], "foreign_id": "m"}]
    )
    config_path = write_config(tmp_path / "c.yaml", config)
    status_port = int(config["status"]["listen"].rsplit(":", 1)[1])
    daemon = DaemonProcess(config_path, status_port, tmp_path / "daemon.log")
    daemon.start()
    try:
        await daemon.wait_live()
        await until_ready(daemon)
        txid = evm.send_eth(node.url, acct[0], acct[1], 5)
        evm.mine(node.url, 1)
        await receiver.wait_for(lambda r: any(x.body["status"] == "confirmed" for x in r.delivered), 30)
        await asyncio.sleep(0.3)  # the delivery is committed in the dispatcher's next batch
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{status_port}/metrics") as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
                text = await r.text()
    finally:
        assert daemon.stop() == 0
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    names = {name for name, _ in samples}
    for expected in (
        "deposit_watcher_chain_node_height", "deposit_watcher_chain_processed_height",
        "deposit_watcher_chain_lag_blocks", "deposit_watcher_chain_head_age_seconds",
        "deposit_watcher_chain_up",
        "deposit_watcher_chain_reorgs_total", "deposit_watcher_rpc_requests_total",
        "deposit_watcher_rpc_request_duration_seconds_bucket", "deposit_watcher_deposits",
        "deposit_watcher_outbox_entries", "deposit_watcher_callback_attempts_total",
        "deposit_watcher_callback_delivery_latency_seconds_count", "deposit_watcher_build_info",
    ):  # fmt: skip
        assert expected in names, expected
    assert samples[("deposit_watcher_deposits", (("currency", "ETH"), ("status", "confirmed")))] == 1
    assert samples[("deposit_watcher_callback_attempts_total", (("outcome", "delivered"),))] >= 1
    assert samples[("deposit_watcher_chain_up", (("chain", "ethereum"),))] == 1
    assert any(n == "deposit_watcher_rpc_requests_total" and ("method", "eth_getBlockByNumber") in labels
               for n, labels in samples)  # fmt: skip
    for _, labels in samples:  # no address or txid in any label
        assert not any(value.lower() in (acct[1].lower(), txid.lower()) for _, value in labels)


def cli(*args: str) -> tuple[int, str, str]:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "watcher", *args], capture_output=True, text=True, timeout=120
    )
    return done.returncode, done.stdout, done.stderr


async def test_rescan_finds_an_old_deposit_exactly_once(
    node: AnvilNode, receiver: Receiver, tmp_path: Path
) -> None:
    import json

    acct = evm.accounts(node.url)
    start = evm.head_height(node.url) + 1
    config = base_config(
        tmp_path, node.url, receiver.url, [{"currency": "ETH", "address": acct[1], "foreign_id": "a"}]
    )
    config["chains"]["ethereum"]["start_height"] = start
    config_path = write_config(tmp_path / "c.yaml", config)
    status_port = int(config["status"]["listen"].rsplit(":", 1)[1])
    old_payment = evm.send_eth(node.url, acct[0], acct[2], 4242)  # to an address not watched yet
    daemon = DaemonProcess(config_path, status_port, tmp_path / "daemon.log")
    daemon.start()
    try:
        await daemon.wait_live()
        await until_ready(daemon)
        evm.mine(node.url, 2)
        await until_ready(daemon)
        config["addresses"].append({"currency": "ETH", "address": acct[2], "foreign_id": "late"})
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        os.kill(daemon.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
        await until(lambda: "config_reloaded" in daemon.log(), 20, "config_reloaded", daemon)
        assert not receiver.delivered  # the daemon does not look back by itself

        code, out, err = cli("rescan", "--config", str(config_path), "--chain", "ethereum",
                             "--from-height", str(start), "--json")  # fmt: skip
        assert code == 0, err
        assert json.loads(out)["new_deposits"] == 1
        code, out, _ = cli("rescan", "--config", str(config_path), "--chain", "ethereum",
                           "--from-height", str(start), "--json")  # fmt: skip
        assert code == 0 and json.loads(out)["new_deposits"] == 0  # a second run duplicates nothing
        await receiver.wait_for(lambda r: len(r.delivered) >= 1, 30)
        await asyncio.sleep(1.0)
        got = receiver.delivered[0]
        assert got.body["status"] == "confirmed" and got.body["transactions"][0]["txid"] == old_payment
        # At least once: a slow answer may be delivered again, always as the same bytes.
        assert all(r.raw == got.raw for r in receiver.delivered)
        delivered_before = len(receiver.delivered)

        code, out, _ = cli("deposits", "--config", str(config_path), "--json")
        [row] = json.loads(out)
        assert (
            code == 0
            and row["txid"] == old_payment
            and row["amount"] == "4242"
            and row["foreign_id"] == "late"
        )
        code, out, _ = cli("resend", "--config", str(config_path), str(row["id"]), "--json")
        assert code == 0 and json.loads(out)["status"] == "confirmed"
        await receiver.wait_for(lambda r: len(r.delivered) > delivered_before, 30)
        assert all(r.raw == got.raw for r in receiver.delivered)
        for _ in range(50):  # the delivery is committed in the dispatcher's next batch
            code, out, _ = cli("callbacks", "--config", str(config_path), "--json")
            entries = json.loads(out)
            if {e["state"] for e in entries} == {"delivered"}:
                break
            await asyncio.sleep(0.1)
        assert code == 0 and {e["state"] for e in entries} == {"delivered"} and len(entries) == 2
        code, out, _ = cli("status", "--config", str(config_path), "--json")
        assert code == 0 and json.loads(out)["chains"]["ethereum"]["lag"] == 0
        code, _, err = cli("rescan", "--config", str(config_path), "--chain", "nope", "--from-height", "0")
        assert code == 1 and "no chain 'nope'" in err
    finally:
        assert daemon.stop() == 0


async def test_planned_stop_tells_systemd_and_returns_without_cancelling(
    node: AnvilNode, tmp_path: Path, systemd: NotifySocket
) -> None:
    """SIGTERM's path (`request_stop`): STOPPING=1 at once, then `run` returns by itself once the
    dispatcher has drained; a second request is refused, so the signal handler cancels instead."""
    config_path = write_config(
        tmp_path / "c.yaml", base_config(tmp_path, node.url, "http://127.0.0.1:9/cb", [])
    )
    daemon = Daemon(load_config(str(config_path)), Notifier({"NOTIFY_SOCKET": str(systemd.path)}))
    assert not daemon.request_stop("SIGTERM"), "nothing runs yet: a stop then cancels at once"
    task = asyncio.create_task(daemon.run())
    try:
        await until(lambda: any(m.get("READY") == "1" for m in systemd.drain()), 20, "READY=1")
        assert daemon.request_stop("SIGTERM")
        assert not daemon.request_stop("SIGTERM"), "a second signal must cancel at once"
        await until(lambda: any(m.get("STOPPING") == "1" for m in systemd.drain()), 5, "STOPPING=1")
        async with asyncio.timeout(30):
            await task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
