"""The merchant receiver (watcher.receiver) and the test harness on it (devnet.receiver), driven by a real
aiohttp client over loopback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from devnet.receiver import Receiver
from tests.daemon_process import free_port
from watcher import callbacks, coinskro
from watcher.model import Deposit, DepositStatus, PaymentStatus
from watcher.receiver import CallbackReceiver, Received, describe, run_standalone

KEY = "merchant-public-key"
SECRET = "merchant-secret"
CLIENT_TIMEOUT_S = 0.5
ROOT = Path(__file__).resolve().parent.parent


def deposit_body(deposit_id: int = 7, status: DepositStatus = DepositStatus.CONFIRMED) -> bytes:
    deposit = Deposit(
        id=deposit_id,
        chain="ethereum",
        currency="USDT",
        address_id=3,
        address="0x52908400098527886E0F7030069857D2E4169EE7",
        foreign_id="customer-1",
        txid="0x" + "ab" * 32,
        tx_index=4,
        amount=25_000_000,
        block_height=100,
        block_hash="0x" + "cd" * 32,
        confirmations=10,
        status=status,
        error="",
        first_seen_at=1.0,
        updated_at=2.0,
    )
    return callbacks.build_body(deposit, 6, "devnet")


@pytest.fixture
async def rx() -> AsyncIterator[Receiver]:
    # The slow answer outlasts the client's timeout, with margin, yet keeps the test short.
    async with Receiver(KEY, SECRET, slow_answer_s=CLIENT_TIMEOUT_S * 4, huge_bytes=3_000_000) as receiver:
        yield receiver


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield session


async def post(
    http: aiohttp.ClientSession,
    rx: CallbackReceiver,
    body: bytes,
    *,
    key: str = KEY,
    secret: str = SECRET,
    allow_redirects: bool = False,
) -> tuple[int, bytes]:
    hdrs = callbacks.headers(body, key, secret)
    async with http.post(rx.url, data=body, headers=hdrs, allow_redirects=allow_redirects) as resp:
        return resp.status, await resp.read()


async def test_url_is_loopback_callbacks_path(rx: Receiver) -> None:
    assert rx.url.startswith("http://127.0.0.1:")
    assert rx.url.endswith("/callbacks")


async def test_good_signature_accepted(rx: Receiver, http: aiohttp.ClientSession) -> None:
    body = deposit_body()
    status, _ = await post(http, rx, body)
    assert status == 200
    [rec] = rx.delivered
    assert rec.raw == body
    assert rec.body["id"] == 7
    assert rec.body["transactions"][0]["confirmations"] == "10"
    assert rec.status_code_answered == 200
    assert rec.key_ok and rec.signature_ok
    assert rx.requests == [rec]


async def test_bad_signature_rejected(rx: Receiver, http: aiohttp.ClientSession) -> None:
    status, _ = await post(http, rx, deposit_body(), secret="wrong-secret")
    assert status == 403
    assert rx.delivered == []
    [rec] = rx.requests
    assert (rec.status_code_answered, rec.outcome) == (403, "rejected")
    assert (rec.key_ok, rec.signature_ok) == (True, False)
    assert rec.body["id"] == 7  # still parsed, for diagnostics


async def test_body_changed_after_signing_rejected(rx: Receiver, http: aiohttp.ClientSession) -> None:
    body = deposit_body()
    hdrs = callbacks.headers(body, KEY, SECRET)
    async with http.post(rx.url, data=body.replace(b'"10"', b'"11"'), headers=hdrs) as resp:
        assert resp.status == 403
    assert rx.delivered == []


async def test_wrong_key_rejected(rx: Receiver, http: aiohttp.ClientSession) -> None:
    status, _ = await post(http, rx, deposit_body(), key="someone-else")
    assert status == 403
    assert rx.delivered == []
    [rec] = rx.requests
    assert (rec.key_ok, rec.signature_ok) == (False, True)


async def test_missing_headers_rejected(rx: Receiver, http: aiohttp.ClientSession) -> None:
    async with http.post(rx.url, data=deposit_body()) as resp:
        assert resp.status == 403


async def test_signed_non_json_is_400(rx: Receiver, http: aiohttp.ClientSession) -> None:
    status, _ = await post(http, rx, b"not json")
    assert status == 400
    assert rx.delivered == []


async def test_plan_500_500_200(rx: Receiver, http: aiohttp.ClientSession) -> None:
    rx.plan([500, 500, 200])
    body = deposit_body()
    statuses = [(await post(http, rx, body))[0] for _ in range(4)]
    assert statuses == [500, 500, 200, 200]  # plan used up: 200
    assert [r.status_code_answered for r in rx.requests] == [500, 500, 200, 200]
    assert len(rx.delivered) == 2
    assert rx.pending_plan == []


async def test_rejected_requests_do_not_consume_plan(rx: Receiver, http: aiohttp.ClientSession) -> None:
    rx.plan([503])
    assert (await post(http, rx, deposit_body(), secret="bad"))[0] == 403
    assert (await post(http, rx, deposit_body()))[0] == 503


async def test_any_2xx_counts_as_delivered(rx: Receiver, http: aiohttp.ClientSession) -> None:
    rx.plan([201, 204])
    assert (await post(http, rx, deposit_body(1)))[0] == 201
    assert (await post(http, rx, deposit_body(2)))[0] == 204
    assert [r.body["id"] for r in rx.delivered] == [1, 2]


async def test_drop(rx: Receiver, http: aiohttp.ClientSession) -> None:
    rx.plan(["drop"])
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(http, rx, deposit_body())
    [rec] = rx.requests
    assert (rec.outcome, rec.status_code_answered, rec.accepted) == ("drop", 0, False)
    assert (await post(http, rx, deposit_body()))[0] == 200  # the next one goes through
    assert len(rx.delivered) == 1


async def test_timeout(rx: Receiver, http: aiohttp.ClientSession) -> None:
    rx.plan(["timeout"])
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await post(http, rx, deposit_body())
    assert time.monotonic() - started < rx.slow_answer_s
    [rec] = rx.requests
    assert rec.outcome == "timeout"
    assert rx.delivered == []  # the client never saw the late answer
    assert (await post(http, rx, deposit_body()))[0] == 200


async def test_stop_does_not_wait_for_slow_answer(http: aiohttp.ClientSession) -> None:
    receiver = Receiver(KEY, SECRET, slow_answer_s=60.0)
    await receiver.start()
    receiver.plan(["timeout"])
    with pytest.raises(TimeoutError):
        await post(http, receiver, deposit_body())
    started = time.monotonic()
    await receiver.stop()
    assert time.monotonic() - started < 5.0


async def test_redirect_not_followed(rx: Receiver, http: aiohttp.ClientSession) -> None:
    rx.plan(["redirect"])
    body = deposit_body()
    hdrs = callbacks.headers(body, KEY, SECRET)
    async with http.post(rx.url, data=body, headers=hdrs, allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/elsewhere"
    assert rx.delivered == []
    assert rx.redirect_follows == 0


async def test_redirect_followed_is_counted(rx: Receiver, http: aiohttp.ClientSession) -> None:
    rx.plan(["redirect"])
    status, _ = await post(http, rx, deposit_body(), allow_redirects=True)
    assert status == 200  # the target answers, but it is not a delivery
    assert rx.redirect_follows == 1
    assert rx.delivered == []


async def test_huge_error_body(rx: Receiver, http: aiohttp.ClientSession) -> None:
    rx.plan(["huge"])
    status, data = await post(http, rx, deposit_body())
    assert status == 500
    assert len(data) == rx.huge_bytes
    assert rx.requests[0].outcome == "huge"
    assert rx.delivered == []


def test_plan_rejects_unknown_entries() -> None:
    receiver = Receiver(KEY, SECRET)
    for entry in ("explode", 99, 600, True):
        with pytest.raises(ValueError):
            receiver.plan([entry])
    assert receiver.pending_plan == []


async def test_wait_delivered_wakes_on_arrival(rx: Receiver, http: aiohttp.ClientSession) -> None:
    waiter = asyncio.create_task(rx.wait_delivered(2, timeout_s=5))
    await post(http, rx, deposit_body(1))
    assert not waiter.done()
    await post(http, rx, deposit_body(2))
    delivered = await asyncio.wait_for(waiter, 5)
    assert [r.body["id"] for r in delivered] == [1, 2]


async def test_wait_for_timeout_reports_what_arrived(rx: Receiver, http: aiohttp.ClientSession) -> None:
    rx.plan([500])
    await post(http, rx, deposit_body(42))
    with pytest.raises(TimeoutError, match=r"1 request\(s\):\n  answered 500: confirmed .* id=42"):
        await rx.wait_for(lambda r: len(r.delivered) > 0, timeout_s=0.2)


def test_describe_one_line() -> None:
    body = deposit_body(9)
    rec = Received(json.loads(body), body, 200, 0.0)
    line = describe(rec)
    assert "\n" not in line
    for part in ("confirmed", "USDT", "25.000000", "tx=0xababab", "conf=10", "id=9"):
        assert part in line


def test_describe_tolerates_garbage() -> None:
    assert "id=?" in describe(Received({"transactions": "x", "currency_received": 3}, b"", 403, 0.0))


async def test_run_standalone(http: aiohttp.ClientSession) -> None:
    seen: list[Received] = []
    started: asyncio.Future[CallbackReceiver] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_standalone("127.0.0.1", 0, KEY, SECRET, on_callback=seen.append, ready=started.set_result)
    )
    try:
        receiver = await asyncio.wait_for(started, 5)
        assert (await post(http, receiver, deposit_body(5)))[0] == 200
        assert [r.body["id"] for r in seen] == [5]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# ----------------------------------------------------------------------------------- coinskro


def coinskro_body(
    event: str = "payment_completed", amount: int = 150_000, reference: str = "PAY_abc123xyz"
) -> bytes:
    return coinskro.build_body(
        event=event, at=1_770_374_100, payment_reference=reference,
        integration_id="123e4567-e89b-12d3-a456-426614174000", amount=amount, decimals=8, currency="BTC",
        status=PaymentStatus(event.removeprefix("payment_")), customer_email="customer@example.com",
        customer_reference="CUST_12345", meta_data='{"order_id": "123"}',
    )  # fmt: skip


@pytest.fixture
async def crx() -> AsyncIterator[Receiver]:
    async with Receiver(secret=SECRET, format="coinskro") as receiver:
        yield receiver


async def post_coinskro(
    http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str] | None = None
) -> int:
    sent = coinskro.headers(body, SECRET) if headers is None else headers
    async with http.post(url, data=body, headers=sent) as resp:
        return resp.status


async def test_coinskro_webhook_accepted_with_its_exact_amount(
    crx: Receiver, http: aiohttp.ClientSession
) -> None:
    assert crx.url.startswith("http://127.0.0.1:") and crx.url.endswith("/webhooks/coinskro")
    body = coinskro_body()
    assert await post_coinskro(http, crx.url, body) == 200
    [rec] = crx.delivered
    assert (rec.raw, rec.format, rec.key_header, rec.problem) == (body, "coinskro", None, "")
    assert rec.body["event"] == "payment_completed"
    # A Decimal with the digits sent, not the float 0.0015.
    assert f"{rec.body['data']['amount']:f}" == "0.00150000"
    assert rec.signature_header == coinskro.sign(body, SECRET)


async def test_coinskro_forgeries_are_401_and_say_why(crx: Receiver, http: aiohttp.ClientSession) -> None:
    body = coinskro_body()
    signed = coinskro.headers(body, SECRET)
    forged = {
        "amount changed": (body.replace(b'"amount":0.00150000', b'"amount":9.00150000'), signed),
        "another secret": (body, coinskro.headers(body, "another-secret")),
        "a coinspaid signature": (body, callbacks.headers(body, KEY, SECRET)),
        "no signature": (body, {"Content-Type": "application/json"}),
    }
    for what, (raw, headers) in forged.items():
        assert await post_coinskro(http, crx.url, raw, headers) == 401, what
    assert crx.delivered == []
    assert [(r.status_code_answered, r.outcome) for r in crx.requests] == [(401, "rejected")] * 4
    bad = "bad signature: another secret, or the body changed on the way"
    missing = "no X-Coinskro-Signature header"
    # A CoinsPaid signature comes in X-Processing-Signature: for this format, no signature at all.
    assert [r.problem for r in crx.requests] == [bad, bad, missing, missing]


async def test_coinskro_signed_non_json_is_400_and_plan_applies(
    crx: Receiver, http: aiohttp.ClientSession
) -> None:
    assert await post_coinskro(http, crx.url, b"[1, 2]") == 400
    crx.plan([503])
    body = coinskro_body()
    assert [await post_coinskro(http, crx.url, body) for _ in range(2)] == [503, 200]
    assert [r.status_code_answered for r in crx.requests] == [400, 503, 200]
    assert len(crx.delivered) == 1


async def test_formats_do_not_accept_each_other(
    rx: Receiver, crx: Receiver, http: aiohttp.ClientSession
) -> None:
    webhook, callback = coinskro_body(), deposit_body()
    async with http.post(rx.url, data=webhook, headers=coinskro.headers(webhook, SECRET)) as resp:
        assert resp.status == 403  # no X-Processing-Key, no X-Processing-Signature
    assert await post_coinskro(http, crx.url, callback, callbacks.headers(callback, KEY, SECRET)) == 401
    assert rx.delivered == [] and crx.delivered == []


def test_receiver_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown callback format 'coinbase'"):
        Receiver(KEY, SECRET, format="coinbase")
    with pytest.raises(ValueError, match="the secret is empty"):
        Receiver(secret="", format="coinskro")
    with pytest.raises(ValueError, match="format coinspaid needs the key"):
        Receiver(secret=SECRET)


def test_describe_coinskro_keeps_the_digits() -> None:
    body = coinskro_body("payment_linked", amount=1, reference="PAY_sat")
    rec = Received(json.loads(body, parse_float=Decimal), body, 200, 0.0, format="coinskro")
    line = describe(rec)
    assert "\n" not in line
    for part in ("payment_linked", "BTC", " 0.00000001 ", "ref=PAY_sat", "customer=CUST_12345"):
        assert part in line, line
    garbage = Received({"data": 3}, b"", 401, 0.0, format="coinskro")
    assert describe(garbage).startswith("?")


async def test_run_standalone_coinskro(http: aiohttp.ClientSession) -> None:
    seen: list[Received] = []
    started: asyncio.Future[CallbackReceiver] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_standalone(
            "127.0.0.1", 0, "", SECRET, on_callback=seen.append, ready=started.set_result, format="coinskro"
        )
    )
    try:
        receiver = await asyncio.wait_for(started, 5)
        assert await post_coinskro(http, receiver.url, coinskro_body()) == 200
        assert [r.body["data"]["payment_reference"] for r in seen] == ["PAY_abc123xyz"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_receiver_command_coinskro(tmp_path: Path) -> None:
    """`deposit-watcher receiver --format coinskro` as a process: one line per webhook, forgeries named."""
    port = free_port()
    output = tmp_path / "receiver.out"
    command = [sys.executable, "-m", "watcher", "receiver", "--format", "coinskro", "--listen",
               f"127.0.0.1:{port}", "--secret", SECRET]  # fmt: skip
    body = coinskro_body()
    url = f"http://127.0.0.1:{port}/webhooks/coinskro"
    with open(output, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        _wait_for_line(proc, output, "listening on ")
        assert _post_sync(url, body, coinskro.headers(body, SECRET)) == 200
        assert _post_sync(url, body + b" ", coinskro.headers(body, SECRET)) == 401
    finally:
        proc.terminate()
        code = proc.wait(timeout=10)
    text = output.read_text("utf-8")
    assert code == 0, text
    lines = text.splitlines()
    assert lines[0] == f"listening on {url} (callback_url, format coinskro); Ctrl-C stops", text
    assert lines[1].startswith("verified payment_completed") and " 0.00150000 ref=PAY_abc123xyz " in lines[1]
    assert lines[2].startswith("REJECTED 401 [bad signature"), text
    assert SECRET not in text


def test_receiver_command_key_goes_with_the_format() -> None:
    cases = {
        ("--secret", "s"): "--key is required for --format coinspaid",
        ("--format", "coinskro", "--key", "k", "--secret", "s"): "--key: format coinskro sends no key",
    }
    for args, message in cases.items():
        done = subprocess.run(
            [sys.executable, "-m", "watcher", "receiver", *args], capture_output=True, text=True, timeout=30,
            cwd=ROOT,
        )  # fmt: skip
        assert (done.returncode, done.stdout) == (1, ""), (args, done)
        assert done.stderr.startswith(f"error: {message}"), (args, done.stderr)


def _wait_for_line(proc: subprocess.Popen[bytes], output: Path, start: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, output.read_text()
        if any(line.startswith(start) for line in output.read_text("utf-8").splitlines()):
            return
        time.sleep(0.05)
    raise AssertionError(f"no {start!r} line within 30 s:\n{output.read_text()}")


def _post_sync(url: str, body: bytes, headers: dict[str, str]) -> int:
    parts = urlsplit(url)
    conn = HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request("POST", parts.path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()
