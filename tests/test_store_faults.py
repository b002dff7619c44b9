"""Store faults on real filesystems: the disk fills, or the database becomes read-only.

The database lives on a mount of its own, made by the test (root: CI runs as root too):
* a full disk: a tmpfs, filled with a file (SQLite: "database or disk is full"), emptied again;
* a read-only database: an ext4 image on a loop device, its database and WAL files made immutable
  (`chattr +i`; ext4 refuses writes even to files already open, SQLite: "disk I/O error"), then not.
  (A read-only remount, `mount -o remount,ro`, is what the kernel does to a failing disk, but it refuses
  one while a file is open for writing, "mount point is busy": the daemon always has its files open.)

The daemon must keep running, stop advancing (never a cursor move without its commit), say `store: ...`
on /readyz while writes fail, keep every callback result it could not record, and resume by itself once
the fault is gone, with every deposit delivered. Store.transaction() must roll back a transaction that
failed midway or at COMMIT and report the error that caused it, not the ROLLBACK's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devnet import evm_tools as evm
from devnet.anvil import AnvilNode
from devnet.receiver import Receiver
from tests.daemon_process import DaemonProcess, free_port, write_config
from watcher.config import MerchantConfig
from watcher.dispatcher import Dispatcher
from watcher.health import Health
from watcher.model import DepositStatus, OutboxState
from watcher.store import NewAddress, Store, ThreadTransaction
from watcher.supervisor import supervise

KEY, SECRET = "shop-key", "store-faults-secret"

# ============================================================================================ mounts


def run_root(*cmd: str, what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(
            f"{what} failed ({' '.join(cmd)}): {done.stderr.strip() or done.stdout.strip()}. These tests "
            "need root and a kernel that allows tmpfs and loop mounts (CI runs as root on such a machine)."
        )


def unmount(path: Path) -> None:
    for _ in range(50):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)  # a process that had files open there is still exiting
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "16M") -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    run_root("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path), what="mounting a tmpfs")
    try:
        yield path
    finally:
        unmount(path)


@contextlib.contextmanager
def ext4(path: Path, image: Path, size_mb: int = 64) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    run_root("mkfs.ext4", "-q", "-F", str(image), what="making an ext4 image")
    run_root("mount", "-o", "loop", str(image), str(path), what="mounting an ext4 image on a loop device")
    try:
        yield path
    finally:
        unmount(path)
        image.unlink()


def fill(directory: Path) -> Path:
    """Fill the filesystem of `directory` to the last byte with one file; returns it (delete to undo)."""
    path = directory / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        chunk = 1 << 20
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    finally:
        os.close(fd)
    return path


def immutable(database: Path, on: bool) -> None:
    """The database and its WAL refuse every write (ext4 checks even files already open), or not.

    The -shm file is left alone: SQLite writes it through a shared mapping, and ext4 would answer those
    writes with SIGBUS; a read-only disk never gets that far either, the WAL write fails first.
    """
    files = [str(database), f"{database}-wal"]
    run_root("chattr", "+i" if on else "-i", *files, what="chattr")


# ==================================================================================== Store alone


async def new_store(path: Path) -> Store:
    store = await Store.open(str(path))
    await store.sync_addresses("eth", [NewAddress("eth", "ETH", b"\x01" * 20, "0xabc", "customer-1")])
    return store


async def insert_deposit(store: Store, txid: str, padding: int = 0) -> int:
    async with store.transaction() as tx:
        deposit_id = await tx.insert_deposit(
            chain="eth", currency="ETH", address_id=1, txid=txid, tx_index=-1, amount=5, sender=None,
            nonce=None, inputs=(), now=1.0,
        )  # fmt: skip
        # A body large enough to outgrow SQLite's page cache: written to the WAL before COMMIT.
        body = b'{"id":%d,"status":"confirmed","pad":"%s"}' % (deposit_id, b"x" * padding)
        await tx.enqueue_callback(deposit_id, DepositStatus.CONFIRMED, body, now=0.0)
    return deposit_id


async def test_a_write_failing_midway_rolls_back_whole_and_names_its_cause(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "db") as mount:
        store = await new_store(mount / "watcher.sqlite3")
        try:
            await insert_deposit(store, "0xbefore")
            filler = fill(mount)
            async with store.transaction() as tx:
                await tx.execute("PRAGMA cache_size = 10")  # spill to the WAL midway, not at COMMIT
            with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
                await insert_deposit(store, "0xmidway", padding=200_000)
            assert store.write_error == "database or disk is full"
            with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
                await insert_deposit(store, "0xat-commit")  # fits the cache: fails at COMMIT
            async with store.transaction() as tx:  # a transaction that writes nothing still works...
                await tx.schema_version()
            assert store.write_error == "database or disk is full"  # ...and proves nothing
            filler.unlink()
            await insert_deposit(store, "0xafter")
            assert store.write_error is None
            assert [d.txid for d in await store.deposits()] == ["0xbefore", "0xafter"]
            assert [e.deposit_id for e in await store.outbox_entries()] == [1, 2]  # nothing half-written
            assert await store.integrity_check() == "ok"
        finally:
            await store.close()


async def test_a_failed_commit_is_rolled_back_and_the_store_goes_on(tmp_path: Path) -> None:
    """SQLite keeps a transaction open when COMMIT fails with SQLITE_BUSY or on a deferred constraint; it
    must be rolled back, or every later BEGIN fails ("cannot start a transaction within a transaction")."""
    store = await new_store(tmp_path / "watcher.sqlite3")
    try:
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            async with store.transaction() as tx:
                await tx.execute("PRAGMA defer_foreign_keys = ON")  # checked at COMMIT, which fails
                await tx.execute(
                    "INSERT INTO outbox (deposit_id, status, body, state, created_at, next_attempt_at)"
                    " VALUES (999, 'confirmed', x'00', 'pending', 0, 0)"
                )
        await insert_deposit(store, "0xnext")
        assert [e.deposit_id for e in await store.outbox_entries()] == [1]
    finally:
        await store.close()


def derived_row(n: int) -> tuple[NewAddress, str, int, str]:
    address = NewAddress("eth", "ETH", n.to_bytes(20, "big"), f"0x{n:040x}", f"c-{n}")
    return (address, "key", n, f"m/0/{n}")


async def test_a_whole_transaction_on_the_writer_thread_is_all_or_nothing(tmp_path: Path) -> None:
    """Store.write (the takes' one round trip): a failure inside it, a COMMIT that fails and a full disk
    all leave nothing written, the cause named, and the store writing again afterwards."""

    def fail_midway(tx: ThreadTransaction) -> None:
        tx.insert_derived([derived_row(2)], 1.0, 0)
        raise RuntimeError("crash before commit")

    def dangling_at_commit(tx: ThreadTransaction) -> None:
        tx.insert_derived([derived_row(3)], 1.0, 0)
        tx._direct.execute("PRAGMA defer_foreign_keys = ON")  # checked at COMMIT, which fails
        tx._direct.execute(
            "INSERT INTO outbox (deposit_id, status, body, state, created_at, next_attempt_at)"
            " VALUES (999, 'confirmed', x'00', 'pending', 0, 0)"
        )

    with tmpfs(tmp_path / "db") as mount:
        store = await new_store(mount / "watcher.sqlite3")
        try:
            with pytest.raises(RuntimeError, match="crash before commit"):
                await store.write(fail_midway)
            with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
                await store.write(dangling_at_commit)
            filler = fill(mount)
            with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
                for first in range(10, 100_000, 64):  # until the WAL can grow no more
                    rows = [derived_row(n) for n in range(first, first + 64)]
                    await store.write(lambda tx, rows=rows: tx.insert_derived(rows, 1.0, 0))
            assert store.write_error == "database or disk is full"
            filler.unlink()
            issued = await store.write(lambda tx: tx.insert_derived([derived_row(1)], 1.0, 0))
            assert store.write_error is None and [a.address for a in issued] == [f"0x{1:040x}"]
            keys = [("ETH", n.to_bytes(20, "big")) for n in (1, 2, 3)]
            found = await store.write(lambda tx: tx.addresses_by_keys(keys))
            assert [a.address for a in found.values()] == [f"0x{1:040x}"]  # nothing of the failed ones
            assert await store.integrity_check() == "ok"
        finally:
            await store.close()


# ====================================================================================== dispatcher


async def test_dispatcher_keeps_the_results_it_cannot_record_and_loses_no_callback(tmp_path: Path) -> None:
    """A 2xx whose record cannot be written stays a 2xx: kept, recorded once the disk has room, not sent
    again. A request in flight when the failing write stopped the dispatcher is sent again after the
    restart (at least once), never left waiting forever."""
    with tmpfs(tmp_path / "db") as mount:
        store = await new_store(mount / "watcher.sqlite3")
        health = Health()
        async with Receiver(key=KEY, secret=SECRET, slow_answer_s=3.0) as rx:
            first = await insert_deposit(store, "0xfirst")
            second = await insert_deposit(store, "0xsecond")
            rx.plan([200, "timeout"])  # first: delivered; second: still waiting when the flush fails
            merchant = MerchantConfig(
                rx.url, KEY, SECRET, timeout_s=10, retry_schedule_min=(0.01,), concurrency=1
            )
            dispatcher = Dispatcher(store, merchant, asyncio.Event())
            filler = fill(mount)
            task = asyncio.create_task(supervise("dispatcher", dispatcher.run, health))
            try:
                await rx.wait_for(lambda r: len(r.requests) >= 2, timeout_s=10)
                for _ in range(100):  # the flush of the first result fails: the dispatcher stops
                    if store.write_error is not None:
                        break
                    await asyncio.sleep(0.05)
                assert store.write_error == "database or disk is full"
                assert {e.state for e in await store.outbox_entries()} == {OutboxState.PENDING}
                filler.unlink()
                for _ in range(300):
                    states = {e.deposit_id: e.state for e in await store.outbox_entries()}
                    if set(states.values()) == {OutboxState.DELIVERED}:
                        break
                    await asyncio.sleep(0.05)
                assert states == {first: OutboxState.DELIVERED, second: OutboxState.DELIVERED}, rx.summary()
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await store.close()
        sent = [r.body["id"] for r in rx.requests]
        assert sent.count(first) == 1  # its 2xx was kept and recorded, not sent again
        assert sent.count(second) == 2  # cut off in flight, sent again after the restart
        assert store.write_error is None


# ============================================================================== the real daemon


def stored_cursor(database: Path) -> int | None:
    """The committed cursor height, read as any other process would (read-only, committed data)."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as db:
        row = db.execute("SELECT cursor_height FROM chains WHERE name = 'ethereum'").fetchone()
    return None if row is None else int(row[0])


def outbox_states(database: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as db:
        return dict(db.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall())


def daemon_config(
    database: Path, node: AnvilNode, rx: Receiver, status_port: int, start: int
) -> dict[str, Any]:
    acct = evm.accounts(node.url)
    return {
        "network": "regtest",
        "database": str(database),
        "status": {"listen": f"127.0.0.1:{status_port}"},
        "log": {"format": "json", "level": "info"},
        "merchant": {
            "callback_url": rx.url, "key": KEY, "secret": SECRET, "timeout_s": 5,
            "retry_schedule_min": [0.005 * (i + 1) for i in range(40)],
        },
        "chains": {
            "ethereum": {
                "adapter": "evm", "rpc_url": node.url, "chain_id": 31337, "poll_interval_s": 0.2,
                "start_height": start, "currencies": {"ETH": {"min_confirmations": 2}},
            }
        },
        "addresses": [
            {"currency": "ETH", "address": acct[i], "foreign_id": f"customer-{i}"} for i in (1, 2, 3)
        ],
    }  # fmt: skip


def confirmed_txids(rx: Receiver) -> set[str]:
    return {r.body["transactions"][0]["txid"] for r in rx.delivered if r.body.get("status") == "confirmed"}


async def until(what: str, check: Any, timeout_s: float = 30.0, daemon: DaemonProcess | None = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s: {what}\n{daemon.log() if daemon else ''}")


@pytest.fixture
def node() -> Iterator[AnvilNode]:
    with AnvilNode() as n:
        yield n


FAULTS = {
    # fault name: (the mount, how the fault starts and ends, what SQLite says)
    "disk full": "database or disk is full",
    "read-only database": "disk I/O error",
}


@contextlib.contextmanager
def store_mount(fault: str, tmp_path: Path) -> Iterator[Path]:
    if fault == "disk full":
        with tmpfs(tmp_path / "db") as mount:
            yield mount
    else:
        with ext4(tmp_path / "db", tmp_path / "ext4.img") as mount:
            yield mount


@contextlib.contextmanager
def injected(fault: str, mount: Path, database: Path) -> Iterator[None]:
    if fault == "disk full":
        filler = fill(mount)
        try:
            yield
        finally:
            filler.unlink()
    else:
        immutable(database, True)
        try:
            yield
        finally:
            immutable(database, False)


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_the_daemon_rides_out_a_store_fault(fault: str, node: AnvilNode, tmp_path: Path) -> None:
    url = node.url
    acct = evm.accounts(url)
    status_port = free_port()
    # The merchant's "timeout" answer here is a slow 200 (2 s, within the client's 5 s timeout).
    async with Receiver(key=KEY, secret=SECRET, slow_answer_s=2.0) as rx:
        with store_mount(fault, tmp_path) as mount:
            database = mount / "watcher.sqlite3"
            config = daemon_config(database, node, rx, status_port, evm.head_height(url) + 1)
            path = write_config(tmp_path / "watcher.yaml", config)
            daemon = DaemonProcess(path, status_port, tmp_path / "daemon.log")
            daemon.start()
            try:
                await daemon.wait_live()
                before = evm.send_eth(url, acct[0], acct[1], 10**18)
                evm.mine(url, 2)
                await until("a deposit before the fault", lambda: _has(rx, before), daemon=daemon)
                await until("its delivery recorded", lambda: _all_delivered(database), daemon=daemon)
                # A callback in flight when the fault starts: its 2xx comes while writes fail.
                rx.plan(["timeout"])
                slow = evm.send_eth(url, acct[0], acct[3], 3 * 10**18)
                evm.mine(url, 2)
                await until("the slow callback sent", lambda: _requested(rx, slow), daemon=daemon)

                with injected(fault, mount, database):
                    cursor = stored_cursor(database)
                    assert cursor is not None
                    during = evm.send_eth(url, acct[0], acct[2], 2 * 10**18)
                    evm.mine(url, 3)
                    expected = FAULTS[fault]

                    async def store_problem() -> str | None:
                        code, body = await daemon.get("/readyz")
                        return body["problems"].get("store") if code == 503 else None

                    problem = await until("readyz naming the store", store_problem, daemon=daemon)
                    assert problem == f"writes fail: {expected}"
                    for _ in range(30):  # followers stop: no cursor moves without its commit
                        code, body = await daemon.get("/readyz")  # and it says so throughout
                        assert code == 503 and expected in body["problems"].get("store", ""), body
                        _, status = await daemon.get("/status")
                        chain = status["chains"]["ethereum"]
                        assert stored_cursor(database) == cursor
                        assert chain["processed_height"] is None or chain["processed_height"] <= cursor
                        assert (await daemon.get("/livez"))[0] == 200
                        assert daemon.proc is not None and daemon.proc.poll() is None
                        await asyncio.sleep(0.1)
                    assert chain["node_height"] >= cursor + 3  # the node went on meanwhile
                    assert _txid_of(rx, during) is None  # nothing about it was committed, nothing sent

                async def ready() -> bool:
                    return (await daemon.get("/readyz"))[0] == 200

                await until("readyz 200 after the fault", ready, timeout_s=60, daemon=daemon)
                await until("the deposit made during the fault", lambda: _has(rx, during), daemon=daemon)
                await until("every callback delivered", lambda: _all_delivered(database), daemon=daemon)
                head = evm.head_height(url)
                await until("the cursor at the head", lambda: _at(database, head), daemon=daemon)
            finally:
                code = daemon.stop()
            assert code == 0, daemon.log()
            log = daemon.log_path.read_text()
            assert '"task_crashed"' in log and expected in log
            store = await Store.open(str(database))
            try:
                deposits = await store.deposits()
                [slow_deposit] = [d for d in deposits if d.txid == slow]
                attempts = [a for e in await store.outbox_entries(deposit_id=slow_deposit.id)
                            for a in await store.attempts(e.id)]  # fmt: skip
                assert await store.integrity_check() == "ok"
            finally:
                await store.close()
    assert sorted(d.txid for d in deposits) == sorted([before, slow, during])
    assert all(str(d.status) == "confirmed" for d in deposits)
    # Every deposit delivered (the slow one's 200 counts: the client waited for it).
    assert {txid for txid, status in answered_2xx(rx) if status == "confirmed"} == {before, slow, during}
    # The slow 2xx whose record failed during the fault was kept and recorded afterwards.
    assert any(a.http_status == 200 and a.duration_ms >= 1500 for a in attempts), attempts
    ids = {r.body["transactions"][0]["txid"]: r.body["id"] for r in rx.requests if r.body}
    assert len(set(ids.values())) == 3  # one id per deposit, however often it was sent


def answered_2xx(rx: Receiver) -> set[tuple[str, str]]:
    """(txid, status) of the callbacks the merchant answered with a 2xx, slow answers included."""
    return {
        (r.body["transactions"][0]["txid"], r.body["status"])
        for r in rx.requests
        if r.body and r.outcome in ("answered", "timeout") and 200 <= r.status_code_answered < 300
    }


async def _all_delivered(database: Path) -> bool:
    states = outbox_states(database)
    return bool(states) and set(states) <= {"delivered", "superseded"}


async def _has(rx: Receiver, txid: str) -> bool:
    return txid in confirmed_txids(rx)


async def _requested(rx: Receiver, txid: str) -> bool:
    return any(r.body["transactions"][0]["txid"] == txid for r in rx.requests if r.body)


async def _at(database: Path, height: int) -> bool:
    return stored_cursor(database) == height


def _txid_of(rx: Receiver, txid: str) -> str | None:
    return next((txid for r in rx.requests if r.body and r.body["transactions"][0]["txid"] == txid), None)


def test_a_daemon_started_on_a_full_disk_says_why_in_one_line_and_starts_once_there_is_room(
    tmp_path: Path,
) -> None:
    status_port = free_port()
    with tmpfs(tmp_path / "db") as mount:
        config = {
            "network": "regtest", "database": str(mount / "watcher.sqlite3"),
            "status": {"listen": f"127.0.0.1:{status_port}"}, "log": {"format": "json"},
            "merchant": {"callback_url": "http://127.0.0.1:9/cb", "key": KEY, "secret": SECRET},
            "chains": {"ethereum": {"adapter": "evm", "rpc_url": f"http://127.0.0.1:{free_port()}",
                                    "currencies": {"ETH": None}}},
        }  # fmt: skip
        path = write_config(tmp_path / "watcher.yaml", config)
        filler = fill(mount)
        daemon = DaemonProcess(path, status_port, tmp_path / "daemon.log")
        daemon.start()
        assert daemon.proc is not None
        assert daemon.proc.wait(timeout=30) == 1
        log = daemon.log()
        assert "Traceback" not in log and log.count("\n") == 1, log
        reasons = ("No space left on device", "database or disk is full", "disk I/O error")
        assert '"start_failed"' in log and any(r in log for r in reasons), log
        filler.unlink()
        daemon.start()
        try:
            asyncio.run(daemon.wait_live())
        finally:
            assert daemon.stop() == 0
