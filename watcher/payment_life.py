"""A payment's life: what its status becomes, given what was paid to its address and the time. Pure.

    pending --seen--> linked --paid in full, confirmed--> completed
       |                 |--grace over (time watched)--> abandoned
       |                 |--everything paid double-spent or dropped--> canceled
       |--expired (time watched)--> abandoned
    pending or linked --the merchant cancels--> canceled

The rules, and why:
- **One transaction pays.** A payment completes when the outputs of ONE transaction to its address add up
  to at least the amount and all have the currency's minimum confirmations (the deposits' `confirmed`).
  Several smaller transactions are not added up (Coinskro: "customers must pay the full amount in a single
  transaction"): they link the payment, stay recorded as deposits, and the payment ends abandoned when its
  grace period is over; the merchant settles them by hand. More than the amount completes it, and
  `received` shows what that transaction paid.
- **Seen before the end counts.** Any transaction to the address seen while the payment is pending links
  it. A pending payment is abandoned at its expiry only once the daemon has seen the chain until that
  moment (`ChainWatch.seen_until`): a payment made during an outage is found when the daemon catches up
  and still links it.
- **A grace period to confirm.** A linked payment that has not completed at expiry has `grace_s` more
  (docs/payments.md gives the default and its reason), plus every second the chain was not followed since
  it was linked (`blind_s`): time the daemon could not see is never held against the customer.
- **Final is final.** Completed, abandoned and canceled never change. What arrives later is a late
  payment: recorded and reported as a deposit of the integration, never lost, but the payment stays.

Transitions come out in order: a transaction first seen already confirmed gives `linked` then
`completed`, so a merchant subscribed to both gets both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from watcher.model import Deposit, DepositStatus, Payment, PaymentStatus

# The default grace period for a payment seen but not yet confirmed at its expiry (`payments.grace_s`).
# 24 hours: a Bitcoin transaction paid with a low fee can wait many hours for a block when the mempool is
# full; abandoning it earlier would leave the customer's money on an order that is gone. It is BTCPay
# Server's default too (an invoice's "monitoring expiration", 1,440 minutes).
DEFAULT_GRACE_S = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Paid:
    """What one transaction paid to the payment's address: its outputs (or logs) to it, together."""

    txid: str
    amount: int  # base units, the sum of its deposits that are not cancelled
    status: DepositStatus  # confirmed if all are, cancelled if all are, else not_confirmed
    first_seen_at: float


@dataclass(frozen=True, slots=True)
class ChainWatch:
    """How much of the chain the daemon has seen.

    `seen_until`: everything paid to a watched address up to this time has been seen (the last time the
    follower was at the node's head with the chain ready, less what a chain without a mempool view can
    hide: a transaction sent just before is not in a block yet); None if never. `blind_total_s`: the
    seconds in all that the chain was not followed (halted, behind, its node unreachable, the daemon
    down), a running total.
    """

    seen_until: float | None
    blind_total_s: float

    def saw(self, moment: float) -> bool:
        return self.seen_until is not None and self.seen_until >= moment


@dataclass(frozen=True, slots=True)
class Change:
    """One transition: the payment as it is after it, and when."""

    payment: Payment
    at: float

    @property
    def status(self) -> PaymentStatus:
        return self.payment.status

    @property
    def event(self) -> str:
        return self.payment.status.event


def by_transaction(deposits: Iterable[Deposit]) -> list[Paid]:
    """The deposits to one payment address grouped by transaction, in the order first seen."""
    groups: dict[str, list[Deposit]] = {}
    for deposit in sorted(deposits, key=lambda d: (d.first_seen_at, d.id)):
        groups.setdefault(deposit.txid, []).append(deposit)
    return [_paid(txid, group) for txid, group in groups.items()]


def _paid(txid: str, group: Sequence[Deposit]) -> Paid:
    live = [d for d in group if d.status is not DepositStatus.CANCELLED]
    if not live:
        status = DepositStatus.CANCELLED
    elif all(d.status is DepositStatus.CONFIRMED for d in live):
        status = DepositStatus.CONFIRMED
    else:
        status = DepositStatus.NOT_CONFIRMED
    first_seen = min(d.first_seen_at for d in group)
    return Paid(txid, sum(d.amount for d in live), status, first_seen)


def advance(
    payment: Payment,
    paid: Sequence[Paid],
    now: float,
    watch: ChainWatch,
    grace_s: float = DEFAULT_GRACE_S,
) -> list[Change]:
    """The transitions `payment` makes now, in order (none if it stays as it is)."""
    changes: list[Change] = []
    current = payment
    while not current.status.final:
        following = _next(current, paid, now, watch, grace_s)
        if following is None:
            break
        current = following
        changes.append(Change(current, now))
    return changes


def cancel(payment: Payment, now: float) -> Change | None:
    """The merchant cancels: a pending or linked payment becomes canceled; a final one stays (None)."""
    if payment.status.final:
        return None
    return Change(replace(payment, status=PaymentStatus.CANCELED, ended_at=now), now)


def grace_deadline(payment: Payment, watch: ChainWatch, grace_s: float) -> float:
    """When a linked payment that has not completed is abandoned, once the chain was seen until then."""
    blind_s = max(0.0, watch.blind_total_s - (payment.blind_at_link or 0.0))
    return payment.expires_at + grace_s + blind_s


def _next(
    payment: Payment, paid: Sequence[Paid], now: float, watch: ChainWatch, grace_s: float
) -> Payment | None:
    status = payment.status
    if status is PaymentStatus.PENDING:
        if any(p.status is not DepositStatus.CANCELLED for p in paid):
            linked = replace(payment, status=PaymentStatus.LINKED, blind_at_link=watch.blind_total_s)
            return replace(linked, received=largest(paid))
        if now >= payment.expires_at and watch.saw(payment.expires_at):
            return _ended(payment, PaymentStatus.ABANDONED, now)
        return None
    # Linked.
    full = [p for p in paid if p.status is DepositStatus.CONFIRMED and p.amount >= payment.amount]
    if full:
        first = full[0]
        return replace(_ended(payment, PaymentStatus.COMPLETED, now), received=first.amount)
    if paid and all(p.status is DepositStatus.CANCELLED for p in paid):
        return replace(_ended(payment, PaymentStatus.CANCELED, now), received=0)
    deadline = grace_deadline(payment, watch, grace_s)
    if now >= deadline and watch.saw(deadline):
        return replace(_ended(payment, PaymentStatus.ABANDONED, now), received=largest(paid))
    return None


def largest(paid: Sequence[Paid]) -> int:
    """What the payment shows as received while no transaction completes it: the largest one that is not
    cancelled (transactions are not added up)."""
    return max((p.amount for p in paid if p.status is not DepositStatus.CANCELLED), default=0)


def _ended(payment: Payment, status: PaymentStatus, now: float) -> Payment:
    return replace(payment, status=status, ended_at=now)
