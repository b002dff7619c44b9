"""Merchant faults against the real dispatcher, the real store and real HTTP servers, and the real daemon
process where memory is the question.

Every failure is a failed attempt, logged with its status or error and a bounded excerpt, and retried on
the schedule; nothing is followed, nothing blocks the other deposits, nothing is read beyond the excerpt,
and a backlog of 100,000 callbacks is worked through a page at a time in bounded memory.

The dispatcher's trials run on both store backends (`store_location`: SQLite, PostgreSQL). The real
daemon's memory trials stay on SQLite: they fill the outbox through sqlite3 directly (100,000 rows in
seconds) and compare with loading every row of the file at once; what they measure is the dispatcher's
paging and HTTP reads, the same code on either backend.

Faults the aiohttp Receiver cannot make (a TCP reset, a 307 to another server, an answer of hundreds of
megabytes that counts the bytes that actually left) come from `RawMerchant`, a merchant on a raw socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import socket
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devnet.receiver import Receiver
from tests.daemon_process import DaemonProcess, free_port, write_config
from watcher.config import MerchantConfig
from watcher.dispatcher import EXCERPT_READ_BYTES, Dispatcher
from watcher.model import DepositStatus, OutboxState
from watcher.store import NewAddress, Store

KEY, SECRET = "shop-key", "shop-secret-merchant-faults"
EXCERPT_CHARS = 512  # watcher.callbacks.excerpt's limit: what the attempt log keeps of an answer


# ============================================================================================ helpers


@pytest.fixture
async def store(store_location: str) -> AsyncIterator[Store]:
    """The dispatcher's store, on either backend (an SQLite file, a database on the shared PostgreSQL)."""
    s = await Store.open(store_location)
    await s.sync_addresses("eth", [NewAddress("eth", "ETH", b"\x01" * 20, "0xabc", "customer-1")])
    yield s
    await s.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver(key=KEY, secret=SECRET, slow_answer_s=5.0) as rx:
        yield rx


def merchant(url: str, schedule: tuple[float, ...] = (0.002, 0.004), **kw: Any) -> MerchantConfig:
    return MerchantConfig(callback_url=url, key=KEY, secret=SECRET, retry_schedule_min=schedule, **kw)


async def queue(store: Store, txid: str) -> int:
    """A deposit with one pending confirmed callback; its id."""
    async with store.transaction() as tx:
        deposit_id = await tx.insert_deposit(
            chain="eth", currency="ETH", address_id=1, txid=txid, tx_index=-1, amount=5, sender=None,
            nonce=None, inputs=(), now=1.0,
        )  # fmt: skip
        body = b'{"id":%d,"status":"confirmed"}' % deposit_id
        await tx.enqueue_callback(deposit_id, DepositStatus.CONFIRMED, body, now=0.0)
    return deposit_id


@contextlib.asynccontextmanager
async def dispatching(store: Store, config: MerchantConfig) -> AsyncIterator[Dispatcher]:
    d = Dispatcher(store, config, asyncio.Event())
    task = asyncio.create_task(d.run())
    try:
        yield d
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_attempts(store: Store, deposit_id: int, count: int, timeout_s: float = 15.0) -> list[Any]:
    for _ in range(int(timeout_s / 0.02)):
        [entry] = await store.outbox_entries(deposit_id=deposit_id)
        attempts = await store.attempts(entry.id)
        if len(attempts) >= count:
            return attempts
        await asyncio.sleep(0.02)
    raise AssertionError(f"deposit {deposit_id}: fewer than {count} attempts after {timeout_s} s")


async def state_of(store: Store, deposit_id: int) -> OutboxState:
    [entry] = await store.outbox_entries(deposit_id=deposit_id)
    return entry.state


async def wait_state(store: Store, deposit_id: int, state: OutboxState, timeout_s: float = 15.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if await state_of(store, deposit_id) is state:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"deposit {deposit_id} not {state} after {timeout_s} s")


@dataclass
class Connection:
    """What the raw merchant saw of one connection."""

    requests: int = 0
    body_bytes_sent: int = 0
    closed_by_client: bool = False  # a write failed or the client sent EOF: the client hung up


@dataclass
class RawMerchant:
    """An HTTP/1.1 merchant on a raw asyncio socket: answers each request by the next mode of its plan.

    "ok": 200 "ok"; "reset": a TCP RST (SO_LINGER 0) instead of an answer; "huge": `huge_status` with a
    `huge_bytes` body streamed for as long as the client reads (`body_bytes_sent` counts what the kernel
    took, so a client that stops reading stops it); "redirect": 307 to `redirect_to`.
    """

    plan: list[str] = field(default_factory=list)
    huge_status: int = 500
    huge_bytes: int = 256 * 1024 * 1024
    redirect_to: str = ""
    connections: list[Connection] = field(default_factory=list)
    _server: asyncio.Server | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/callbacks"

    async def __aenter__(self) -> RawMerchant:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection()
        self.connections.append(conn)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    conn.closed_by_client = True
                    return
                match = re.search(rb"(?i)content-length: *(\d+)", head)
                await reader.readexactly(int(match.group(1)) if match else 0)
                conn.requests += 1
                mode = self.plan.pop(0) if self.plan else "ok"
                if mode == "reset":
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                if mode == "huge":
                    await self._huge(writer, conn)
                    return
                if mode == "redirect":
                    writer.write(
                        f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {self.redirect_to}\r\n"
                        "Content-Length: 0\r\n\r\n".encode()
                    )
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        finally:
            writer.close()

    async def _huge(self, writer: asyncio.StreamWriter, conn: Connection) -> None:
        writer.write(
            f"HTTP/1.1 {self.huge_status} Whatever\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {self.huge_bytes}\r\n\r\n".encode()
        )
        chunk = b"E" * 65536
        try:
            while conn.body_bytes_sent < self.huge_bytes:
                writer.write(chunk)
                await writer.drain()
                conn.body_bytes_sent += len(chunk)
        except (ConnectionError, OSError):
            conn.closed_by_client = True


# ================================================================================ timeouts and redirects


async def test_a_merchant_slower_than_the_timeout_is_a_failed_attempt_and_blocks_no_one(
    store: Store, receiver: Receiver
) -> None:
    receiver.plan(["timeout"])  # the first request is answered after 5 s; the client gives up at 0.5 s
    first = await queue(store, "0xa")
    second = await queue(store, "0xb")
    async with dispatching(store, merchant(receiver.url, timeout_s=0.5)):
        await wait_state(store, first, OutboxState.DELIVERED)
        await wait_state(store, second, OutboxState.DELIVERED)
    slow_request = receiver.requests[0]
    slow = first if slow_request.body["id"] == first else second
    fast = second if slow == first else first
    [fast_attempt] = await wait_attempts(store, fast, 1)
    assert fast_attempt.http_status == 200
    timed_out, retried = await wait_attempts(store, slow, 2)
    # The other deposit was delivered while the slow one was still waiting for its answer.
    fast_end = fast_attempt.attempted_at + fast_attempt.duration_ms / 1000
    assert fast_end < timed_out.attempted_at + timed_out.duration_ms / 1000
    assert timed_out.http_status is None and timed_out.error == "timeout after 0.5 s"
    assert timed_out.response_excerpt == ""
    assert 450 <= timed_out.duration_ms < 2000  # the client's timeout, not the merchant's 5 s
    assert retried.http_status == 200
    assert retried.attempted_at - timed_out.attempted_at >= 0.002 * 60 - 0.01  # on the schedule


async def test_redirects_are_failed_attempts_and_never_followed(store: Store, receiver: Receiver) -> None:
    async with RawMerchant(plan=["redirect", "redirect"], redirect_to=receiver.url) as raw:
        # A 307 keeps the method and body: following it would POST the callback to `redirect_to`.
        raw_deposit = await queue(store, "0xraw")
        async with dispatching(store, merchant(raw.url)):
            await wait_state(store, raw_deposit, OutboxState.DELIVERED)
        assert [a.http_status for a in await wait_attempts(store, raw_deposit, 3)] == [307, 307, 200]
        assert receiver.requests == []  # nothing reached the Location
    receiver.plan(["redirect"])  # the Receiver's own 302 to a path of its own
    deposit = await queue(store, "0xrx")
    async with dispatching(store, merchant(receiver.url)):
        await wait_state(store, deposit, OutboxState.DELIVERED)
    first, second = await wait_attempts(store, deposit, 2)
    assert (first.http_status, first.error, second.http_status) == (302, "HTTP 302", 200)
    assert receiver.redirect_follows == 0


# ======================================================================================== statuses


FAILURES = [400, 401, 403, 404, 405, 409, 410, 413, 422, 429, 500, 501, 502, 503, 504]


async def test_every_4xx_and_5xx_is_a_failed_attempt_retried_on_the_schedule(
    store: Store, receiver: Receiver
) -> None:
    receiver.plan([*FAILURES, 200])
    schedule = tuple(0.001 * (i + 1) for i in range(len(FAILURES)))
    deposit = await queue(store, "0xstatuses")
    async with dispatching(store, merchant(receiver.url, schedule=schedule)):
        await wait_state(store, deposit, OutboxState.DELIVERED, timeout_s=30)
    attempts = await wait_attempts(store, deposit, len(FAILURES) + 1)
    assert [a.http_status for a in attempts] == [*FAILURES, 200]
    assert [a.error for a in attempts] == [f"HTTP {s}" for s in FAILURES] + [""]
    assert all(a.response_excerpt == "error" for a in attempts[:-1])  # what the merchant answered
    first = attempts[0].attempted_at
    for number, attempt in enumerate(attempts[1:]):  # retry n is due schedule[n] minutes after the first
        assert attempt.attempted_at - first >= schedule[number] * 60 - 0.01


@pytest.mark.parametrize("status", [200, 201, 202, 204])
async def test_any_2xx_is_a_delivery(store: Store, receiver: Receiver, status: int) -> None:
    receiver.plan([status])
    deposit = await queue(store, f"0x{status}")
    async with dispatching(store, merchant(receiver.url)):
        await wait_state(store, deposit, OutboxState.DELIVERED)
    [attempt] = await wait_attempts(store, deposit, 1)
    assert (attempt.http_status, attempt.error) == (status, "")


async def test_a_merchant_failing_past_the_schedule_leaves_a_failed_callback(
    store: Store, receiver: Receiver
) -> None:
    receiver.plan([503] * 3)
    deposit = await queue(store, "0xfailed")
    async with dispatching(store, merchant(receiver.url, schedule=(0.001, 0.002))):
        await wait_state(store, deposit, OutboxState.FAILED)
        await asyncio.sleep(0.3)  # nothing more is sent once the schedule is exhausted
    assert [a.http_status for a in await wait_attempts(store, deposit, 3)] == [503, 503, 503]
    assert len(receiver.requests) == 3
    again = await store.resend(deposit)  # the operator's `resend`: the same bytes, delivered
    assert again is not None
    async with dispatching(store, merchant(receiver.url)):
        await receiver.wait_delivered(1, timeout_s=10)
    assert receiver.delivered[0].raw == receiver.requests[0].raw


# ============================================================================ connections that break


async def test_connection_reset_and_drop_are_failed_attempts(store: Store, receiver: Receiver) -> None:
    async with RawMerchant(plan=["reset"]) as raw:
        deposit = await queue(store, "0xreset")
        async with dispatching(store, merchant(raw.url)):
            await wait_state(store, deposit, OutboxState.DELIVERED)
        reset, ok = await wait_attempts(store, deposit, 2)
    assert reset.http_status is None and ok.http_status == 200
    assert re.match(r"(ClientOSError|ServerDisconnectedError|ClientConnectionResetError)", reset.error), reset
    receiver.plan(["drop"])  # the Receiver closes the connection without answering
    dropped = await queue(store, "0xdrop")
    async with dispatching(store, merchant(receiver.url)):
        await wait_state(store, dropped, OutboxState.DELIVERED)
    drop, ok = await wait_attempts(store, dropped, 2)
    assert drop.http_status is None and drop.error and ok.http_status == 200


# ==================================================================================== huge answers


@pytest.mark.parametrize("status", [500, 200])
async def test_a_huge_answer_is_read_only_as_far_as_the_excerpt(store: Store, status: int) -> None:
    async with RawMerchant(plan=["huge"], huge_status=status, huge_bytes=256 * 1024 * 1024) as raw:
        deposit = await queue(store, f"0xhuge{status}")
        async with dispatching(store, merchant(raw.url, schedule=(10.0,))):
            [attempt] = await wait_attempts(store, deposit, 1)
            for _ in range(100):  # the client hangs up: the server's next writes fail
                if raw.connections[0].closed_by_client:
                    break
                await asyncio.sleep(0.05)
    conn = raw.connections[0]
    assert attempt.http_status == status and attempt.error == ("" if status == 200 else "HTTP 500")
    assert attempt.response_excerpt == "E" * (EXCERPT_CHARS - 1) + "…"
    # 256 MB offered; what left the server is what the client read (EXCERPT_READ_BYTES plus aiohttp's
    # buffer) and what the loopback socket buffers held when the client hung up: a few MB at most.
    assert conn.closed_by_client, "the dispatcher kept the connection open"
    assert conn.body_bytes_sent < 16 * 1024 * 1024, conn
    assert EXCERPT_READ_BYTES <= 4096
    assert attempt.duration_ms < 2000
    assert await state_of(store, deposit) is (OutboxState.DELIVERED if status == 200 else OutboxState.PENDING)


# ============================================================================== a hanging merchant


async def test_a_hanging_merchant_keeps_the_dispatcher_beating(store: Store, receiver: Receiver) -> None:
    """The watchdog restarts a daemon whose loops stop beating. With every request timing out, one page
    of due callbacks makes the feeder wait for the workers, request after request: its beat must keep
    coming at the pace of the requests, not once per page (backlog / concurrency x timeout: with the
    defaults, 500 / 20 x 10 s = 250 s, past its promised 60 + 3 x 10 s, and systemd would restart a
    daemon whose merchant is merely slow)."""
    receiver.plan(["timeout"] * 1000)
    for i in range(60):
        await queue(store, f"0xhang{i}")
    beats: list[tuple[float, float]] = []
    config = merchant(receiver.url, schedule=(10.0,), timeout_s=0.2, concurrency=1)
    d = Dispatcher(
        store, config, asyncio.Event(), beats=lambda _, within: beats.append((time.monotonic(), within))
    )
    task = asyncio.create_task(d.run())
    try:
        await asyncio.sleep(6.0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert len(receiver.requests) >= 10  # requests kept timing out, one at a time
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(beats)]
    gaps.append(time.monotonic() - beats[-1][0])
    # Once per request (0.2 s here); the old once-per-page beat left the whole run (6 s) without one.
    assert max(gaps) < 3.0, gaps
    assert all(gap <= within for gap, (_, within) in zip(gaps, beats, strict=True))


# ======================================================================== the real daemon's memory


async def fill_outbox(database: Path, count: int, body_bytes: int) -> None:
    """`count` deposits, each with one due pending callback of about `body_bytes`, in batched inserts."""
    store = await Store.open(str(database))  # the schema, as the daemon creates it
    await store.close()
    await asyncio.to_thread(_insert_outbox, database, count, body_bytes)


def _insert_outbox(database: Path, count: int, body_bytes: int) -> None:
    pad = "x" * body_bytes
    with sqlite3.connect(database) as db:
        db.execute(
            "INSERT INTO addresses (id, chain, currency, watch_key, address, foreign_id)"
            " VALUES (1, 'ethereum', 'ETH', ?, '0xabc', 'customer-1')",
            (b"\x01" * 20,),
        )
        for start in range(1, count + 1, 10_000):
            ids = range(start, min(start + 10_000, count + 1))
            db.executemany(
                "INSERT INTO deposits (id, chain, currency, address_id, txid, tx_index, amount,"
                " confirmations, status, first_seen_at, updated_at)"
                " VALUES (?, 'ethereum', 'ETH', 1, ?, -1, '1', 1, 'confirmed', 0, 0)",
                [(i, f"0x{i:064x}") for i in ids],
            )
            db.executemany(
                "INSERT INTO outbox (deposit_id, status, body, state, created_at, next_attempt_at)"
                " VALUES (?, 'confirmed', ?, 'pending', 0, 0)",
                [(i, json.dumps({"id": i, "status": "confirmed", "pad": pad}).encode()) for i in ids],
            )


def proc_status_kib(pid: int, field_name: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field_name} for {pid}")


def daemon_config(tmp_path: Path, database: Path, callback_url: str, status_port: int) -> Path:
    config = {
        "network": "regtest",
        "database": str(database),
        "status": {"listen": f"127.0.0.1:{status_port}"},
        "log": {"format": "json", "level": "warning"},  # not one line per callback: 100,000 of them
        "merchant": {"callback_url": callback_url, "key": KEY, "secret": SECRET, "timeout_s": 5},
        "chains": {
            # A node nobody runs: the follower retries quietly; only the dispatcher works here.
            "ethereum": {"adapter": "evm", "rpc_url": f"http://127.0.0.1:{free_port()}",
                         "currencies": {"ETH": {"min_confirmations": 1}}},
        },
    }  # fmt: skip
    return write_config(tmp_path / "watcher.yaml", config)


# What a reader that loads every pending entry at once measured (VmHWM), printed for the record.
LOAD_ALL = """
import asyncio, sys
from watcher.store import Store
async def main():
    store = await Store.open(sys.argv[1])
    entries = await store.outbox_entries(state="pending", limit=10**9)
    assert len(entries) == int(sys.argv[2]), len(entries)
    await store.close()
asyncio.run(main())
print([l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")][0])
"""

PENDING = 100_000
BODY_BYTES = 3_000
# The bound. 100,000 bodies of 3 kB are 300 MB: a reader that holds every pending callback at once needs
# more than that (it is measured below, ~370 MB), so it cannot stay under 200 MB; a page-wise reader holds
# one page (500 x 3 kB = 1.5 MB) on top of the interpreter and its libraries (~70 MB measured), so 200 MB
# leaves it ample room and still tells the two apart.
RSS_BOUND_KIB = 200 * 1024
SAMPLE_S = 15.0


async def test_100k_pending_callbacks_keep_the_daemons_memory_bounded(tmp_path: Path) -> None:
    database = tmp_path / "watcher.sqlite3"
    try:
        started = time.monotonic()
        await fill_outbox(database, PENDING, BODY_BYTES)
        fill_s = time.monotonic() - started
        load_all_kib = load_everything_peak_kib(database)
        assert load_all_kib > RSS_BOUND_KIB, "the bound would not tell a load-everything reader apart"

        rx_port, status_port = free_port(), free_port()
        rx_out = tmp_path / "receiver.out"
        receiver = start_receiver(rx_port, rx_out)
        daemon = DaemonProcess(
            daemon_config(tmp_path, database, f"http://127.0.0.1:{rx_port}/callbacks", status_port),
            status_port,
            tmp_path / "daemon.log",
        )
        try:
            for _ in range(100):
                if b"listening on" in rx_out.read_bytes():
                    break
                await asyncio.sleep(0.1)
            daemon.start()
            await daemon.wait_live()
            assert daemon.proc is not None
            pid = daemon.proc.pid
            samples: list[int] = []
            deadline = time.monotonic() + SAMPLE_S
            while time.monotonic() < deadline:
                samples.append(proc_status_kib(pid, "VmRSS"))
                await asyncio.sleep(0.25)
            peak = proc_status_kib(pid, "VmHWM")
            _, status = await daemon.get("/status")
        finally:
            daemon.stop()
            receiver.terminate()
            receiver.wait(timeout=10)
        delivered_lines = rx_out.read_text().count("\n") - 1  # minus "listening on"
        figures = (
            f"fill {fill_s:.1f} s; load-everything reader peak {load_all_kib / 1024:.0f} MB; daemon RSS "
            f"{samples[0] / 1024:.0f}..{max(samples) / 1024:.0f} MB (peak {peak / 1024:.0f} MB) while "
            f"delivering {status['outbox']['delivered']} of {PENDING} in {SAMPLE_S:.0f} s"
        )
        print(figures)
        assert peak < RSS_BOUND_KIB, figures
        assert max(samples) - samples[0] < 50 * 1024, figures  # no creeping growth either
        # It did work through them meanwhile: thousands delivered, signed and verified by the receiver.
        assert status["outbox"]["delivered"] >= 2_000 and delivered_lines >= 2_000, figures
        assert status["outbox"]["pending"] == PENDING - status["outbox"]["delivered"], figures
    finally:
        remove_database(tmp_path)


def load_everything_peak_kib(database: Path) -> int:
    done = subprocess.run(
        [sys.executable, "-c", LOAD_ALL, str(database), str(PENDING)],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


def start_receiver(port: int, out_path: Path) -> subprocess.Popen[bytes]:
    """The real Receiver in a process of its own (`python -m devnet.receiver`): it verifies each
    signature and prints one line per callback, so its memory and CPU stay out of the test's."""
    with open(out_path, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "devnet.receiver", "--port", str(port), "--key", KEY],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "RECEIVER_SECRET": SECRET},
        )  # fmt: skip


def remove_database(directory: Path) -> None:
    for file in directory.glob("watcher.sqlite3*"):
        file.unlink()


def callbacks_json(config_path: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "watcher", "callbacks", "--json", "--config", str(config_path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


async def test_huge_answers_to_the_real_daemon_cost_no_memory(tmp_path: Path) -> None:
    count, answer_bytes = 200, 64 * 1024 * 1024
    database = tmp_path / "watcher.sqlite3"
    await fill_outbox(database, count, 200)
    status_port = free_port()
    async with RawMerchant(plan=["huge"] * count, huge_status=200, huge_bytes=answer_bytes) as raw:
        daemon = DaemonProcess(
            daemon_config(tmp_path, database, raw.url, status_port), status_port, tmp_path / "daemon.log"
        )
        daemon.start()
        try:
            await daemon.wait_live()
            assert daemon.proc is not None
            samples = []
            for _ in range(600):
                samples.append(proc_status_kib(daemon.proc.pid, "VmRSS"))
                _, status = await daemon.get("/status")
                if status["outbox"]["delivered"] == count:
                    break
                await asyncio.sleep(0.1)
            peak = proc_status_kib(daemon.proc.pid, "VmHWM")
        finally:
            assert daemon.stop() == 0
    sent = sorted(c.body_bytes_sent for c in raw.connections if c.requests)
    figures = (
        f"{count} answers of {answer_bytes >> 20} MB: daemon peak {peak / 1024:.0f} MB; "
        f"at most {sent[-1] / 2**20:.1f} MB of an answer sent"
    )
    print(figures)
    assert status["outbox"]["delivered"] == count, figures
    # 20 in flight x 64 MB would be 1.3 GB if the bodies were read; one excerpt each costs nothing.
    assert peak < 150 * 1024, figures
    assert sent[-1] < 16 * 1024 * 1024, figures
    excerpts = [a["excerpt"] for row in callbacks_json(daemon.config_path) for a in row["log"]]
    assert len(excerpts) >= count and all(len(e) <= EXCERPT_CHARS for e in excerpts)
