"""The payment's life (watcher/payment_life.py), transition by transition: a table of every one."""

from __future__ import annotations

from dataclasses import replace

import pytest

from watcher.model import Deposit, DepositStatus, Payment, PaymentStatus
from watcher.payment_life import ChainWatch, Paid, advance, by_transaction, cancel, grace_deadline

P, L, C, A, X = (
    PaymentStatus.PENDING,
    PaymentStatus.LINKED,
    PaymentStatus.COMPLETED,
    PaymentStatus.ABANDONED,
    PaymentStatus.CANCELED,
)
NC, OK, GONE = DepositStatus.NOT_CONFIRMED, DepositStatus.CONFIRMED, DepositStatus.CANCELLED
CREATED, EXPIRES, GRACE = 1_000.0, 2_800.0, 3_600.0
# Seen until long after every moment of the table / only until before the expiry (an outage since).
FOLLOWED = ChainWatch(seen_until=1e12, blind_total_s=0.0)
BLIND = ChainWatch(seen_until=2_000.0, blind_total_s=0.0)


def payment(status: PaymentStatus = P, amount: int = 1_000, **changes: object) -> Payment:
    base = Payment(
        id=1, reference="PAY_test", integration_id="i", chain="bitcoin", currency="BTC", address_id=7,
        address="bcrt1q", amount=amount, received=0, status=status, customer_email=None,
        customer_reference=None, meta_data=None, created_at=CREATED, expires_at=EXPIRES, ended_at=None,
        blind_at_link=0.0 if status is not P else None,
    )  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


def tx(amount: int, status: DepositStatus, txid: str = "t1", seen: float = 1_500.0) -> Paid:
    return Paid(txid, amount, status, seen)


BEFORE, AFTER_EXPIRY, AFTER_GRACE = 2_000.0, EXPIRES + 1, EXPIRES + GRACE + 1

# (name, status, paid, now, watch, expected statuses in order)
CASES = [
    ("pending, nothing paid, before expiry", P, [], BEFORE, FOLLOWED, []),
    ("pending, seen in the mempool", P, [tx(1_000, NC)], BEFORE, FOLLOWED, [L]),
    ("pending, partial seen", P, [tx(10, NC)], BEFORE, FOLLOWED, [L]),
    ("pending, first seen already confirmed in full", P, [tx(1_000, OK)], BEFORE, FOLLOWED, [L, C]),
    ("pending, overpaid and confirmed", P, [tx(5_000, OK)], BEFORE, FOLLOWED, [L, C]),
    ("pending, expired while followed", P, [], AFTER_EXPIRY, FOLLOWED, [A]),
    ("pending, expired while the chain is not followed", P, [], AFTER_EXPIRY, BLIND, []),
    ("pending, only a cancelled transaction", P, [tx(1_000, GONE)], BEFORE, FOLLOWED, []),
    ("pending, seen after expiry, not yet abandoned", P, [tx(1_000, NC)], AFTER_EXPIRY, FOLLOWED, [L]),
    ("linked, not confirmed yet", L, [tx(1_000, NC)], BEFORE, FOLLOWED, []),
    ("linked, confirmed in full", L, [tx(1_000, OK)], BEFORE, FOLLOWED, [C]),
    ("linked, confirmed in full within the grace", L, [tx(1_000, OK)], AFTER_EXPIRY, FOLLOWED, [C]),
    ("linked, confirmed but short", L, [tx(999, OK)], BEFORE, FOLLOWED, []),
    ("linked, two partials add up: not completed", L, [tx(500, OK), tx(500, OK, "t2")], BEFORE, FOLLOWED, []),
    ("linked, in grace, unconfirmed", L, [tx(1_000, NC)], AFTER_EXPIRY, FOLLOWED, []),
    ("linked, grace over", L, [tx(1_000, NC)], AFTER_GRACE, FOLLOWED, [A]),
    ("linked, grace over but not followed", L, [tx(1_000, NC)], AFTER_GRACE, BLIND, []),
    ("linked, its transaction double-spent", L, [tx(1_000, GONE)], BEFORE, FOLLOWED, [X]),
    ("linked, one of two dropped", L, [tx(1_000, GONE), tx(5, NC, "t2")], BEFORE, FOLLOWED, []),
    ("linked, a short one and a full one", L, [tx(5, OK), tx(1_000, OK, "t2")], BEFORE, FOLLOWED, [C]),
    ("completed stays completed", C, [tx(1_000, GONE)], AFTER_GRACE, FOLLOWED, []),
    ("abandoned stays abandoned (a late payment)", A, [tx(1_000, OK)], AFTER_GRACE, FOLLOWED, []),
    ("canceled stays canceled", X, [tx(1_000, OK)], BEFORE, FOLLOWED, []),
]


COLUMNS = ("name", "status", "paid", "now", "watch", "expected")


@pytest.mark.parametrize(COLUMNS, CASES, ids=[c[0] for c in CASES])
def test_transitions(
    name: str,
    status: PaymentStatus,
    paid: list[Paid],
    now: float,
    watch: ChainWatch,
    expected: list[PaymentStatus],
) -> None:
    changes = advance(payment(status), paid, now, watch, grace_s=GRACE)
    assert [c.status for c in changes] == expected
    for change in changes:
        assert change.at == now
        assert (change.payment.ended_at == now) is change.status.final
    assert [c.event for c in changes] == [s.event for s in expected]


def test_every_status_pair_is_covered_by_the_table() -> None:
    made = {(c[1], s) for c in CASES for s in c[5][:1]} | {
        (a, b) for c in CASES for a, b in zip(c[5], c[5][1:], strict=False)
    }
    assert made == {(P, L), (P, A), (L, C), (L, A), (L, X)}


def test_received_is_the_completing_transaction_or_the_largest_seen() -> None:
    (done,) = advance(payment(L), [tx(7, OK), tx(1_500, OK, "t2")], BEFORE, FOLLOWED, GRACE)
    assert done.payment.received == 1_500
    (linked,) = advance(payment(P), [tx(300, NC), tx(200, NC, "t2")], BEFORE, FOLLOWED, GRACE)
    assert linked.payment.received == 300
    (abandoned,) = advance(payment(L), [tx(300, OK), tx(200, NC, "t2")], AFTER_GRACE, FOLLOWED, GRACE)
    assert abandoned.payment.received == 300


def test_blind_time_since_it_was_linked_extends_the_grace() -> None:
    (linked,) = advance(payment(P), [tx(1_000, NC)], BEFORE, ChainWatch(1e12, 50.0), GRACE)
    assert linked.payment.blind_at_link == 50.0
    # 600 s not followed since: the grace ends 600 s later.
    watch = ChainWatch(1e12, 650.0)
    assert grace_deadline(linked.payment, watch, GRACE) == EXPIRES + GRACE + 600
    assert advance(linked.payment, [tx(1_000, NC)], EXPIRES + GRACE + 599, watch, GRACE) == []
    (ended,) = advance(linked.payment, [tx(1_000, NC)], EXPIRES + GRACE + 600, watch, GRACE)
    assert ended.status is A


def test_nothing_ends_for_time_not_seen_yet() -> None:
    # Expired by the clock, but the chain was last seen at the head one second before the expiry.
    assert advance(payment(P), [], EXPIRES + 100, ChainWatch(EXPIRES - 1, 0.0), GRACE) == []
    (ended,) = advance(payment(P), [], EXPIRES + 100, ChainWatch(EXPIRES, 0.0), GRACE)
    assert ended.status is A
    deadline = EXPIRES + GRACE
    assert advance(payment(L), [tx(1, NC)], deadline + 5, ChainWatch(deadline - 1, 0.0), GRACE) == []
    assert advance(payment(L), [tx(1, NC)], deadline + 5, ChainWatch(None, 0.0), GRACE) == []
    (ended,) = advance(payment(L), [tx(1, NC)], deadline + 5, ChainWatch(deadline, 0.0), GRACE)
    assert ended.status is A


def test_cancel_by_the_merchant() -> None:
    for status in (P, L):
        change = cancel(payment(status), BEFORE)
        assert change is not None and change.status is X and change.payment.ended_at == BEFORE
        assert change.event == "payment_canceled"
    for status in (C, A, X):
        assert cancel(payment(status), BEFORE) is None


def deposit(id: int, txid: str, amount: int, status: DepositStatus, seen: float) -> Deposit:
    return Deposit(
        id=id, chain="bitcoin", currency="BTC", address_id=7, address="bcrt1q", foreign_id="PAY_test",
        txid=txid, tx_index=id, amount=amount, block_height=None, block_hash=None, confirmations=0,
        status=status, error="", first_seen_at=seen, updated_at=seen,
    )  # fmt: skip


def test_outputs_of_one_transaction_are_added_up() -> None:
    paid = by_transaction(
        [
            deposit(3, "b", 50, NC, 20.0),
            deposit(1, "a", 600, OK, 10.0),
            deposit(2, "a", 400, OK, 11.0),
            deposit(4, "c", 70, GONE, 30.0),
            deposit(5, "b", 5, GONE, 21.0),
        ]
    )
    assert paid == [Paid("a", 1_000, OK, 10.0), Paid("b", 50, NC, 20.0), Paid("c", 0, GONE, 30.0)]
    (done,) = advance(payment(L), paid, BEFORE, FOLLOWED, GRACE)
    assert done.status is C and done.payment.received == 1_000
