"""PostgreSQL faults under the real daemon: a restart and a crash of the server, a connection cut in the
middle of a transaction (by the network, and by `pg_terminate_backend`), a network that goes silent
(packets dropped, nothing closed: only `database.timeout_s` finds it out), a fail-over to a read-only hot
standby that is then promoted, a full disk under the tables.

Each test runs the real daemon process on a real anvil with a real receiver, its store a PostgreSQL server
of the test's own, reached through tests/tcp_proxy.py (so the network can be cut and the address moved to
another server), as a role with a password checked by the server (scram-sha-256, `database.password_file`).
Deposits flow before, during and after the fault. Throughout the fault the daemon must keep running, move
no cursor without its commit (the committed cursor does not move; what /status says was processed is not
beyond it; nothing paid during the fault reaches the merchant), and say on /readyz `store: ...` with the
cause and without the password. Once the fault is gone it must resume by itself: every deposit delivered
as callbacks.md says (not_confirmed then confirmed, one id per deposit, the same bytes for each repeat),
every callback recorded as delivered, the cursor at the node's head, and a clean stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devnet import evm_tools as evm
from devnet.anvil import AnvilNode
from devnet.postgres import PostgresError, PostgresServer
from devnet.receiver import Receiver
from tests.daemon_process import DaemonProcess, free_port, write_config
from tests.tcp_proxy import TcpProxy
from tests.test_store_faults import fill, tmpfs
from watcher.errors import StoreError
from watcher.pg_schema import WRITE_LOCK_KEY
from watcher.store import NewAddress, Store

KEY, SECRET = "shop-key", "pg-faults-secret"
ROLE, DATABASE = "watcher", "watcher"
PASSWORD = "pg-faults-Passw0rd-never-shown"
MIN_CONF = 2
# database.timeout_s: a silent network is found out after this (the cut test holds a lock for 4 s).
STATEMENT_TIMEOUT_S = 8
# The server's own words for a client that went away inside a transaction: proof that a cut hit one.
OPEN_TRANSACTION_CUT = "unexpected EOF on client connection with an open transaction"


# ============================================================================================ the world


def with_password_role(server: PostgresServer) -> None:
    """The daemon's role and database, its password checked (scram-sha-256) for it alone; the tests'
    own psql stays the trusted superuser. A standby copies both (pg_basebackup)."""
    server.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
    server.psql(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
    hba = server.data_dir / "pg_hba.conf"
    hba.write_text(f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    server.psql("SELECT pg_reload_conf()")


@dataclass
class World:
    server: PostgresServer  # the one the proxy leads to (a promoted standby after a fail-over)
    proxy: TcpProxy
    url: str  # anvil's
    rx: Receiver
    daemon: DaemonProcess
    acct: list[str]
    paid: list[str] = field(default_factory=list)
    holders: list[asyncio.Task[str]] = field(default_factory=list)  # sessions of the test's own
    readyz_seen: list[str] = field(default_factory=list)  # every store problem /readyz showed

    # ------------------------------------------------------------------------------------ chain

    async def pay(self, count: int = 1) -> list[str]:
        made = []
        for _ in range(count):
            n = len(self.paid) + 1
            to = self.acct[1 + n % 3]
            txid = await asyncio.to_thread(
                evm.send_eth, self.url, self.acct[0], to, n * 10**15 + n, wait=False
            )
            made.append(txid)
            self.paid.append(made[-1])
        return made

    async def mine(self, blocks: int) -> None:
        await asyncio.to_thread(evm.mine, self.url, blocks)

    async def head(self) -> int:
        return await asyncio.to_thread(evm.head_height, self.url)

    # ------------------------------------------------------------------------------------ store

    async def sql(self, query: str) -> str:
        """A query as the superuser, straight to the server (not through the proxy): committed data."""
        return await asyncio.to_thread(self.server.psql, query, DATABASE)

    async def cursor(self) -> int | None:
        out = (await self.sql("SELECT cursor_height FROM chains WHERE name = 'ethereum'")).strip()
        return int(out) if out else None

    async def outbox_states(self) -> dict[str, int]:
        out = await self.sql("SELECT state, count(*) FROM outbox GROUP BY state")
        return {state: int(n) for state, n in (line.split("|") for line in out.split())}

    # ------------------------------------------------------------------------------------ daemon

    async def get(self, path: str) -> tuple[int, Any]:
        """The daemon's status server; (0, None) while it does not answer (it must, throughout)."""
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                async with session.get(f"http://127.0.0.1:{self.daemon.status_port}{path}") as r:
                    body = await r.json() if r.content_type == "application/json" else await r.text()
                    return r.status, body
        except (aiohttp.ClientError, TimeoutError):
            return 0, None

    async def store_problem(self) -> str | None:
        code, body = await self.get("/readyz")
        problem = body["problems"].get("store") if code == 503 else None
        if problem:
            self.readyz_seen.append(problem)
        return problem

    def running(self) -> bool:
        return self.daemon.proc is not None and self.daemon.proc.poll() is None

    def log(self) -> str:
        return self.daemon.log()


async def until(what: str, check: Callable[[], Awaitable[Any]], w: World, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s: {what}\n{w.log()}")


def daemon_config(
    node_url: str, rx: Receiver, db_port: int, password_file: Path, status_port: int, start: int
) -> dict[str, Any]:
    acct = evm.accounts(node_url)
    return {
        "network": "regtest",
        "database": {
            "url": f"postgresql://{ROLE}@127.0.0.1:{db_port}/{DATABASE}",
            "password_file": str(password_file),
            "timeout_s": STATEMENT_TIMEOUT_S,
        },
        "status": {"listen": f"127.0.0.1:{status_port}"},
        "log": {"format": "json", "level": "info"},
        "merchant": {
            "callback_url": rx.url, "key": KEY, "secret": SECRET, "timeout_s": 5,
            "retry_schedule_min": [0.005 * (i + 1) for i in range(40)],
        },
        "chains": {
            "ethereum": {
                "adapter": "evm", "rpc_url": node_url, "chain_id": 31337, "poll_interval_s": 0.2,
                "start_height": start, "currencies": {"ETH": {"min_confirmations": MIN_CONF}},
            }
        },
        "addresses": [
            {"currency": "ETH", "address": acct[i], "foreign_id": f"customer-{i}"} for i in (1, 2, 3)
        ],
    }  # fmt: skip


@contextlib.asynccontextmanager
async def world(server: PostgresServer, node: AnvilNode, tmp_path: Path) -> AsyncIterator[World]:
    """The daemon on `server` (through a proxy), following `node`, calling a receiver back."""
    await asyncio.to_thread(with_password_role, server)
    password_file = tmp_path / "db-password"
    password_file.write_text(PASSWORD + "\n")
    status_port = free_port()
    proxy = TcpProxy("127.0.0.1", server.port)
    await proxy.start()
    try:
        async with Receiver(key=KEY, secret=SECRET) as rx:
            start = evm.head_height(node.url) + 1
            config = daemon_config(node.url, rx, proxy.port, password_file, status_port, start)
            path = write_config(tmp_path / "watcher.yaml", config)
            daemon = DaemonProcess(path, status_port, tmp_path / "daemon.log")
            w = World(server, proxy, node.url, rx, daemon, evm.accounts(node.url))
            daemon.start()
            try:
                await daemon.wait_live()
                yield w
            finally:  # in a thread: the proxy runs on this loop, and the daemon's goodbyes pass through it
                code = await asyncio.to_thread(daemon.stop)
            assert code == 0, w.log()
    finally:
        await proxy.stop()


# ============================================================================================ the checks


def confirmed_txids(rx: Receiver) -> set[str]:
    return {r.body["transactions"][0]["txid"] for r in rx.delivered if r.body.get("status") == "confirmed"}


async def warm_up(w: World) -> None:
    """A deposit delivered and recorded before the fault: the daemon follows and writes."""
    [before] = await w.pay()
    await w.mine(MIN_CONF)
    await until("a deposit before the fault", lambda: _async(before in confirmed_txids(w.rx)), w)
    await until("its delivery recorded", lambda: all_delivered(w), w)


async def all_delivered(w: World) -> bool:
    states = await w.outbox_states()
    return bool(states) and set(states) <= {"delivered", "superseded"}


async def _async(value: bool) -> bool:
    return value


async def hold_fault(w: World, cursor: int, expected: re.Pattern[str], during: list[str]) -> str:
    """While the fault lasts: /readyz names the store and the cause, the daemon lives, nothing paid in the
    meantime reaches the merchant, the committed cursor stays at `cursor` (read before the fault; checked
    where the server answers) and what /status says was processed is not beyond it. Returns the problem
    shown."""

    async def named() -> str | None:  # the first may be another (a fail-over begins with a lost connection)
        problem = await w.store_problem()
        return problem if problem and expected.search(problem) else None

    problem: str = await until(f"/readyz naming the store: {expected.pattern}; saw {w.readyz_seen}", named, w)
    held = time.monotonic() + 3.0
    while time.monotonic() < held:
        code, body = await w.get("/readyz")
        assert code == 503 and "store" in body["problems"], body
        code, status = await w.get("/status")
        if code == 200:  # the counts need the store: without one they are null, the rest is shown
            processed = status["chains"]["ethereum"]["processed_height"]
            assert processed is None or processed <= cursor, (processed, cursor)
            assert status["ready"] is False and "store" in status["problems"], status
        assert (await w.get("/metrics"))[0] == 200  # with the counts read last, if need be
        with contextlib.suppress(PostgresError):  # where the server answers (a standby, a full disk)
            assert await w.cursor() == cursor, "the committed cursor moved during the fault"
        assert (await w.get("/livez"))[0] == 200 and w.running(), w.log()
        await asyncio.sleep(0.1)
    assert not set(during) & {r.body["transactions"][0]["txid"] for r in w.rx.requests if r.body}
    return problem


async def resumed(w: World) -> None:
    """After the fault, by itself: ready, every deposit delivered and recorded, the cursor at the head."""

    async def ready() -> bool:
        return (await w.get("/readyz"))[0] == 200

    await until("/readyz 200 after the fault", ready, w, timeout_s=90)
    paid = set(w.paid)
    await until("every deposit confirmed to the merchant", lambda: _async(paid <= confirmed_txids(w.rx)), w)
    await until("every callback recorded as delivered", lambda: all_delivered(w), w)
    head = await w.head()

    async def at_head() -> bool:
        return await w.cursor() == head

    await until("the cursor at the head", at_head, w)


def check_callbacks(w: World) -> None:
    """callbacks.md's contract over everything the merchant received: a deposit per payment, one id each,
    not_confirmed never after confirmed, every repeat of an (id, status) the same bytes."""
    by_id: dict[int, list[Any]] = {}
    for r in w.rx.requests:
        if r.body:
            by_id.setdefault(r.body["id"], []).append(r)
    ids: dict[str, set[int]] = {}
    for deposit_id, requests in by_id.items():
        txid = requests[0].body["transactions"][0]["txid"]
        ids.setdefault(txid, set()).add(deposit_id)
        assert txid in w.paid, f"a callback for nothing paid: {requests[0].body}"
        statuses = [r.body["status"] for r in requests]
        assert "cancelled" not in statuses, statuses
        first = statuses.index("confirmed")
        assert set(statuses[first:]) == {"confirmed"}, f"not_confirmed after confirmed: {statuses}"
        raws: dict[str, set[bytes]] = {}
        for r in requests:
            raws.setdefault(r.body["status"], set()).add(r.raw)
        assert all(len(v) == 1 for v in raws.values()), f"deposit {deposit_id}: different bytes for a status"
        assert all(r.signature_ok for r in requests)
    assert set(ids) == set(w.paid) and all(len(v) == 1 for v in ids.values()), ids


def check_log(w: World) -> None:
    """The password nowhere; every line of the log structured (no library's traceback printed raw)."""
    log = w.daemon.log_path.read_text()
    assert PASSWORD not in log and not [p for p in w.readyz_seen if PASSWORD in p]
    raw = [line for line in log.splitlines() if not line.startswith("{")]
    assert not raw, "\n".join(raw[:20])


async def ride_out(
    w: World,
    fault: Callable[[World], contextlib.AbstractAsyncContextManager[None]],
    expected: re.Pattern[str],
    during_count: int = 2,
) -> str:
    """Warm up, then pay and mine inside `fault`, hold it, leave it, and see the daemon resume."""
    await warm_up(w)
    cursor = await w.cursor()
    assert cursor is not None
    async with fault(w):
        during = await w.pay(during_count)
        await w.mine(MIN_CONF + 1)
        problem = await hold_fault(w, cursor, expected, during)
    await w.pay()  # and one more after
    await w.mine(MIN_CONF)
    await resumed(w)
    check_callbacks(w)
    check_log(w)
    assert w.running()
    return problem


# ============================================================================================ faults


@pytest.fixture
async def server() -> AsyncIterator[PostgresServer]:
    async with PostgresServer() as s:
        yield s


@pytest.mark.parametrize("how", ["fast shutdown", "SIGKILL"])
async def test_the_daemon_rides_out_a_server_restart(
    how: str, server: PostgresServer, anvil: AnvilNode, tmp_path: Path
) -> None:
    """The server goes away (a restart, fast shutdown: connections closed; a crash: SIGKILL) while
    deposits flow, and stays away a while; then it runs again on the same data."""

    @contextlib.asynccontextmanager
    async def down(w: World) -> AsyncIterator[None]:
        await asyncio.to_thread(server.shutdown if how == "fast shutdown" else server.kill)
        yield
        await asyncio.to_thread(server.restart)

    async with world(server, anvil, tmp_path) as w:
        # Through the proxy a server that is gone is a connection closed at once (directly: refused).
        await ride_out(w, down, re.compile(r"StoreError: postgresql://watcher@127\.0\.0\.1:\d+/watcher: \S"))


# Where the test's own session makes the daemon's writer wait inside its transaction: at the write lock
# (BEGIN has run, nothing is written yet), or at the chain's row (the block's rows are written or on their
# way with the COMMIT: the cursor's UPDATE, or a reference to the chain, waits for the row).
HOLD_AT = {
    "the write lock": f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})",
    "the chain's row": "SELECT 1 FROM chains WHERE name = 'ethereum' FOR UPDATE",
}


async def writer_blocked_mid_transaction(w: World, at: str) -> str:
    """Hold what `at` names from a session of the test's own while a block with a deposit arrives: the
    daemon's writer then waits inside its transaction. Returns its pid once it waits there; the lock is
    released by itself a few seconds later."""
    holder = asyncio.create_task(w.sql(f"BEGIN; {HOLD_AT[at]}; SELECT pg_sleep(4); COMMIT"))
    w.holders.append(holder)
    await asyncio.sleep(0.3)
    await w.pay()
    await w.mine(1)

    async def waiting() -> str:
        query = f"SELECT pid FROM pg_stat_activity WHERE usename = '{ROLE}' AND wait_event_type = 'Lock'"
        return (await w.sql(query)).strip()

    pid: str = await until(f"the daemon's writer waiting at {at}", waiting, w, timeout_s=4)
    return pid


@pytest.mark.parametrize("how", ["network cut", "pg_terminate_backend"])
async def test_a_connection_cut_mid_transaction_commits_nothing_of_it(
    how: str, server: PostgresServer, anvil: AnvilNode, tmp_path: Path
) -> None:
    """The writer's connection ends inside a transaction (the proxy cuts it; an operator terminates the
    backend), once while it waits for the write lock and once while it waits for the chain's row: the
    daemon says so, nothing is committed behind its back before it knows, it reconnects and applies the
    block again (or finds it committed: a COMMIT on its way when the connection went), deposits flowing."""
    async with world(server, anvil, tmp_path) as w:
        await warm_up(w)
        for at in HOLD_AT:
            cursor = await w.cursor()
            assert cursor is not None
            pid = await writer_blocked_mid_transaction(w, at)
            if how == "network cut":
                assert w.proxy.cut() >= 1
                expected = re.compile(r"ConnectionDoesNotExistError|connection was closed|connection_lost")
            else:
                assert (await w.sql(f"SELECT pg_terminate_backend({pid})")).strip() == "t"
                expected = re.compile(r"\w+Error: .*terminating connection due to administrator command")
            problem = await until("/readyz naming the store", w.store_problem, w, timeout_s=10)
            assert expected.search(problem), problem
            assert await w.cursor() == cursor  # nothing committed while the writer waits
            await asyncio.gather(*w.holders)
            await resumed(w)
        log = server.log_path.read_text()
        if how == "network cut":  # the server saw the client go with its transaction open
            assert OPEN_TRANSACTION_CUT in log, log[-3000:]
        else:
            assert log.count("terminating connection due to administrator command") >= 2, log[-3000:]
        check_callbacks(w)
        check_log(w)


async def test_a_silent_network_is_a_store_error_after_the_timeout(
    postgres: PostgresServer, pg_url: str
) -> None:
    """The store alone: through a proxy that stops passing packets, a write and a read end after
    `timeout_s` as StoreError naming the cause (and the write in `write_error`); the writer connection is
    dropped, and once packets pass again the next transaction connects anew and commits."""
    proxy = TcpProxy("127.0.0.1", postgres.port)
    await proxy.start()
    try:
        url = pg_url.replace(f":{postgres.port}/", f":{proxy.port}/")
        store = await Store.open(url, timeout_s=1.0)
        try:
            await store.sync_addresses("eth", [NewAddress("eth", "ETH", b"\x01" * 20, "0xabc", "customer-1")])
            proxy.pause()
            started = time.monotonic()
            with pytest.raises(
                StoreError, match=r"no answer from the server within 1 s \(database.timeout_s\)"
            ):
                async with store.transaction() as tx:
                    await tx.set_halted("eth", "a reason")
            assert store.write_error == "no answer from the server within 1 s (database.timeout_s)"
            with pytest.raises(StoreError, match="no answer from the server within 1 s"):
                await store.deposit_counts()
            assert time.monotonic() - started < 10  # bounded: without a timeout both would wait for ever
            proxy.resume()
            async with store.transaction() as tx:
                await tx.set_halted("eth", "a reason")
            assert store.write_error is None
            assert (await store.chain_state("eth")).halted_reason == "a reason"
        finally:
            await store.close()
    finally:
        await proxy.stop()


async def test_the_daemon_rides_out_a_silent_network(
    server: PostgresServer, anvil: AnvilNode, tmp_path: Path
) -> None:
    """No packet passes either way and nothing is closed (a cable pulled, a firewall dropping): every
    statement waits, until `database.timeout_s` says the connection is lost. Then the network is back."""

    @contextlib.asynccontextmanager
    async def silent(w: World) -> AsyncIterator[None]:
        w.proxy.pause()
        yield
        w.proxy.resume()

    async with world(server, anvil, tmp_path) as w:
        expected = re.compile(
            rf"no answer from the server within {STATEMENT_TIMEOUT_S} s \(database.timeout_s\)"
        )
        await ride_out(w, silent, expected)


async def test_a_fail_over_to_a_read_only_standby_then_its_promotion(
    server: PostgresServer, anvil: AnvilNode, tmp_path: Path
) -> None:
    """A hot standby (pg_basebackup -R) streams the primary's WAL. The primary stops; the database's
    address moves to the standby before anyone promoted it: reads work, every write is refused
    ("cannot execute ... in a read-only transaction"). Then it is promoted, and the daemon goes on there
    by itself, with what the primary had committed."""
    async with world(server, anvil, tmp_path) as w:
        standby = PostgresServer.standby_of(server)
        await asyncio.to_thread(standby.start)
        try:

            @contextlib.asynccontextmanager
            async def fail_over(w: World) -> AsyncIterator[None]:
                await asyncio.to_thread(server.shutdown)  # a fast shutdown sends the standby all its WAL
                w.proxy.retarget("127.0.0.1", standby.port)
                w.proxy.cut()
                w.server = standby
                yield
                assert (await w.sql("SELECT pg_is_in_recovery()")).strip() == "t"
                await asyncio.to_thread(standby.promote)

            await ride_out(
                w, fail_over, re.compile(r"writes fail: \w+: cannot execute \w+ in a read-only transaction")
            )
            assert (await w.sql("SELECT pg_is_in_recovery()")).strip() == "f"
            assert await asyncio.to_thread(w.daemon.stop) == 0  # before its server goes
        finally:
            await asyncio.to_thread(standby.stop)


async def test_a_full_disk_under_the_tables(fresh_anvil: AnvilNode, tmp_path: Path) -> None:
    """The cluster's directory on a small tmpfs (its WAL elsewhere: see PostgresServer's data_dir),
    filled to the last byte while a block with many deposits arrives: its transaction cannot extend the
    tables ("could not extend file ...: No space left on device") and commits nothing. The file is
    removed; the daemon goes on by itself. (Blocks are mined by the test: the deposits share one.)"""
    base = Path(tempfile.mkdtemp(prefix="pg-disk-"))
    os.chmod(base, 0o755)  # the server's user walks through it to the mount
    with tmpfs(base / "disk", size="96M") as mount:
        server = PostgresServer(data_dir=mount / "data")
        await asyncio.to_thread(server.start)
        try:
            async with world(server, fresh_anvil, tmp_path) as w:
                await asyncio.to_thread(evm.set_automine, fresh_anvil.url, False)

                @contextlib.asynccontextmanager
                async def full(w: World) -> AsyncIterator[None]:
                    filler = await asyncio.to_thread(fill, mount)
                    yield
                    filler.unlink()

                await ride_out(
                    w,
                    full,
                    re.compile(
                        r"writes fail: DiskFullError: could not extend file .*No space left on device"
                    ),
                    during_count=20,
                )
        finally:
            await asyncio.to_thread(server.stop)
    shutil.rmtree(base)
