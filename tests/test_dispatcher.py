"""The dispatcher against a real aiohttp receiver and a real SQLite store: schedule, faults, order, resend."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import socket
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from aiohttp import web

from devnet.receiver import Receiver
from watcher import coinskro
from watcher.callbacks import KEY_HEADER, SIGNATURE_HEADER, sign
from watcher.config import DEFAULT_INTEGRATION_ID, MerchantConfig
from watcher.dispatcher import Dispatcher
from watcher.model import AddressSource, DepositStatus, OutboxState, PaymentStatus
from watcher.receiver import Received
from watcher.store import NewAddress, NewPayment, Store

KEY, SECRET = "shop-key", "shop-secret"


@pytest.fixture
async def store(store_location: str) -> AsyncIterator[Store]:
    s = await Store.open(store_location)
    await s.sync_addresses("eth", [NewAddress("eth", "ETH", b"\x01" * 20, "0xabc", "customer-1")])
    yield s
    await s.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver(key=KEY, secret=SECRET, slow_answer_s=3.0) as rx:
        yield rx


def merchant(url: str, schedule: tuple[float, ...] = (0.005, 0.01), timeout_s: float = 1.0) -> MerchantConfig:
    return MerchantConfig(
        callback_url=url, key=KEY, secret=SECRET, timeout_s=timeout_s, retry_schedule_min=schedule
    )


async def queue(store: Store, status: DepositStatus = DepositStatus.NOT_CONFIRMED, txid: str = "0xtx") -> int:
    async with store.transaction() as tx:
        deposit_id = await tx.find_deposit("eth", txid, "ETH", 1, -1)
        if deposit_id is None:
            deposit_id = await tx.insert_deposit(
                chain="eth", currency="ETH", address_id=1, txid=txid, tx_index=-1, amount=5, sender=None,
                nonce=None, inputs=(), now=1.0,
            )  # fmt: skip
        body = b'{"id":%d,"status":"%s"}' % (deposit_id, str(status).encode())
        await tx.enqueue_callback(deposit_id, status, body, now=0.0)
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


async def wait_state(store: Store, state: OutboxState, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if any(e.state is state for e in await store.outbox_entries()):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no outbox entry reached {state}: {await store.outbox_entries()}")


async def test_delivered_signed_body_exactly_as_stored(store: Store, receiver: Receiver) -> None:
    deposit_id = await queue(store)
    async with dispatching(store, merchant(receiver.url)):
        [got] = await receiver.wait_delivered(1, timeout_s=10)
        await wait_state(store, OutboxState.DELIVERED)
    [entry] = await store.outbox_entries()
    assert got.raw == entry.body and got.body["id"] == deposit_id
    assert sign(got.raw, SECRET) == sign(entry.body, SECRET)  # the receiver verified it independently too


async def test_500_twice_then_200_follows_schedule_and_logs_attempts(
    store: Store, receiver: Receiver
) -> None:
    receiver.plan([500, 500, 200])
    await queue(store)
    async with dispatching(store, merchant(receiver.url, schedule=(0.005, 0.01))):
        await receiver.wait_delivered(1, timeout_s=15)
        await wait_state(store, OutboxState.DELIVERED)
    [entry] = await store.outbox_entries()
    attempts = await store.attempts(entry.id)
    assert [a.http_status for a in attempts] == [500, 500, 200]
    first = attempts[0].attempted_at
    # the schedule is read as minutes after the first attempt: +0.3 s, then +0.6 s
    assert attempts[1].attempted_at - first >= 0.3 - 0.01
    assert attempts[2].attempted_at - first >= 0.6 - 0.01
    assert entry.attempts == 3


async def test_timeout_is_retried(store: Store, receiver: Receiver) -> None:
    receiver.plan(["timeout", 200])
    await queue(store)
    async with dispatching(store, merchant(receiver.url, timeout_s=0.5)):
        await wait_state(store, OutboxState.DELIVERED)
    [entry] = await store.outbox_entries()
    attempts = await store.attempts(entry.id)
    assert "timeout" in attempts[0].error and attempts[1].http_status == 200


async def test_unreachable_merchant_fails_after_schedule(store: Store) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    await queue(store)
    async with dispatching(store, merchant(f"http://127.0.0.1:{port}/cb", schedule=(0.002, 0.004))):
        await wait_state(store, OutboxState.FAILED)
    [entry] = await store.outbox_entries()
    attempts = await store.attempts(entry.id)
    assert len(attempts) == 3 and all(a.http_status is None and a.error for a in attempts)


async def test_redirect_and_drop_are_failed_attempts(store: Store, receiver: Receiver) -> None:
    receiver.plan(["redirect", "drop", "huge", 200])
    await queue(store)
    async with dispatching(store, merchant(receiver.url, schedule=(0.001, 0.002, 0.003))):
        await wait_state(store, OutboxState.DELIVERED)
    [entry] = await store.outbox_entries()
    attempts = await store.attempts(entry.id)
    assert [a.http_status for a in attempts] == [302, None, 500, 200]
    assert receiver.redirect_follows == 0
    assert len(attempts[2].response_excerpt) <= 512


async def test_never_not_confirmed_after_confirmed(store: Store, receiver: Receiver) -> None:
    receiver.plan([500])
    deposit_id = await queue(store, DepositStatus.NOT_CONFIRMED)
    async with dispatching(store, merchant(receiver.url, schedule=(0.005,))):
        await receiver.wait_for(lambda rx: len(rx.requests) >= 1, timeout_s=10)
        await queue(store, DepositStatus.CONFIRMED)  # supersedes the failing not_confirmed
        await receiver.wait_delivered(1, timeout_s=10)
        await asyncio.sleep(0.6)  # past the not_confirmed's retry time
    statuses = [r.body["status"] for r in receiver.requests]
    assert statuses == ["not_confirmed", "confirmed"]
    states = {str(e.status): e.state for e in await store.outbox_entries(deposit_id=deposit_id)}
    assert states == {"not_confirmed": OutboxState.SUPERSEDED, "confirmed": OutboxState.DELIVERED}


async def test_resend_delivers_same_body_again(store: Store, receiver: Receiver) -> None:
    deposit_id = await queue(store, DepositStatus.CONFIRMED)
    async with dispatching(store, merchant(receiver.url)):
        await receiver.wait_delivered(1, timeout_s=10)
        await wait_state(store, OutboxState.DELIVERED)
        again = await store.resend(deposit_id)
        assert again is not None
        await receiver.wait_delivered(2, timeout_s=10)
    first, second = receiver.delivered
    assert first.raw == second.raw


async def test_each_callback_is_sent_once_when_all_succeed(store: Store, receiver: Receiver) -> None:
    """Pages are read while earlier entries are still in flight: none of those may be sent again."""
    count = 3000
    async with store.transaction() as tx:
        for n in range(count):
            deposit_id = await tx.insert_deposit(
                chain="eth", currency="ETH", address_id=1, txid=f"0x{n:064x}", tx_index=-1, amount=n + 1,
                sender=None, nonce=None, inputs=(), now=1.0,
            )  # fmt: skip
            await tx.enqueue_callback(deposit_id, DepositStatus.CONFIRMED, b'{"id":%d}' % deposit_id, now=0.0)
    config = MerchantConfig(callback_url=receiver.url, key=KEY, secret=SECRET, timeout_s=5, concurrency=20)
    async with dispatching(store, config):
        for _ in range(600):
            if (await store.outbox_counts()).get("delivered") == count:
                break
            await asyncio.sleep(0.1)
    assert (await store.outbox_counts()).get("delivered") == count
    assert len(receiver.requests) == count


# ------------------------------------------------------------------------------ the coinskro format


class RawReceiver:
    """A loopback endpoint that verifies nothing: it keeps each request's exact bytes and headers and
    answers per plan (then 200), so the test checks the signature itself, independently of the sender."""

    def __init__(self, plan: list[int]) -> None:
        self.plan = plan
        self.requests: list[tuple[bytes, dict[str, str]]] = []
        self._arrived = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> RawReceiver:
        app = web.Application()
        app.router.add_post("/webhooks/coinskro", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/webhooks/coinskro"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append((await request.read(), dict(request.headers)))
        self._arrived.set()
        return web.Response(status=self.plan.pop(0) if self.plan else 200)

    async def wait_requests(self, count: int, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.requests) < count:
                self._arrived.clear()
                await self._arrived.wait()


def webhook_body(deposit_id: int) -> bytes:
    return coinskro.build_body(
        event="payment_completed", at=1_770_374_100, payment_reference=f"PAY_{deposit_id}",
        integration_id=DEFAULT_INTEGRATION_ID, amount=10**18 + 1, decimals=18, currency="ETH",
        status=PaymentStatus.COMPLETED, customer_email=None, customer_reference="CUST_1", meta_data=None,
    )  # fmt: skip


def hmac_sha256(raw: bytes, secret: str) -> str:
    """Computed here, independently of watcher.coinskro."""
    return hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


async def test_a_coinskro_integration_s_rows_go_out_with_its_signature(store: Store) -> None:
    """The format is the integration's: its rows carry X-Coinskro-Signature (HMAC-SHA256 of the exact
    bytes) and no CoinsPaid header, a retry sends the same bytes and signature, and after a reload to
    coinspaid a resend of the same row is signed the CoinsPaid way."""
    async with store.transaction() as tx:
        deposit_id = await tx.insert_deposit(
            chain="eth", currency="ETH", address_id=1, txid="0xpaid", tx_index=-1, amount=10**18 + 1,
            sender=None, nonce=None, inputs=(), now=1.0,
        )  # fmt: skip
        await tx.enqueue_callback(deposit_id, DepositStatus.CONFIRMED, webhook_body(deposit_id), now=0.0)
    async with RawReceiver([500]) as rx:
        config = replace(merchant(rx.url, schedule=(0.005,)), key="", format="coinskro")
        async with dispatching(store, config) as d:
            await rx.wait_requests(2)
            await wait_state(store, OutboxState.DELIVERED)
            d.callbacks = {DEFAULT_INTEGRATION_ID: merchant(rx.url)}  # what a reload to coinspaid does
            assert await store.resend(deposit_id) is not None
            await rx.wait_requests(3)
    (first, first_headers), (second, second_headers), (third, third_headers) = rx.requests
    assert first == second == third == webhook_body(deposit_id)
    for headers in (first_headers, second_headers):
        assert headers[coinskro.SIGNATURE_HEADER] == hmac_sha256(first, SECRET)
        assert headers["Content-Type"] == "application/json"
        assert KEY_HEADER not in headers and SIGNATURE_HEADER not in headers
    assert (third_headers[KEY_HEADER], third_headers[SIGNATURE_HEADER]) == (KEY, sign(third, SECRET))
    assert coinskro.SIGNATURE_HEADER not in third_headers
    first_entry = min(await store.outbox_entries(), key=lambda e: e.id)
    assert [a.http_status for a in await store.attempts(first_entry.id)] == [500, 200]


async def test_a_payments_webhooks_arrive_in_order_each_once_delivered(
    store: Store, receiver: Receiver
) -> None:
    """linked fails twice, completed is queued behind it: completed is not sent before linked is delivered
    (never superseded: both reach the merchant), while another payment's webhook is not held up."""
    shop = "11111111-1111-1111-1111-111111111111"
    ids = []
    async with store.transaction() as tx:
        for n in (1, 2):
            new = NewAddress(
                "eth", "ETH", bytes([n + 1]) * 20, f"0xp{n}", f"PAY_{n}", shop, AddressSource.PAYMENT
            )
            address = await tx.insert_address(new, 1.0, 0)
            payment = await tx.insert_payment(
                NewPayment(f"PAY_{n}", shop, "eth", "ETH", address.id, 10**18, None, None, None, 1.0, 9.0,
                           f"k{n}", "h")
            )  # fmt: skip
            ids.append(payment.id)
        first, other = ids
        for payment_id, status in ((first, PaymentStatus.LINKED), (first, PaymentStatus.COMPLETED)):
            await tx.queue_payment_webhook(payment_id, status, _webhook(f"PAY_{payment_id}", status), 1.0)
    receiver.plan([500, 500])  # the first two requests: linked of the first payment (it is queued first)
    config = merchant(receiver.url, schedule=(0.005, 0.01, 0.02))
    d = Dispatcher(store, config, asyncio.Event(), callbacks={shop: config})
    task = asyncio.create_task(d.run())
    try:
        await receiver.wait_for(lambda rx: len(rx.requests) >= 1, timeout_s=10)
        async with store.transaction() as tx:  # queued while the first payment's linked is failing
            await tx.queue_payment_webhook(
                other, PaymentStatus.CANCELED, _webhook("PAY_2", PaymentStatus.CANCELED), 2.0
            )
        await receiver.wait_for(lambda rx: len({_event(r) for r in rx.delivered}) == 3, timeout_s=15)
        for _ in range(200):  # the results recorded too
            if all(e.state is OutboxState.DELIVERED for e in await store.outbox_entries()):
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    mine = [(_event(r), r.status_code_answered) for r in receiver.requests if _event(r)[0] == "PAY_1"]
    # linked until it is delivered, then completed: whatever the other payment's requests took of the plan
    linked_tries = [m for m in mine if m[0][1] == "payment_linked"]
    assert mine == [*linked_tries, (("PAY_1", "payment_completed"), 200)]
    assert [code for _, code in linked_tries][-1] == 200 and len(linked_tries) >= 2
    assert [_event(r) for r in receiver.delivered].count(("PAY_1", "payment_completed")) == 1
    states = [e.state for e in await store.outbox_entries(payment_id=first)]
    assert states == [OutboxState.DELIVERED, OutboxState.DELIVERED]


def _event(r: Received) -> tuple[str, str]:
    return (r.body["data"]["payment_reference"], r.body["event"])


def _webhook(reference: str, status: PaymentStatus) -> bytes:
    return coinskro.build_body(
        event=status.event, at=1.0, payment_reference=reference, integration_id="shop", amount=10**18,
        decimals=18, currency="ETH", status=status, customer_email=None, customer_reference=None,
        meta_data=None,
    )  # fmt: skip
