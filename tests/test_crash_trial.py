"""The crash trial in CI, at a smaller count: a fixed seed, plus `TRIAL_SEED` from the environment if set.

The full count runs by hand: `python -m tests.trials.crash_trial --deposits 50 --kills 10 --payments 24
--seed N [--store postgres]`. Payments for orders (tests/trials/payments.py) run in the same trial. In CI it
runs once per store backend: an SQLite file, and a PostgreSQL server of the trial's own.
Real anvil and bcoin nodes, the real daemon process (SIGKILLed and restarted), a faulty receiver; see
tests/trials/crash_trial.py. A failure message names the seed and the command that replays it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.trials import payments as pay
from tests.trials.crash_trial import STORES, TrialOptions, run_trial
from tests.trials.invariants import Currency, Placement, SentTransfer, check
from tests.trials.payment_invariants import (
    CATCH_UP_S,
    SEE_S,
    SWEEP_S,
    check_payments,
    live,
    predict,
    surely_ended,
)
from tests.trials.payments import CancelRecord, PaidTx, PaymentRecord
from watcher.model import DepositStatus
from watcher.receiver import Received
from watcher.store import NewAddress, Store

FIXED_SEED = 20_240_611
SEEDS = [FIXED_SEED, *([int(os.environ["TRIAL_SEED"])] if os.environ.get("TRIAL_SEED") else [])]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed-{s}" for s in SEEDS])
async def test_crash_trial_loses_and_invents_nothing(seed: int, store: str, tmp_path: Path) -> None:
    options = TrialOptions(
        deposits=20, kills=4, seed=seed, workdir=tmp_path, final_wait_s=180.0, payments=12, store=store
    )
    result = await run_trial(options)
    print(result.figures())
    assert result.ok, result.failure_message()
    assert result.kills >= 4, result.figures()
    assert result.report.deposits >= 20 and result.report.due_confirmed > 0, result.figures()
    # Every payment ended, each kind of end happened (the schedule makes each at least once).
    assert result.payments is not None and result.payments.payments == 12, result.figures()
    assert set(result.payments.by_status or {}) == {"completed", "abandoned", "canceled"}, result.figures()


# ------------------------------------------------------------------------ the checker catches violations
# The trial passing means something only if the checker fails when it should: each case below breaks one
# invariant in otherwise clean synthetic evidence and expects exactly that kind of violation.

SECRET = "s\u00e9cret"
USDT = Currency("ethereum", 6, 2)
PAID = SentTransfer("ethereum", "USDT", "0x" + "ab" * 32, 1, "0x" + "cd" * 20, "cust-\u00e9", 12_345_678)
PLACED = Placement(block_height=7, block_hash="0x" + "11" * 32, confirmations=3)


def _body(t: SentTransfer, deposit_id: int, status: str, confirmations: int, **change: Any) -> dict[str, Any]:
    amount = change.pop("amount", "12.345678")
    body: dict[str, Any] = {
        "id": deposit_id,
        "type": "deposit",
        "crypto_address": {"id": 5, "currency": t.currency, "address": t.address,
                           "foreign_id": t.foreign_id, "tag": None},
        "currency_sent": {"currency": t.currency, "amount": amount},
        "currency_received": {"currency": t.currency, "amount": amount, "amount_minus_fee": amount},
        "transactions": [{
            "id": deposit_id, "currency": t.currency, "transaction_type": "blockchain", "type": "deposit",
            "address": t.address, "tag": None, "amount": amount, "txid": change.pop("txid", t.txid),
            "confirmations": str(confirmations), "block_height": PLACED.block_height,
            "block_hash": PLACED.block_hash, "index": t.index, "network": "regtest", "chain": t.chain,
        }],
        "fees": [],
        "error": "",
        "status": status,
    }  # fmt: skip
    return body | change


def _received(body: dict[str, Any]) -> Received:
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return Received(body=json.loads(raw), raw=raw, status_code_answered=200, at=0.0)


def _sign(raw: bytes) -> str:
    return hmac.new(SECRET.encode(), raw, hashlib.sha512).hexdigest()


def _clean() -> list[dict[str, Any]]:
    return [_body(PAID, 9, "not_confirmed", 1), _body(PAID, 9, "confirmed", 2)]


CASES: dict[str, tuple[list[dict[str, Any]], Placement, str]] = {
    "clean": (_clean(), PLACED, ""),
    "missed": (_clean()[:1], PLACED, "missed"),
    "invented": ([*_clean(), _body(PAID, 10, "not_confirmed", 1, txid="0x" + "ee" * 32)], PLACED, "invented"),
    "order": ([*_clean(), _body(PAID, 9, "not_confirmed", 1)], PLACED, "not_confirmed after a final"),
    "amount": ([_clean()[0], _body(PAID, 9, "confirmed", 2, amount="12.345679")], PLACED, "amount"),
    "removed": (_clean(), Placement(), "not in the final chain"),
    "bytes": ([*_clean(), _body(PAID, 9, "confirmed", 3)], PLACED, "different bodies"),
    "two_ids": ([*_clean(), _body(PAID, 11, "confirmed", 2)], PLACED, "several ids"),
    "early": ([_clean()[0], _body(PAID, 9, "confirmed", 1)], PLACED, "confirmed with 1 < 2"),
    "both_final": ([*_clean(), _body(PAID, 9, "cancelled", 0, error="gone")], PLACED, "cancelled, but"),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_checker_finds_each_kind_of_violation(case: str, tmp_path: Path) -> None:
    bodies, placement, expected = CASES[case]
    store = await Store.open(str(tmp_path / "store.sqlite3"))
    await store.close()
    requests = [_received(b) for b in bodies]
    report = check(
        transfers=[PAID], final={PAID.key: placement}, currencies={"USDT": USDT}, requests=requests,
        signatures={r.raw: {_sign(r.raw)} for r in requests}, key="k", secret=SECRET,
        store=tmp_path / "store.sqlite3", daemon_running=True,
    )  # fmt: skip
    if not expected:
        assert report.ok, report.violations
        assert (report.delivered, report.by_status, report.due_confirmed) == (
            2, {"not_confirmed": 1, "confirmed": 1}, 1
        )  # fmt: skip
    else:
        assert any(expected in v for v in report.violations), report.violations


async def test_checker_verifies_signatures_and_the_daemon_itself(tmp_path: Path) -> None:
    store = await Store.open(str(tmp_path / "store.sqlite3"))
    await store.close()
    requests = [_received(b) for b in _clean()]
    forged = {r.raw: {_sign(r.raw + b" ")} for r in requests}
    report = check(
        transfers=[PAID], final={PAID.key: PLACED}, currencies={"USDT": USDT}, requests=requests,
        signatures=forged, key="k", secret=SECRET, store=tmp_path / "store.sqlite3",
        daemon_running=False,
    )  # fmt: skip
    assert sum("signature" in v for v in report.violations) == 2, report.violations
    assert "the daemon is not running at the end" in report.violations


async def test_checker_reads_the_store_of_either_backend(store_location: str) -> None:
    """The store's checks (deposits against the ground truth, callbacks left in the outbox) read an SQLite
    file and a PostgreSQL database alike: an invented deposit and a pending callback are found in both."""
    store = await Store.open(store_location)
    try:
        key = bytes.fromhex(PAID.address[2:])
        address = NewAddress("ethereum", "USDT", key, PAID.address, PAID.foreign_id)
        await store.sync_addresses("ethereum", [address])
        async with store.transaction() as tx:
            for txid in (PAID.txid, "0x" + "ee" * 32):  # the second: no transfer the scenario made
                deposit_id = await tx.insert_deposit(
                    chain="ethereum", currency="USDT", address_id=1, txid=txid, tx_index=PAID.index,
                    amount=PAID.amount, sender=None, nonce=None, inputs=(), now=1.0,
                )  # fmt: skip
            await tx.enqueue_callback(deposit_id, DepositStatus.NOT_CONFIRMED, b"{}", now=1.0)
    finally:
        await store.close()
    report = check(
        transfers=[PAID], final={PAID.key: PLACED}, currencies={"USDT": USDT}, requests=[], signatures={},
        key="k", secret=SECRET, store=store_location, daemon_running=True,
    )  # fmt: skip
    assert report.store_deposits == 2 and report.outbox == {"pending": 1}, report.violations
    assert any("0x" + "ee" * 32 in v and "no transfer the scenario made" in v for v in report.violations)
    assert "store: 1 callbacks still pending at the end" in report.violations


# ------------------------------------------------------------------------ the payments' checker
# The same for payments: clean synthetic evidence of a few payments' lives (what the trial did, when, and
# the webhooks and final statuses the daemon gave), then one violation at a time.

T0 = 1_000_000.0
SHOP = pay.SHOP
EVENTS = list(pay.EVENTS)


def _payment(
    kind: str, currency: str = "USDT", amount: int = 25_000_000, expires_in: int = 30
) -> PaymentRecord:
    key = f"order-{kind}"
    request = {
        "amount": "25", "currency": currency, "customer_email": "b@shop.example", "customer_reference": key,
        "meta_data": "{\"order\": 1}", "expires_in_s": expires_in,
    }  # fmt: skip
    p = PaymentRecord(key, kind, currency, amount, expires_in, request, sent_at=T0, answered_at=T0 + 0.1)
    p.made = {
        "payment_reference": f"PAY_{kind.upper()}", "address": "0x" + "ab" * 20, "amount": "25",
        "currency": currency, "expires_at": _iso(T0 + expires_in),
    }  # fmt: skip
    p.same_key = [p.reference]
    return p


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def _tx(p: PaymentRecord, seen: float, amount: int | None = None, confirmed: float | None = None) -> PaidTx:
    tx = PaidTx(f"0x{len(p.txs):064x}", 0, p.amount if amount is None else amount, seen, seen + 0.5)
    if confirmed is not None:
        tx.confirmed_lo, tx.confirmed_hi = confirmed - 0.5, confirmed
    p.txs.append(tx)
    return tx


def _end(p: PaymentRecord, status: str) -> None:
    p.final = {"status": status, "transactions": [{"txid": t.txid} for t in p.txs if t.gone_lo is None]}


def _hook(p: PaymentRecord, event: str, at: float = T0, amount: str = "25.000000") -> dict[str, Any]:
    data = {
        "payment_reference": p.reference, "integration_id": SHOP, "amount": "AMOUNT", "currency": p.currency,
        "status": event.removeprefix("payment_"), "customer_email": p.request["customer_email"],
        "customer_reference": p.request["customer_reference"], "meta_data": p.request["meta_data"],
    }  # fmt: skip
    return {
        "event": event,
        "timestamp": _iso(int(at)).replace(".000000", ""),
        "data": data,
        "_amount": amount,
    }


def _webhook(hook: dict[str, Any], secret: str = pay.COINSKRO_SECRET) -> tuple[Received, str]:
    body = {k: v for k, v in hook.items() if not k.startswith("_")}
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False).replace('"AMOUNT"', hook["_amount"])
    raw = text.encode()
    signature = hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    answered = 500 if hook.get("_failed") else 200
    return Received(body=json.loads(raw), raw=raw, status_code_answered=answered, at=0.0), signature


def _lives() -> tuple[list[PaymentRecord], list[dict[str, Any]]]:
    """Five payments' clean evidence: completed, abandoned unpaid, abandoned underpaid, canceled by the
    merchant, canceled by a double-spend; and their webhooks in order."""
    paid = _payment("exact")
    _tx(paid, T0 + 2, confirmed=T0 + 5)
    _end(paid, "completed")
    unpaid = _payment("unpaid", expires_in=5)
    _end(unpaid, "abandoned")
    under = _payment("under", expires_in=5)
    _tx(under, T0 + 1, amount=under.amount - 1, confirmed=T0 + 3)
    _end(under, "abandoned")
    canceled = _payment("cancel")
    canceled.cancel = CancelRecord(T0 + 3, T0 + 3.2, 200, {"status": "canceled"})
    _end(canceled, "canceled")
    double = _payment("double", currency="BTC", amount=100_000)
    double.request["amount"] = double.made["amount"] = "0.001"
    gone = _tx(double, T0 + 1)
    gone.gone_lo, gone.gone_hi = T0 + 4, T0 + 4.5
    _end(double, "canceled")
    hooks = [
        _hook(paid, "payment_linked"), _hook(under, "payment_linked"), _hook(paid, "payment_completed"),
        _hook(canceled, "payment_canceled"), _hook(double, "payment_linked", amount="0.00100000"),
        _hook(double, "payment_canceled", amount="0.00100000"), _hook(unpaid, "payment_abandoned"),
        _hook(under, "payment_abandoned"),
    ]  # fmt: skip
    return [paid, unpaid, under, canceled, double], hooks


def _check_payments(
    payments: list[PaymentRecord], hooks: list[dict[str, Any]], *, forge: int | None = None,
    subscribed: list[str] = EVENTS, downs: list[tuple[float, float]] | None = None,
) -> list[str]:  # fmt: skip
    signed = [_webhook(h, "forged" if n == forge else pay.COINSKRO_SECRET) for n, h in enumerate(hooks)]
    signatures: dict[bytes, set[str]] = {}
    for r, sig in signed:
        signatures.setdefault(r.raw, set()).add(sig)
    _, violations = check_payments(
        payments=payments, requests=[r for r, _ in signed], signatures=signatures, secret=pay.COINSKRO_SECRET,
        integration_id=SHOP, events_subscribed=subscribed, grace_s=pay.GRACE_S, downs=downs or [],
    )  # fmt: skip
    return violations


def _broken(case: str) -> tuple[list[PaymentRecord], list[dict[str, Any]], dict[str, Any]]:
    payments, hooks = _lives()
    paid, unpaid = payments[0], payments[1]
    options: dict[str, Any] = {}
    if case == "lost":
        hooks = [h for h in hooks if h["event"] != "payment_completed"]
    elif case == "order":
        hooks = [hooks[2], *hooks[:2], *hooks[3:]]
    elif case == "repeat_after":
        hooks = [*hooks, _hook(paid, "payment_linked")]
    elif case == "invented":
        hooks = [*hooks, _hook(unpaid, "payment_linked")]
    elif case == "unknown":
        stranger = _payment("stranger")
        hooks = [*hooks, _hook(stranger, "payment_completed")]
    elif case == "status":
        _end(unpaid, "canceled")
        hooks = [*hooks[:-2], _hook(unpaid, "payment_canceled"), hooks[-1]]
    elif case == "bytes":
        hooks = [*hooks, _hook(paid, "payment_completed", at=T0 + 7)]
    elif case == "amount":
        hooks[2] = _hook(paid, "payment_completed", amount="25.000001")
    elif case == "precision":
        hooks[2] = _hook(paid, "payment_completed", amount="25.0")
    elif case == "signature":
        options["forge"] = 3
    elif case == "unsubscribed":
        options["subscribed"] = [e for e in EVENTS if e != "payment_canceled"]
    elif case == "two_per_key":
        paid.same_key = [paid.reference, "PAY_OTHER"]
    elif case == "tx_lost":
        paid.final["transactions"] = []
    elif case == "never_delivered":
        hooks[2]["_failed"] = True
    elif case == "coinspaid":
        hooks = [*hooks, {**_hook(paid, "payment_linked"), "crypto_address": {"id": 1}}]
    elif case == "still_open":
        _end(unpaid, "pending")
        hooks = [h for h in hooks if h["data"]["payment_reference"] != unpaid.reference]
    return payments, hooks, options


PAYMENT_CASES = {
    "clean": "",
    "lost": "webhooks lost",
    "order": "webhooks out of order",
    "repeat_after": "webhooks out of order",
    "invented": "webhooks invented",
    "unknown": "invented: no payment",
    "status": "wrong final status canceled",
    "bytes": "different bodies",
    "amount": "is not the asked 25.000000",
    "precision": "is not the asked 25.000000",
    "signature": "HMAC-SHA256",
    "unsubscribed": "not subscribed",
    "two_per_key": "one payment per Idempotency-Key",
    "tx_lost": "lost: its transaction",
    "still_open": "still pending",
    "never_delivered": "never delivered",
    "coinspaid": "a CoinsPaid callback at the Coinskro receiver",
}


@pytest.mark.parametrize("case", sorted(PAYMENT_CASES))
def test_payment_checker_finds_each_kind_of_violation(case: str) -> None:
    payments, hooks, options = _broken(case)
    violations = _check_payments(payments, hooks, **options)
    if not PAYMENT_CASES[case]:
        assert violations == []
    else:
        assert any(PAYMENT_CASES[case] in v for v in violations), violations


def test_payment_checker_allows_both_ends_only_near_a_deadline() -> None:
    """A confirmation well before the grace deadline must complete; one at the deadline may go either way;
    a downtime over the deadline widens the band to the restart and its catch-up, and no further."""
    grace_end = T0 + 5 + pay.GRACE_S  # USDT: EVM, a minute's margin on top
    margin = 60.0
    for confirmed, downs, allowed in [
        (T0 + 3, [], {"completed"}),
        (grace_end + margin, [], {"completed", "abandoned"}),
        (grace_end + margin + 30, [], {"abandoned"}),
        (
            grace_end + margin + 30,
            [(grace_end + margin - 1, grace_end + margin + 40)],
            {"completed", "abandoned"},
        ),
    ]:
        p = _payment("under", expires_in=5)
        _tx(p, T0 + 1, confirmed=confirmed)
        lives = predict(p, pay.GRACE_S, downs)
        assert {life[-1] for life in lives} == allowed, (confirmed - grace_end, downs, lives)


def test_payment_checker_a_payment_seen_in_time_is_never_abandoned_unlinked() -> None:
    """Paid before the expiry (even while the daemon was down): linked first, whatever the downtime."""
    p = _payment("grace", currency="BTC", expires_in=4)
    _tx(p, T0 + 2, confirmed=T0 + 7)
    assert predict(p, pay.GRACE_S, [(T0 + 1, T0 + 30)]) == {("linked", "completed")}
    unpaid = _payment("unpaid", currency="BTC", expires_in=4)
    assert predict(unpaid, pay.GRACE_S, []) == {("abandoned",)}


def test_a_payment_is_surely_ended_once_every_order_of_its_events_has_ended_it() -> None:
    """The trial's end waits for this before it reads final statuses (and sends late payments)."""
    unpaid = _payment("unpaid", currency="BTC", expires_in=5)
    expiry_seen = T0 + 5 + SWEEP_S + SEE_S
    assert not surely_ended(unpaid, pay.GRACE_S, [], expiry_seen - 0.1)
    assert surely_ended(unpaid, pay.GRACE_S, [], expiry_seen + 0.1)
    # Down over the deadline: not before the restart and the catch-up.
    down = [(T0 + 4, T0 + 20)]
    assert not surely_ended(unpaid, pay.GRACE_S, down, expiry_seen + 0.1)
    assert surely_ended(unpaid, pay.GRACE_S, down, T0 + 20 + CATCH_UP_S + SWEEP_S + SEE_S + 0.1)
    # Completed early: its far expiry does not matter.
    paid = _payment("exact", currency="BTC", expires_in=600)
    _tx(paid, T0 + 1, confirmed=T0 + 3)
    assert surely_ended(paid, pay.GRACE_S, [], T0 + 3 + SEE_S + 0.1)


@pytest.mark.parametrize(
    ("order", "life"),
    [
        (["link", "complete", "grace_end"], ("linked", "completed")),
        (["link", "grace_end", "complete"], ("linked", "abandoned")),
        # A deadline holds once passed: linked after it, abandoned at once (unless complete by then).
        (["grace_end", "link"], ("linked", "abandoned")),
        (["expire", "link"], ("abandoned",)),
        (["link", "expire", "gone"], ("linked", "canceled")),
        (["cancel", "link", "complete"], ("canceled",)),
        (["link", "complete", "cancel"], ("linked", "completed")),
        (["link", "grace_end"], ("linked", "abandoned")),
        (["link"], ("linked",)),
    ],
)
def test_payment_checker_lives_follow_the_daemons_rules(order: list[str], life: tuple[str, ...]) -> None:
    assert live(order) == life
