"""The merchant receiver (watcher.receiver) and the test harness on it (devnet.receiver), driven by a real
aiohttp client over loopback."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from devnet.receiver import Receiver
from watcher import callbacks
from watcher.model import Deposit, DepositStatus
from watcher.receiver import CallbackReceiver, Received, describe, run_standalone

KEY = "merchant-public-key"
SECRET = "merchant-secret"
CLIENT_TIMEOUT_S = 0.5


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
