"""The payments part of the crash trial: payments for orders created, paid, expired and canceled while the
daemon is SIGKILLed, and what the trial did, by its own wall clock, as evidence.

A second integration in the trial's daemon takes Coinskro webhooks (`format: coinskro`, all four events,
a grace of a few seconds, short expiries) at its own receiver, which fails by the same plan as the
CoinsPaid one. `PaymentScript` runs a seeded schedule of payments, one step at a time, between the crash
trial's steps:

- created through the API (`POST /v1/payments` with an `Idempotency-Key`); a create interrupted by a kill,
  or refused while a chain is not followed yet, is retried with the same key, as a merchant would;
- paid exactly, overpaid, underpaid (ETH, USDT, USDC are mined to their minimum confirmations in the step
  that pays them, so no reorg of the trial reaches them; BTC payments wait for the trial's mining, and a
  BTC reorg may move them back to the mempool for a while), not paid (they expire), canceled by the
  merchant (some after a payment too small to complete them), paid in the grace period (BTC seen before
  the expiry, confirmed after it), double-spent (BTC signed here, replaced once the daemon linked it);
- a late payment to some that ended without one (recorded as a deposit, never lost).

After every step of the trial `observe` asks the nodes which payment transactions have their minimum
confirmations, so the evidence knows when each confirmation happened (between two looks). The checker
is tests/trials/payment_invariants.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import aiohttp
from aiohttp import web

from devnet import btc_tools as btc
from devnet import evm_tools as evm
from devnet.receiver import Receiver
from tests.test_derivation import ROOT_FINGERPRINT, account
from tests.trials.invariants import SentTransfer, format_amount
from watcher.apikeys import new_api_key
from watcher.receiver import ANSWERED, REJECTED, Received

SHOP = "5d0c4a52-8f3e-4b7a-9c61-2e7d4f1a9b03"
COINSKRO_SECRET = "whsec-trial-\u00e9"
COINSKRO_HEADER = "X-Coinskro-Signature"  # written out here, not imported from the code under test
EVENTS = ("payment_linked", "payment_completed", "payment_abandoned", "payment_canceled")
GRACE_S = 6
WPKH = f"wpkh([{ROOT_FINGERPRINT}/84h/1h/0h]{account('m/84h/1h/0h', 'tpub')}/0/*)"
DECIMALS = {"BTC": 8, "ETH": 18, "USDT": 6, "USDC": 6}
CHAIN_OF = {"BTC": "bitcoin", "ETH": "ethereum", "USDT": "ethereum", "USDC": "ethereum"}
# Every kind and currency is made at least once (the first payments of every run), then random ones.
# EVM payments that end unpaid come first: they end a minute after their deadline (EVM chains are read
# without a mempool), which sets how long the run waits at its end; for the same reason the underpaid
# ones here are BTC (an underpaid EVM payment waits a minute more than its grace; random ones may be).
COVER: list[tuple[str, str]] = [
    ("unpaid", "ETH"), ("unpaid", "USDC"), ("exact", "BTC"), ("over", "ETH"), ("under", "BTC"),
    ("cancel", "BTC"), ("grace", "BTC"), ("double", "BTC"), ("exact", "USDC"), ("over", "BTC"),
    ("cancel_paid", "USDT"), ("under", "BTC"),
]  # fmt: skip
KINDS = ("exact", "over", "under", "unpaid", "cancel", "cancel_paid", "grace")
# Expiries (seconds) per kind: short, so that payments end within the run; long enough for those to be paid
# in time to be paid comfortably before (the decisive moments stay clear of the deadlines but for chance).
EXPIRES: dict[str, tuple[int, int]] = {
    "exact": (20, 40), "over": (20, 40), "under": (4, 10), "unpaid": (2, 8), "cancel": (40, 60),
    "cancel_paid": (40, 60), "grace": (3, 4), "double": (60, 90),
}  # fmt: skip
API_TIMEOUT_S = 10.0


# ------------------------------------------------------------------------------------ the receiver


class CoinskroReceiver(Receiver):
    """The devnet Receiver's plan of answers and records, for Coinskro webhooks: the signature checked is
    `X-Coinskro-Signature`, HMAC-SHA256 of the body (a CoinsPaid callback arriving here is rejected, 401,
    and recorded: the checker counts it as a violation). The header is kept as it came."""

    def __init__(self, secret: str, **kwargs: Any) -> None:
        super().__init__("", secret, format="coinskro", **kwargs)
        self._coinskro_secret = secret

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        header = request.headers.get(COINSKRO_HEADER)
        expected = hmac.new(self._coinskro_secret.encode(), raw, hashlib.sha256).hexdigest()
        ok = header is not None and hmac.compare_digest(header, expected)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        rec = Received(
            body if isinstance(body, dict) else {}, raw, 0, time.time(), True, ok, ANSWERED, None, header
        )
        if not ok or not isinstance(body, dict):
            self._record(rec.answered(401, REJECTED))
            return web.Response(status=401, text="bad signature")
        return await self._answer(request, rec)


# ------------------------------------------------------------------------------------ the evidence


@dataclass
class PaidTx:
    """A transaction the trial sent to a payment's address, with when (its wall clock) it could be seen."""

    txid: str
    index: int  # vout (BTC), -1 (ETH), the Transfer log's ordinal (tokens)
    amount: int  # base units
    visible_lo: float  # before it was sent (or mined: EVM)
    visible_hi: float  # by then it was in the node's mempool (BTC) or in a block (EVM)
    confirmed_lo: float | None = None  # it reached its minimum confirmations between these two looks
    confirmed_hi: float | None = None
    gone_lo: float | None = None  # double-spent: replaced between these two moments
    gone_hi: float | None = None
    late: bool = False  # sent after the payment was known to have ended
    last_look: float = 0.0


@dataclass
class CancelRecord:
    sent_at: float  # the first request
    answered_at: float  # the answer to the last one
    code: int  # the last answer's HTTP status
    answer: dict[str, Any]


@dataclass
class PaymentRecord:
    """One payment as the trial made it, paid it and saw it end."""

    key: str  # its Idempotency-Key (and customer_reference)
    kind: str
    currency: str
    amount: int  # asked, base units
    expires_in_s: int
    request: dict[str, Any]
    sent_at: float = 0.0  # the first create request
    answered_at: float = 0.0  # the answer that gave the payment
    create_attempts: int = 0
    made: dict[str, Any] = field(default_factory=dict)  # the API's answer
    txs: list[PaidTx] = field(default_factory=list)
    cancel: CancelRecord | None = None
    final: dict[str, Any] = field(default_factory=dict)  # GET /v1/payments/{reference} at the end
    same_key: list[str] = field(default_factory=list)  # references listed for its customer_reference

    @property
    def chain(self) -> str:
        return CHAIN_OF[self.currency]

    @property
    def reference(self) -> str:
        return str(self.made.get("payment_reference", ""))

    @property
    def address(self) -> str:
        return str(self.made.get("address", ""))

    @property
    def expires_at(self) -> float:
        return epoch(str(self.made["expires_at"]))

    @property
    def asked(self) -> str:
        return format_amount(self.amount, DECIMALS[self.currency])

    def describe(self) -> str:
        return f"payment {self.reference or '?'} ({self.key}: {self.kind} {self.asked} {self.currency})"


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# ------------------------------------------------------------------------------------ the config


def integration(callback_url: str, retry_schedule_min: Sequence[float], timeout_s: float) -> dict[str, Any]:
    """The Coinskro integration of the trial's config, and the API key the script uses."""
    return {
        "id": SHOP,
        "name": "orders",
        "callback": {
            "callback_url": callback_url, "format": "coinskro", "secret": COINSKRO_SECRET,
            "events": list(EVENTS), "timeout_s": timeout_s, "retry_schedule_min": list(retry_schedule_min),
            "concurrency": 4,
        },
        "api_keys": [API_HASH.line()],
        "public_keys": {"bitcoin": WPKH, "ethereum": account("m/44h/60h/0h")},
        "payments": {"grace_s": GRACE_S},
    }  # fmt: skip


API_KEY, API_HASH = new_api_key(live=False)


# ------------------------------------------------------------------------------------ the script


class DaemonDown(Exception):
    """The API did not answer: the daemon is down (or was killed meanwhile)."""


@dataclass
class Chains:
    """What the payments script needs of the crash trial's world."""

    url: str
    bitcoin: Any
    senders: list[str]
    tokens: dict[str, str]
    min_conf: dict[str, int]
    take_keyed: Callable[[], Any]  # a KeyedUtxo (key, utxo) or None


class PaymentScript:
    """The seeded schedule of payments; `step` does the next thing due. Kills are the trial's: it asks for
    `create(kill=...)` / `cancel(kill=...)` to SIGKILL the daemon in the middle of a request."""

    def __init__(
        self, count: int, seed: int, chains: Chains, api_port: int, log: Callable[[str], None]
    ) -> None:
        self.rng = random.Random(seed * 104_729 + 11)
        self.chains = chains
        self.api = f"http://127.0.0.1:{api_port}"
        self.log = log
        plan = COVER[:count] + [
            (self.rng.choice(KINDS), self.rng.choice(list(DECIMALS))) for _ in range(count - len(COVER))
        ]
        # Seen in the mempool before its expiry, confirmed after it: only a chain whose mempool is read.
        plan = [(kind, "BTC" if kind == "grace" else currency) for kind, currency in plan]
        self.payments = [self._new(n, kind, currency) for n, (kind, currency) in enumerate(plan)]
        self.to_create = list(self.payments)
        self.due: list[tuple[float, str, PaymentRecord]] = []  # (at, action, payment), the follow-ups
        self.created = 0
        self.create_retries = 0
        self._keys: dict[str, Any] = {}  # txid -> the key of its input (double-spendable)

    def _new(self, n: int, kind: str, currency: str) -> PaymentRecord:
        decimals = DECIMALS[currency]
        unit = {"BTC": 10**3, "ETH": 10**12, "USDT": 10**3, "USDC": 10**3}[currency]
        amount = self.rng.randrange(50, 5000) * unit  # from 0.0005 BTC, 0.00005 ETH, 0.05 USDT/USDC
        lo, hi = EXPIRES[kind]
        key = f"order-{n}-{self.rng.randrange(10**9)}"
        expires_in_s = self.rng.randint(lo, hi)
        request = {
            "amount": format(Decimal(amount).scaleb(-decimals).normalize(), "f"), "currency": currency,
            "customer_email": f"buyer{n}@shop.example", "customer_reference": key,
            "meta_data": json.dumps({"order": n, "kind": kind, "note": "caf\u00e9"}, ensure_ascii=False),
            "expires_in_s": expires_in_s,
        }  # fmt: skip
        return PaymentRecord(key, kind, currency, amount, expires_in_s, request)

    # ---------------------------------------------------------------------------------- steps

    @property
    def busy(self) -> bool:
        return bool(self.to_create or self.due)

    def requests_left(self) -> bool:
        """A create or a cancel is still to come (a kill can land in its request)."""
        return bool(self.to_create) or any(action == "cancel" for _, action, _ in self.due)

    def wants_step(self, rng: random.Random) -> bool:
        if any(at <= time.time() for at, _, _ in self.due):
            return True
        return bool(self.to_create) and rng.random() < 0.35

    async def step(self, session: aiohttp.ClientSession, kill: Callable[[], Any] | None = None) -> str:
        """The next follow-up due, else the next create. `kill` (an async callable) is awaited while the
        request is in flight: the request is then retried with the same key."""
        now = time.time()
        due = sorted((d for d in self.due if d[0] <= now), key=lambda d: d[0])
        if due:
            self.due.remove(due[0])
            _, action, p = due[0]
            return await self._follow_up(session, action, p, kill)
        if self.to_create:
            p = self.to_create.pop(0)
            await self._create(session, p, kill)
            return await self._after_create(session, p)
        return "payments: nothing due"

    async def _after_create(self, session: aiohttp.ClientSession, p: PaymentRecord) -> str:
        rng = self.rng
        made = f"created {p.describe()} expiring in {p.expires_in_s} s"
        if p.kind in ("exact", "over", "under"):
            amount = p.amount + (self.rng.randrange(1, p.amount) if p.kind == "over" else 0)
            amount -= rng.randrange(1, p.amount // 2) if p.kind == "under" else 0
            mine_now = p.currency != "BTC" or rng.random() < 0.5
            return f"{made}; {await asyncio.to_thread(self._pay, p, amount, mine_now)}"
        if p.kind == "unpaid":
            return made
        if p.kind == "cancel_paid":
            paid = await asyncio.to_thread(self._pay, p, p.amount - rng.randrange(1, p.amount // 2), False)
            # Clear of the moment it is linked (within a few seconds): canceled after being linked.
            self.due.append((time.time() + rng.uniform(6.0, 10.0), "cancel", p))
            return f"{made}; {paid}; cancel soon"
        if p.kind == "cancel":
            self.due.append((time.time() + rng.uniform(0.5, 6.0), "cancel", p))
            return f"{made}; cancel soon"
        if p.kind == "grace":
            # Paid a second or two before the expiry (seen in the mempool), confirmed in the grace period.
            await asyncio.sleep(max(0.0, p.expires_at - rng.uniform(1.5, 2.0) - time.time()))
            paid = await asyncio.to_thread(self._pay, p, p.amount, False)
            self.due.append((p.expires_at + rng.uniform(1.5, GRACE_S - 2.5), "confirm", p))
            return f"{made}; {paid} before its expiry; to be confirmed in its grace"
        if p.kind == "double":
            # In one step, so that no mining of the trial comes between: paid, linked, double-spent.
            paid = await asyncio.to_thread(self._pay_keyed, p)
            return f"{made}; {paid}; {await self._double_spend(session, p)}"
        raise AssertionError(p.kind)

    async def _follow_up(
        self, session: aiohttp.ClientSession, action: str, p: PaymentRecord, kill: Callable[[], Any] | None
    ) -> str:
        if action == "cancel":
            return await self._cancel(session, p, kill)
        if action == "confirm":
            await asyncio.to_thread(self.observe)  # a fresh look: was it confirmed before now?
            await asyncio.to_thread(btc.mine, self.chains.bitcoin, self.chains.min_conf["BTC"])
            return f"mined {self.chains.min_conf['BTC']} Bitcoin blocks for {p.describe()}"
        if action == "late":
            return await asyncio.to_thread(self._pay, p, p.amount, True, True)
        raise AssertionError(action)

    # ---------------------------------------------------------------------------------- the API

    async def _call(
        self, session: aiohttp.ClientSession, method: str, path: str, body: Any = None, key: str = ""
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {API_KEY}"} | ({"Idempotency-Key": key} if key else {})
        try:
            async with session.request(method, self.api + path, json=body, headers=headers) as r:
                return r.status, await r.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DaemonDown(repr(exc)) from exc

    async def _create(
        self, session: aiohttp.ClientSession, p: PaymentRecord, kill: Callable[[], Any] | None
    ) -> None:
        p.sent_at = time.time()
        if kill is not None:
            request = asyncio.create_task(self._call(session, "POST", "/v1/payments", p.request, p.key))
            await asyncio.sleep(self.rng.uniform(0.0, 0.02))
            await kill()
            with contextlib.suppress(DaemonDown):
                await request
            p.create_attempts += 1
        for _ in range(200):
            p.create_attempts += 1
            try:
                status, answer = await self._call(session, "POST", "/v1/payments", p.request, p.key)
            except DaemonDown:
                await asyncio.sleep(0.2)
                continue
            if status in (200, 201):
                p.made, p.answered_at = answer, time.time()
                self.created += 1
                self.create_retries += p.create_attempts - 1
                return
            if status != 503:  # chain_unavailable: a chain not followed yet after a restart
                raise AssertionError(f"POST /v1/payments for {p.key}: {status} {answer}")
            await asyncio.sleep(0.2)
        raise AssertionError(f"POST /v1/payments for {p.key}: never answered")

    async def _cancel(
        self, session: aiohttp.ClientSession, p: PaymentRecord, kill: Callable[[], Any] | None
    ) -> str:
        path = f"/v1/payments/{p.reference}/cancel"
        sent = time.time()
        if kill is not None:
            request = asyncio.create_task(self._call(session, "POST", path))
            await asyncio.sleep(self.rng.uniform(0.0, 0.02))
            await kill()
            with contextlib.suppress(DaemonDown):
                await request
        for _ in range(200):
            try:
                status, answer = await self._call(session, "POST", path)
            except DaemonDown:
                await asyncio.sleep(0.2)
                continue
            p.cancel = CancelRecord(sent, time.time(), status, answer)
            return f"cancel {p.describe()}: {status} {answer.get('status') or answer.get('error')}"
        raise AssertionError(f"cancel of {p.key}: never answered")

    async def _double_spend(self, session: aiohttp.ClientSession, p: PaymentRecord) -> str:
        """Once the daemon shows the payment linked (bounded wait), its transaction is replaced by a
        conflict mined in a new block: everything paid to it is gone."""
        for _ in range(100):
            with contextlib.suppress(DaemonDown):
                status, found = await self._call(session, "GET", f"/v1/payments/{p.reference}")
                if status == 200 and found["status"] != "pending":
                    break
            await asyncio.sleep(0.2)
        tx = p.txs[0]
        key = self._keys.pop(tx.txid, None)
        depth = await asyncio.to_thread(self._confirmations, p, tx)
        if key is None or depth >= self.chains.min_conf["BTC"]:
            # Mined deep meanwhile: replacing it would undo a confirmation, which no trial reorg does.
            return f"no double-spend of {tx.txid} ({depth} confirmations): {p.describe()} is paid"
        gone_lo = time.time()
        conflict, _ = await asyncio.to_thread(btc.double_spend_reorg, self.chains.bitcoin, tx.txid, key=key)
        tx.gone_lo, tx.gone_hi = gone_lo, time.time()
        return f"double-spent {tx.txid} of {p.describe()} by {conflict}"

    # ---------------------------------------------------------------------------------- paying (threads)

    def _pay(self, p: PaymentRecord, amount: int, mine_now: bool, late: bool = False) -> str:
        c = self.chains
        lo = time.time()
        if p.currency == "BTC":
            txid = btc.pay(c.bitcoin, p.address, amount)
            index = btc.find_output(btc.raw_transaction(c.bitcoin, txid), btc.script_of(p.address))
            hi = time.time()
            if mine_now:
                btc.mine(c.bitcoin, c.min_conf["BTC"])
        else:
            sender = self.rng.choice(c.senders)
            if p.currency == "ETH":
                txid, index = evm.send_eth(c.url, sender, p.address, amount, wait=False), -1
            else:
                txid = evm.token_transfer(c.url, c.tokens[p.currency], sender, p.address, amount, wait=False)
                index = 0
            evm.mine(c.url, c.min_conf[p.currency])  # seen and confirmed at once: beyond any reorg's reach
            hi = time.time()
        p.txs.append(PaidTx(txid, index, amount, lo, hi, late=late, last_look=lo))
        what = "late payment" if late else "paid"
        return f"{what} {format_amount(amount, DECIMALS[p.currency])} {p.currency} to {p.describe()} ({txid})"

    def _pay_keyed(self, p: PaymentRecord) -> str:
        """The exact amount from a coin of a key held here, so the transaction can be double-spent."""
        c = self.chains
        keyed = c.take_keyed()
        if keyed is None:
            return self._pay(p, p.amount, False)
        change = keyed.utxo.value - p.amount - btc.DEFAULT_FEE
        outputs = [(btc.script_of(p.address), p.amount), (btc.burn_script(), change)]
        lo = time.time()
        txid = btc.send_raw(c.bitcoin, btc.build_payment(keyed.utxo, keyed.key, outputs))
        p.txs.append(PaidTx(txid, 0, p.amount, lo, time.time(), last_look=lo))
        self._keys[txid] = keyed.key
        return f"paid {p.asked} BTC (signed here) to {p.describe()} ({txid})"

    # ---------------------------------------------------------------------------------- looking

    def observe(self) -> None:
        """After a step: which payment transactions now have their minimum confirmations (in a thread)."""
        c = self.chains
        for p in self.payments:
            for tx in p.txs:
                if tx.confirmed_hi is not None or tx.gone_lo is not None:
                    continue
                now = time.time()
                if self._confirmations(p, tx) >= c.min_conf[p.currency]:
                    tx.confirmed_lo, tx.confirmed_hi = tx.last_look, time.time()
                else:
                    tx.last_look = now

    def _confirmations(self, p: PaymentRecord, tx: PaidTx) -> int:
        c = self.chains
        if p.currency == "BTC":
            block = btc.in_main_chain(c.bitcoin, tx.txid)
            if block is None:
                return 0
            height = int(btc.node_rpc(c.bitcoin, "getblockheader", block)["height"])
            return btc.height(c.bitcoin) - height + 1
        receipt = evm.rpc(c.url, "eth_getTransactionReceipt", tx.txid)
        if receipt is None or receipt.get("status") != "0x1":
            return 0
        return evm.head_height(c.url) - int(receipt["blockNumber"], 16) + 1

    def late_payments(self, ended: Callable[[PaymentRecord], bool]) -> None:
        """A late payment to each unpaid payment that has surely ended by now (see payment_invariants)."""
        for p in self.payments:
            if p.kind == "unpaid" and p.made and not p.txs and ended(p):
                self.due.append((time.time(), "late", p))

    def transfers(self) -> list[SentTransfer]:
        """Every transfer to a payment's address, as the deposits checker knows transfers."""
        return [
            SentTransfer(p.chain, p.currency, tx.txid, tx.index, p.address, "", tx.amount)
            for p in self.payments
            for tx in p.txs
        ]

    async def collect(self, session: aiohttp.ClientSession) -> None:
        """Each payment as the API shows it now, and the payments listed under its key."""
        for p in self.payments:
            if not p.made:
                continue
            status, p.final = await self._call(session, "GET", f"/v1/payments/{p.reference}")
            if status != 200:
                p.final = {"error": p.final, "http_status": status}
            status, listed = await self._call(
                session, "GET", f"/v1/payments?customer_reference={p.key}&limit=100"
            )
            p.same_key = [str(x["payment_reference"]) for x in listed.get("data", [])]
