"""The payments' invariants: every payment ends in the state the chain and the clock say, and its webhooks
are exactly the transitions of its life, in order, none lost, none invented.

The evidence is what the trial did and when, by its own wall clock (tests/trials/payments.py): each
payment's create request and answer (its `expires_at`), the transactions sent to its address (when they
could be seen: in the mempool for Bitcoin, in a block for EVM; when they reached their minimum
confirmations, between two looks; when one was double-spent), the merchant's cancel requests, and the
intervals the daemon was down. `predict` turns that into the decisive events of the payment's life, each
a time interval, and returns every life they allow:

- `link`: a transaction to its address is seen; `complete`: one paying at least the amount has its
  minimum confirmations; `gone`: everything paid was double-spent; `cancel`: the merchant's request;
- `expire`: a pending payment is abandoned once the daemon has seen the chain up to `expires_at`;
  `grace_end`: a linked one that did not complete, at `expires_at + grace` plus the seconds the chain was
  not followed since it was linked (downtime: gaps longer than 5 s between looks count).
  EVM chains are read without their mempool: a look at the head vouches for a minute less (so both are
  60 s later there). These are the daemon's documented rules (docs/webhooks.md), written out here.

An event's interval is widened by the daemon's polling and its sweep period, and by any downtime that
overlaps it (the daemon acts on it once it has restarted and caught up); where intervals overlap, every
order is allowed (and so every outcome), nowhere else. An order must also respect what the rules
guarantee: a transaction seen (by the chain) before the deadline links the payment before it is
abandoned; a confirmation before the grace deadline completes it first; confirmations imply being seen.

`check_payments` then compares each payment's final status (`GET /v1/payments/{reference}`) and its
webhooks (signature, repeats byte-identical, the seed's payload, the asked amount exactly) with those
lives. Computed without `watcher/`: the HMAC, the amounts, the rules.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tests.trials.payments import PaymentRecord
from watcher.receiver import Received

# The daemon's rules and periods, as documented (the checker's own copies).
NO_MEMPOOL_MARGIN_S = {"ethereum": 60.0, "bitcoin": 0.0}
SWEEP_S = 5.0
BLIND_GAP_S = 5.0
# Tolerances: the daemon sees a change within SEE_S while it runs (0.2 s polls and a store commit, with
# room for a loaded machine); after a restart it is live at once and caught up within CATCH_UP_S; TOL_S
# separates "before" from "after".
SEE_S = 5.0
CATCH_UP_S = 8.0
TOL_S = 1.0
FINAL = ("completed", "abandoned", "canceled")

Life = tuple[str, ...]  # the statuses a payment went through after pending, e.g. ("linked", "completed")
Down = tuple[float, float]  # the daemon was down from (SIGKILL) to (live again)


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    lo: float
    hi: float


@dataclass
class PaymentReport:
    payments: int = 0
    by_status: dict[str, int] | None = None
    webhooks: int = 0  # requests received by the Coinskro receiver
    delivered: int = 0
    repeats: int = 0  # deliveries beyond the first of one (reference, event)
    ambiguous: int = 0  # payments whose evidence allows more than one life
    in_grace: int = 0  # completed by a confirmation after their expiry
    late: int = 0  # late payments recorded
    retried_creates: int = 0


def reaction(t: float, within: float, downs: Sequence[Down]) -> float:
    """The latest moment the daemon reacts to something that happened at `t`: within `within` while it
    runs; a downtime overlapping that window pushes it to after the restart and its catch-up."""
    hi = t + within
    for start, end in sorted(downs):
        if start <= hi and end >= t - within:
            hi = max(hi, end + CATCH_UP_S + within)
    return hi


def events(
    p: PaymentRecord, grace_s: float, downs: Sequence[Down]
) -> tuple[list[Event], set[tuple[str, str]]]:
    """The decisive events of `p`'s life and the orders the rules impose on them ((before, after))."""
    margin = NO_MEMPOOL_MARGIN_S[p.chain]
    expires = p.expires_at
    out: list[Event] = []
    before: set[tuple[str, str]] = set()
    txs = [t for t in p.txs if not t.late]
    if txs:
        seen = min(t.visible_hi for t in txs)
        link = Event("link", min(t.visible_lo for t in txs), reaction(seen, SEE_S, downs))
        out.append(link)
        if seen + TOL_S < expires + margin:
            before.add(("link", "expire"))
    else:
        link = None
    out.append(Event("expire", expires + margin, reaction(expires + margin, SWEEP_S + SEE_S, downs)))
    # The grace deadline: plus the blind seconds since the link. A downtime makes a gap between two looks
    # at the head of at most its length and the restart's catch-up, counted when longer than BLIND_GAP_S
    # (at least: a downtime itself longer than that, wholly between the link and the deadline).
    deadline = expires + grace_s + margin
    late = deadline
    for start, end in sorted(downs):
        if link is not None and end >= link.lo and start < late and end - start + CATCH_UP_S > BLIND_GAP_S:
            late += end - start + CATCH_UP_S
    early = deadline + sum(
        end - start for start, end in downs
        if link is not None and start >= link.hi and end - start > BLIND_GAP_S + TOL_S and end <= deadline
    )  # fmt: skip
    out.append(Event("grace_end", early, reaction(late, SWEEP_S + SEE_S, downs)))
    full = [t for t in txs if t.confirmed_hi is not None and t.amount >= p.amount and t.gone_lo is None]
    if full:
        first = min(full, key=lambda t: t.confirmed_hi or 0.0)
        assert first.confirmed_lo is not None and first.confirmed_hi is not None
        out.append(Event("complete", first.confirmed_lo, reaction(first.confirmed_hi, SEE_S, downs)))
        before.add(("link", "complete"))
        if first.confirmed_hi + TOL_S < early:
            before.add(("complete", "grace_end"))
    if txs and all(t.gone_lo is not None for t in txs):
        gone_lo = max(t.gone_lo or 0.0 for t in txs)
        gone_hi = max(t.gone_hi or 0.0 for t in txs)
        out.append(Event("gone", gone_lo, reaction(gone_hi, SEE_S, downs)))
        before.add(("link", "gone"))
        if gone_hi + TOL_S < early:
            before.add(("gone", "grace_end"))
    if p.cancel is not None:
        out.append(Event("cancel", p.cancel.sent_at, p.cancel.answered_at))
    return out, before


def live(order: Sequence[str]) -> Life:
    """The life a payment lives when its decisive events happen in this order."""
    return _live(order)[0]


def _live(order: Sequence[str]) -> tuple[Life, set[str]]:
    """The life, and the events that moved it. A deadline, once passed, holds from then on (the daemon
    abandons a payment at the first sweep after it): one linked after its grace deadline is abandoned as
    soon as it is linked, unless it is complete by then. The merchant's cancel acts at its moment only."""
    status, life, passed, used = "pending", [], set(), set()
    for name in order:
        if name == "cancel":
            if status not in FINAL:
                status = "canceled"
                life.append(status)
                used.add(name)
            continue
        passed.add(name)
        while status not in FINAL:
            step = _next(status, passed)
            if step is None:
                break
            status, cause = step
            life.append(status)
            used.add(cause)
        if status in FINAL:
            break
    return tuple(life), used


def _next(status: str, passed: set[str]) -> tuple[str, str] | None:
    """The daemon's order of checks (payment_life's): a transaction seen links before an expiry abandons;
    a complete transaction before everything gone, before the grace deadline."""
    if status == "pending":
        rules = [("link", "linked"), ("expire", "abandoned")]
    else:
        rules = [("complete", "completed"), ("gone", "canceled"), ("grace_end", "abandoned")]
    return next(((following, cause) for cause, following in rules if cause in passed), None)


def predict(p: PaymentRecord, grace_s: float, downs: Sequence[Down]) -> set[Life]:
    """Every life the evidence allows `p` (see the module's docstring)."""
    return {live([e.name for e in order]) for order in _orders(p, grace_s, downs)}


def surely_ended(p: PaymentRecord, grace_s: float, downs: Sequence[Down], now: float) -> bool:
    """In every order the evidence allows, `p` ends, and the events that moved it are all behind us (each
    interval's end before `now`): its final status can be read, and a late payment sent."""
    for order in _orders(p, grace_s, downs):
        life, used = _live([e.name for e in order])
        if not life or life[-1] not in FINAL or any(e.hi >= now for e in order if e.name in used):
            return False
    return True


def _orders(p: PaymentRecord, grace_s: float, downs: Sequence[Down]) -> list[tuple[Event, ...]]:
    """The orders of `p`'s decisive events that their intervals and the rules allow."""
    found, before = events(p, grace_s, downs)
    allowed = []
    for order in itertools.permutations(found):
        names = [e.name for e in order]
        if any(names.index(a) > names.index(b) for a, b in before if a in names and b in names):
            continue
        t = float("-inf")
        for e in order:
            t = max(t, e.lo)
            if t > e.hi:
                break
        else:
            allowed.append(order)
    return allowed


# ------------------------------------------------------------------------------------ the check


def check_payments(
    *,
    payments: Sequence[PaymentRecord],
    requests: Sequence[Received],
    signatures: Mapping[bytes, set[str]],
    secret: str,
    integration_id: str,
    events_subscribed: Sequence[str],
    grace_s: float,
    downs: Sequence[Down],
) -> tuple[PaymentReport, list[str]]:
    """The payments' invariants (see the module's docstring); (figures, violations)."""
    report = PaymentReport(payments=len(payments), webhooks=len(requests))
    v: list[str] = []
    by_reference = {p.reference: p for p in payments if p.reference}
    hooks: dict[str, list[tuple[int, Received, dict[str, Any]]]] = defaultdict(list)
    for order, r in enumerate(requests):
        body = _parse(order, r, signatures, secret, v)
        if body is None:
            continue
        reference = str(body.get("data", {}).get("payment_reference"))
        if reference not in by_reference:
            v.append(f"webhook {order}: invented: no payment {reference!r} was made: {r.raw[:200]!r}")
            continue
        hooks[reference].append((order, r, body))
    statuses: dict[str, int] = defaultdict(int)
    for p in payments:
        statuses[str(p.final.get("status", "?"))] += 1
        _check_one(
            p, hooks.get(p.reference, []), integration_id, events_subscribed, grace_s, downs, report, v
        )
    report.by_status = dict(statuses)
    report.delivered = sum(1 for r in requests if r.accepted)
    return report, v


def _parse(
    order: int, r: Received, signatures: Mapping[bytes, set[str]], secret: str, v: list[str]
) -> dict[str, Any] | None:
    if b'"crypto_address"' in r.raw:
        v.append(f"webhook {order}: a CoinsPaid callback at the Coinskro receiver: {r.raw[:200]!r}")
        return None
    expected = hmac.new(secret.encode("utf-8"), r.raw, hashlib.sha256).hexdigest()
    seen = signatures.get(r.raw, set())
    if seen != {expected}:
        v.append(
            f"webhook {order}: signature headers {sorted(seen)} != HMAC-SHA256 of the body {r.raw[:200]!r}"
        )
        return None
    try:
        body = json.loads(r.raw, parse_float=Decimal)
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        v.append(f"webhook {order}: not a Coinskro webhook: {r.raw[:200]!r}")
        return None
    return body


def _check_one(
    p: PaymentRecord,
    hooks: Sequence[tuple[int, Received, dict[str, Any]]],
    integration_id: str,
    subscribed: Sequence[str],
    grace_s: float,
    downs: Sequence[Down],
    report: PaymentReport,
    v: list[str],
) -> None:
    where = p.describe()
    if not p.made:
        v.append(f"{where}: never created")
        return
    _check_creation(p, v)
    lives = predict(p, grace_s, downs)
    report.ambiguous += len({life[-1] if life else "pending" for life in lives}) > 1
    report.retried_creates += p.create_attempts > 1
    final = str(p.final.get("status"))
    if final not in FINAL:
        v.append(f"{where}: still {final} at the end: {p.final}")
    possible = sorted({life[-1] for life in lives if life})
    if final not in possible:
        v.append(
            f"{where}: wrong final status {final}: the evidence says {' or '.join(possible)} ({_why(p)})"
        )
    # Webhooks: every request of this payment, in order of arrival; repeats the same bytes.
    bodies: dict[str, set[bytes]] = defaultdict(set)
    arrived: list[str] = []
    for order, r, body in hooks:
        event = str(body.get("event"))
        bodies[event].add(r.raw)
        arrived.append(event)
        if event not in subscribed:
            v.append(f"{where}: webhook {order} for {event}, not subscribed")
        _check_body(p, order, body, r.raw, integration_id, v)
    for event, raws in bodies.items():
        if len(raws) > 1:
            v.append(f"{where}: {event}: {len(raws)} different bodies for one webhook")
    firsts = tuple(dict.fromkeys(arrived))
    wanted = {life: tuple(f"payment_{s}" for s in life if f"payment_{s}" in subscribed) for life in lives}
    # The lives that end as it ended (if none does, its status is already reported: then any life).
    fitting = {w for life, w in wanted.items() if life and life[-1] == final} or set(wanted.values())
    if firsts not in fitting:
        every = {e for w in fitting for e in w}
        if any(w[: len(firsts)] == firsts for w in fitting):
            kind = "lost"
        elif set(firsts) - every:
            kind = "invented"
        else:
            kind = "out of order"
        v.append(f"{where}: webhooks {kind}: received {list(firsts)}, its life gives {sorted(fitting)}")
    delivered = {str(b.get("event")) for _, r, b in hooks if r.accepted}
    for event in firsts:
        if event not in delivered:
            v.append(f"{where}: webhooks lost: {event} was attempted, never delivered (answered 2xx)")
    position = {e: n for n, e in enumerate(firsts)}
    if any(position[b] < position[a] for a, b in itertools.pairwise(arrived)):
        v.append(f"{where}: webhooks out of order: arrived {arrived}")
    accepted = [b["event"] for _, r, b in hooks if r.accepted]
    report.repeats += len(accepted) - len(set(accepted))
    _check_transactions(p, report, v)


def _check_creation(p: PaymentRecord, v: list[str]) -> None:
    where = p.describe()
    if p.same_key != [p.reference]:
        v.append(f"{where}: one payment per Idempotency-Key, but its key lists {p.same_key}")
    if not p.sent_at + p.expires_in_s - TOL_S <= p.expires_at <= p.answered_at + p.expires_in_s + TOL_S:
        v.append(
            f"{where}: expires_at {p.made.get('expires_at')} is not its create time + {p.expires_in_s} s"
        )
    if Decimal(str(p.made.get("amount"))) != Decimal(p.asked) or p.made.get("currency") != p.currency:
        v.append(f"{where}: created with {p.made.get('amount')} {p.made.get('currency')}")
    if p.cancel is not None and p.cancel.code == 200 and p.final.get("status") != "canceled":
        v.append(f"{where}: the cancel was answered canceled, it ended {p.final.get('status')}")


def _check_body(
    p: PaymentRecord, order: int, body: Mapping[str, Any], raw: bytes, integration_id: str, v: list[str]
) -> None:
    where = f"{p.describe()}: webhook {order} {body.get('event')}"
    data = body["data"]
    expected = {
        "payment_reference": p.reference, "integration_id": integration_id, "currency": p.currency,
        "status": str(body.get("event", "")).removeprefix("payment_"),
        "customer_email": p.request["customer_email"], "customer_reference": p.request["customer_reference"],
        "meta_data": p.request["meta_data"],
    }  # fmt: skip
    v += [f"{where}: {k} is {data.get(k)!r}, expected {e!r}" for k, e in expected.items() if data.get(k) != e]
    if list(body) != ["event", "timestamp", "data"] or not str(body.get("timestamp", "")).endswith("Z"):
        v.append(f"{where}: not the seed's payload: {raw[:200]!r}")
    # The amount: a JSON number, the asked amount exactly, in the currency's precision.
    text = f'"amount":{p.asked}'.encode()
    if data.get("amount") != Decimal(p.asked) or text not in raw:
        v.append(f"{where}: amount {data.get('amount')!r} is not the asked {p.asked}")


def _check_transactions(p: PaymentRecord, report: PaymentReport, v: list[str]) -> None:
    """Every transaction sent to its address and not double-spent is among its `transactions`."""
    shown = {str(t.get("txid")) for t in p.final.get("transactions", [])}
    for tx in p.txs:
        report.late += tx.late and tx.txid in shown
        report.in_grace += (
            not tx.late and tx.confirmed_lo is not None and tx.confirmed_lo > p.expires_at
            and p.final.get("status") == "completed"
        )  # fmt: skip
        if tx.gone_lo is None and tx.txid not in shown:
            v.append(f"{p.describe()}: lost: its transaction {tx.txid} is not among its transactions")


def _why(p: PaymentRecord) -> str:
    parts = [f"expires_at {p.expires_at:.1f}"]
    for tx in p.txs:
        parts.append(
            f"tx {tx.txid[:12]} {tx.amount} seen {tx.visible_lo:.1f}-{tx.visible_hi:.1f}"
            + (f" confirmed {tx.confirmed_lo:.1f}-{tx.confirmed_hi:.1f}" if tx.confirmed_hi else "")
            + (f" gone {tx.gone_lo:.1f}" if tx.gone_lo else "")
            + (" late" if tx.late else "")
        )
    if p.cancel:
        parts.append(f"cancel {p.cancel.sent_at:.1f}-{p.cancel.answered_at:.1f} {p.cancel.code}")
    return "; ".join(parts)
