"""watcher/payment_tracker.py against a real SQLite store: payments moved in the transactions of the plans
that change their deposits, webhooks queued with them, expiry sweeps on the time seen, the seen clock.
(The same paths against real nodes and the real daemon: tests/test_payments_e2e.py.)"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.test_api_document import SHOP_A, ApiHarness, open_harness
from watcher.config import PaymentsConfig
from watcher.model import Deposit, DepositStatus, Payment, PaymentStatus, Plan, QueuedCallback, TrackedDeposit
from watcher.payment_tracker import PaymentTracker, SeenClock, no_callbacks

ALL_EVENTS = ("payment_linked", "payment_completed", "payment_abandoned", "payment_canceled")


def test_seen_clock_counts_long_gaps_as_blind_and_vouches_less_without_a_mempool() -> None:
    clock = SeenClock(margin_s=60.0, blind_after_s=5.0, at_head=None, blind_s=0.0)
    assert clock.watch().seen_until is None
    clock.saw_head(1_000.0)
    clock.saw_head(1_004.0)  # a normal poll
    assert (clock.watch().seen_until, clock.watch().blind_total_s) == (944.0, 0.0)
    clock.saw_head(1_100.0)  # 96 s without a look at the head: an outage
    assert clock.watch().blind_total_s == 96.0
    clock.saw_head(1_050.0)  # an older reading never moves it back
    assert clock.at_head == 1_100.0
    restarted = SeenClock(margin_s=0.0, blind_after_s=5.0, at_head=1_100.0, blind_s=96.0)
    restarted.saw_head(1_400.0)  # the daemon was stopped for 300 s: that counts too
    assert (restarted.watch().seen_until, restarted.watch().blind_total_s) == (1_400.0, 396.0)


@pytest.fixture
async def harness(tmp_path: Path, store_location: str) -> AsyncIterator[ApiHarness]:
    async with open_harness(tmp_path, store_location) as h:
        a = h.integration(SHOP_A)
        callback = replace(a.callback, format="coinskro", events=ALL_EVENTS)
        coinskro = replace(a, callback=callback, payments=PaymentsConfig(grace_s=100.0))
        h.reconfigure(integrations=tuple(coinskro if i.id == SHOP_A else i for i in h.config.integrations))
        yield h


async def tracker_for(h: ApiHarness) -> PaymentTracker:
    tracker = PaymentTracker(h.store, h.config)
    await tracker.load({"bitcoin": True, "ethereum": False})
    return tracker


async def new_payment(h: ApiHarness, key: str, expires_in_s: int = 600) -> Payment:
    made = await h.client(SHOP_A).call(
        "POST", "/v1/payments", headers={"Idempotency-Key": key},
        json_body={"amount": "0.001", "currency": "BTC", "expires_in_s": expires_in_s},
    )  # fmt: skip
    assert made.status == 201, made.body
    found = await h.store.payment(SHOP_A, made.body["payment_reference"])
    assert found is not None
    return found


async def deposit_change(
    h: ApiHarness, tracker: PaymentTracker, payment: Payment, status: DepositStatus, earlier: Deposit | None
) -> Deposit:
    """One ledger plan for a deposit of 0.001 BTC to the payment's address, applied as a follower does
    (the load, the plan, then the tracker, in one transaction)."""
    now = time.time()
    async with h.store.transaction() as tx:
        if earlier is None:
            view = await tx.load("bitcoin", (), [payment.address_id])  # the transfer's address
            deposit = Deposit(
                view.next_id, "bitcoin", "BTC", payment.address_id, payment.address, payment.reference,
                f"{view.next_id:064x}", 0, 100_000, None, None, 0, status, "", now, now,
            )  # fmt: skip
            plan = Plan(inserts=(TrackedDeposit(deposit, None, None, (), None),))
        else:
            await tx.load("bitcoin", [(earlier.txid, earlier.currency, earlier.address_id, earlier.tx_index)])
            deposit = replace(earlier, status=status, confirmations=2, block_height=101, updated_at=now)
            plan = Plan(updates=(TrackedDeposit(deposit, None, None, (), None),))
        callback = QueuedCallback(deposit.id, status, b"{}", deposit.txid, deposit.confirmations, now)
        await tx.apply(replace(plan, callbacks=(callback,)), no_callbacks(h.config))
        await tracker.after_plan(tx, "bitcoin", plan, now)
    return deposit


async def test_deposits_move_the_payment_and_queue_its_webhooks_not_callbacks(harness: ApiHarness) -> None:
    h = harness
    tracker = await tracker_for(h)
    payment = await new_payment(h, "order-1")
    seen = await deposit_change(h, tracker, payment, DepositStatus.NOT_CONFIRMED, None)
    assert (await h.store.payment(SHOP_A, payment.reference)).status is PaymentStatus.LINKED  # type: ignore[union-attr]
    await deposit_change(h, tracker, payment, DepositStatus.CONFIRMED, seen)
    done = await h.store.payment(SHOP_A, payment.reference)
    assert done is not None and done.status is PaymentStatus.COMPLETED and done.received == 100_000
    hooks = await h.store.outbox_entries(payment_id=payment.id)
    assert [json.loads(e.body)["event"] for e in hooks] == ["payment_linked", "payment_completed"]
    # The deposit is recorded and in the event feed, but no CoinsPaid callback is queued for it.
    assert await h.store.outbox_entries(deposit_id=seen.id) == []
    assert [e.status for e in await h.store.events(SHOP_A)] == [
        DepositStatus.NOT_CONFIRMED,
        DepositStatus.CONFIRMED,
    ]


async def test_a_payment_ended_receives_a_late_payment_as_a_deposit(harness: ApiHarness) -> None:
    h = harness
    tracker = await tracker_for(h)
    payment = await new_payment(h, "order-2")
    status = await h.client(SHOP_A).call("POST", f"/v1/payments/{payment.reference}/cancel")
    assert status.status == 200
    late = await deposit_change(h, tracker, payment, DepositStatus.NOT_CONFIRMED, None)
    assert (await h.store.payment(SHOP_A, payment.reference)).status is PaymentStatus.CANCELED  # type: ignore[union-attr]
    assert tracker.late_payments == 1
    async with h.store.transaction() as tx:
        assert [d.id for d in await tx.payment_deposits(payment)] == [late.id]


async def test_expiry_sweeps_only_on_time_seen(harness: ApiHarness) -> None:
    h = harness
    tracker = await tracker_for(h)
    payment = await new_payment(h, "order-3", expires_in_s=1)
    await asyncio.sleep(1.1)
    # Bitcoin was never seen at its head: nothing ends, however late it is.
    assert await tracker.sweep() == []
    tracker.saw_head("bitcoin", time.time())
    (change,) = await tracker.sweep()
    assert change.status is PaymentStatus.ABANDONED
    ended = await h.store.payment(SHOP_A, payment.reference)
    assert ended is not None and ended.status is PaymentStatus.ABANDONED and ended.ended_at is not None
    (hook,) = await h.store.outbox_entries(payment_id=payment.id)
    assert json.loads(hook.body)["event"] == "payment_abandoned"
    # The clock was kept: a new tracker (a restart) starts from it.
    again = await tracker_for(h)
    assert again.clocks["bitcoin"].at_head == tracker.clocks["bitcoin"].at_head
    assert again.watch("ethereum").seen_until is None


async def test_an_integration_taking_another_format_gets_no_callbacks(harness: ApiHarness) -> None:
    assert no_callbacks(harness.config) == frozenset({SHOP_A})


async def test_a_payment_whose_integration_left_the_config_still_moves_without_a_webhook(
    harness: ApiHarness,
) -> None:
    h = harness
    payment = await new_payment(h, "order-4")
    tracker = await tracker_for(h)
    tracker.config = replace(h.config, integrations=tuple(i for i in h.config.integrations if i.id != SHOP_A))
    await deposit_change(h, tracker, payment, DepositStatus.NOT_CONFIRMED, None)
    moved = await h.store.payment(SHOP_A, payment.reference)
    assert moved is not None and moved.status is PaymentStatus.LINKED
    assert await h.store.outbox_entries(payment_id=payment.id) == []
