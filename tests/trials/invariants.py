"""The invariants every trial ends with: nothing lost, nothing invented, nothing out of order.

A trial records its ground truth as it goes (every transfer it made to a watched address, with the id the
scenario knows it by: chain, currency, txid, output or log index, the address as configured, the
customer's foreign_id, the amount in base units). At the end it asks the real nodes where each of those
transfers is in the final main chain (`evm_final_chain`, `btc_final_chain`), takes every request the
merchant receiver got (raw bytes, signature headers) and the daemon's store (an SQLite file or a
PostgreSQL database), and `check` compares them. Everything here is computed independently of `watcher/`
and `chains/`: amounts are formatted, the HMAC computed, blocks and logs read from the nodes by this
module's own code, the store read with plain sqlite3 or plain asyncpg, the same queries on both. A
violation is a failure; the report's figures are printed by the trial.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import hmac
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from devnet import btc_tools as btc
from devnet import evm_tools as evm
from devnet.bcoin import BcoinNode
from devnet.receiver import Receiver
from watcher.receiver import Received

# Written out here rather than imported from the code under test.
SIGNATURE_HEADER = "X-Processing-Signature"
ERC20_TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
STATUSES = ("not_confirmed", "confirmed", "cancelled")

# (chain, txid, currency, address as configured, index): one deposit, as callbacks.md defines it.
DepositKey = tuple[str, str, str, str, int]


# ------------------------------------------------------------------------------------ ground truth


@dataclass(frozen=True, slots=True)
class SentTransfer:
    """One transfer the scenario made to a watched (currency, address): a deposit-to-be.

    `index` is the vout for Bitcoin; for EVM -1 for a transaction's ETH value and, for a token, the
    ordinal of the Transfer log among the transaction's Transfer logs of that token's contract.
    """

    chain: str  # the config's chain name
    currency: str
    txid: str
    index: int
    address: str  # exactly as configured
    foreign_id: str
    amount: int  # base units
    inputs: tuple[str, ...] = ()  # Bitcoin: the outpoints ("txid:vout") the transaction spends

    @property
    def key(self) -> DepositKey:
        return (self.chain, self.txid, self.currency, self.address, self.index)

    def describe(self) -> str:
        return f"{self.currency} {self.amount} to {self.address} in {self.txid}:{self.index}"


@dataclass(frozen=True, slots=True)
class Currency:
    chain: str
    decimals: int
    min_confirmations: int


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a transfer is in the final main chain. `gone`: it is not, and never can be (EVM: the node
    no longer knows the transaction; Bitcoin: one of its inputs is spent by another transaction of the
    chain). `mismatch`: the node holds the transaction but not this transfer as the scenario recorded it
    (a bug of the trial itself)."""

    block_height: int | None = None
    block_hash: str | None = None
    confirmations: int = 0
    mismatch: str = ""
    gone: bool = False

    @property
    def in_chain(self) -> bool:
        return self.block_hash is not None and not self.mismatch


NOT_IN_CHAIN = Placement()
GONE = Placement(gone=True)


# ------------------------------------------------------------------------------------ final chains


def evm_final_chain(
    url: str, transfers: Iterable[SentTransfer], contracts: Mapping[str, str]
) -> dict[DepositKey, Placement]:
    """Where each EVM transfer is in anvil's final main chain.

    In it means: a receipt with status 1 whose block is the main-chain block at its height, and the
    transaction's value (ETH) or its `index`-th Transfer log of the currency's contract (tokens) pays
    the address that amount. `contracts`: token currency -> contract address; ETH has none.
    """
    head = evm.head_height(url)
    result: dict[DepositKey, Placement] = {}
    receipts: dict[str, Any] = {}
    txs: dict[str, Any] = {}
    canonical: dict[int, str] = {}
    for t in transfers:
        if t.txid not in receipts:
            receipts[t.txid] = evm.rpc(url, "eth_getTransactionReceipt", t.txid)
        receipt = receipts[t.txid]
        if receipt is None:
            # anvil forgets the transactions of blocks it reorganises away: unknown means gone for good.
            known = evm.rpc(url, "eth_getTransactionByHash", t.txid) is not None
            result[t.key] = NOT_IN_CHAIN if known else GONE
            continue
        if receipt.get("status") != "0x1":
            result[t.key] = NOT_IN_CHAIN
            continue
        height = int(receipt["blockNumber"], 16)
        if height not in canonical:
            canonical[height] = str(evm.rpc(url, "eth_getBlockByNumber", hex(height), False)["hash"])
        if canonical[height] != receipt["blockHash"]:
            result[t.key] = NOT_IN_CHAIN
            continue
        if t.currency in contracts:
            mismatch = _token_mismatch(t, receipt, contracts[t.currency])
        else:
            if t.txid not in txs:
                txs[t.txid] = evm.rpc(url, "eth_getTransactionByHash", t.txid)
            tx = txs[t.txid]
            paid = (str(tx.get("to") or "").lower(), int(tx["value"], 16))
            mismatch = "" if paid == (t.address.lower(), t.amount) else f"the transaction pays {paid}"
        result[t.key] = Placement(height, str(receipt["blockHash"]), head - height + 1, mismatch)
    return result


def _token_mismatch(t: SentTransfer, receipt: Mapping[str, Any], contract: str) -> str:
    logs = [
        log
        for log in receipt.get("logs", [])
        if str(log["address"]).lower() == contract.lower()
        and len(log["topics"]) == 3
        and str(log["topics"][0]).lower() == ERC20_TRANSFER_TOPIC
    ]
    if not 0 <= t.index < len(logs):
        return f"the transaction has {len(logs)} Transfer logs of {contract}"
    log = logs[t.index]
    to, amount = "0x" + str(log["topics"][2])[-40:].lower(), int(log["data"], 16)
    if (to, amount) != (t.address.lower(), t.amount):
        return f"Transfer log {t.index} pays {amount} to {to}"
    return ""


def btc_final_chain(node: BcoinNode, transfers: Iterable[SentTransfer]) -> dict[DepositKey, Placement]:
    """Where each Bitcoin transfer is in the node's final main chain: the block the transaction index
    names must be the main-chain block at its height, and output `index` must pay the address the amount."""
    tip = btc.height(node)
    pool = set(btc.mempool(node))
    result: dict[DepositKey, Placement] = {}
    for t in transfers:
        block = btc.in_main_chain(node, t.txid)
        if block is None:
            gone = t.txid not in pool and any(_spent_in_chain(node, outpoint) for outpoint in t.inputs)
            result[t.key] = GONE if gone else NOT_IN_CHAIN
            continue
        height = int(btc.node_rpc(node, "getblockheader", block)["height"])
        outputs = btc.raw_transaction(node, t.txid).vout
        mismatch = ""
        if not 0 <= t.index < len(outputs):
            mismatch = f"the transaction has {len(outputs)} outputs"
        else:
            out = outputs[t.index]
            paid = (btc.address_of(bytes(out.scriptPubKey)), int(out.nValue))
            if paid != (t.address, t.amount):
                mismatch = f"output {t.index} pays {paid}"
        result[t.key] = Placement(height, block, tip - height + 1, mismatch)
    return result


def _spent_in_chain(node: BcoinNode, outpoint: str) -> bool:
    """The output exists in the main chain and a transaction of the main chain spends it."""
    txid, vout = outpoint.split(":")
    return (
        btc.in_main_chain(node, txid) is not None
        and btc.node_rpc(node, "gettxout", txid, int(vout), False) is None
    )


# ------------------------------------------------------------------------------------ the receiver


class SigningReceiver(Receiver):
    """The devnet Receiver, also keeping every `X-Processing-Signature` header it got, by body bytes,
    so the checker can verify signatures with its own HMAC instead of trusting the receiver's verdict."""

    def __init__(self, key: str, secret: str, **kwargs: Any) -> None:
        super().__init__(key, secret, **kwargs)
        self.signatures: dict[bytes, set[str]] = defaultdict(set)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()  # aiohttp keeps the body: the base handler reads the same bytes
        self.signatures[raw].add(request.headers.get(SIGNATURE_HEADER, ""))
        return await super()._handle(request)


# ------------------------------------------------------------------------------------ the check


@dataclass
class Report:
    deposits: int = 0  # transfers to watched addresses the scenario made
    in_final_chain: int = 0  # of those, in the final main chain
    due_confirmed: int = 0  # of those, with at least their minimum confirmations
    requests: int = 0  # every request the receiver got
    delivered: int = 0  # answered 2xx in time
    duplicates: int = 0  # deliveries beyond the first of one (id, status)
    ids: int = 0  # distinct deposit ids in callbacks
    by_status: dict[str, int] = field(default_factory=dict)  # delivered callbacks per status
    store_deposits: int = 0
    outbox: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def figures(self) -> str:
        statuses = ", ".join(f"{s} {self.by_status.get(s, 0)}" for s in STATUSES)
        outbox = ", ".join(f"{k} {v}" for k, v in sorted(self.outbox.items())) or "empty"
        return (
            f"deposits {self.deposits} ({self.in_final_chain} in the final chain, "
            f"{self.deposits - self.in_final_chain} removed by reorgs/double-spends)\n"
            f"requests received {self.requests}, callbacks delivered {self.delivered} ({statuses}), "
            f"duplicates {self.duplicates}, deposit ids {self.ids}\n"
            f"store: {self.store_deposits} deposits, outbox {outbox}\n"
            f"invariant violations {len(self.violations)}"
        )


def format_amount(amount: int, decimals: int) -> str:
    """Base units as the exact decimal string callbacks.md asks for (the checker's own copy)."""
    whole, fraction = divmod(amount, 10**decimals)
    return f"{whole}.{fraction:0{decimals}d}" if decimals else str(whole)


def check(
    *,
    transfers: Sequence[SentTransfer],
    final: Mapping[DepositKey, Placement],
    currencies: Mapping[str, Currency],
    requests: Sequence[Received],
    signatures: Mapping[bytes, set[str]] | None,
    key: str,
    secret: str,
    store: str | Path,
    daemon_running: bool,
    payment_transfers: Sequence[SentTransfer] = (),
) -> Report:
    """Check the invariants of the issue "Nothing lost, nothing invented" (numbered as in the issue, plus
    6: a deposit whose transaction is gone for good ends cancelled); see the module docstring.

    `store`: the daemon's store, an SQLite file or a `postgresql://` URL (as config `database` names it).

    `payment_transfers`: what the scenario paid to payments' addresses: deposits in the store, never a
    CoinsPaid callback (tests/trials/payment_invariants.py checks their payments)."""
    report = Report(deposits=len(transfers), requests=len(requests))
    v = report.violations
    truth = {t.key: t for t in transfers}
    to_payments = {_loose(t.key): t for t in payment_transfers}
    if len(truth) != len(transfers):
        v.append("ground truth: the scenario recorded one transfer twice")
    for t in transfers:
        p = final.get(t.key, NOT_IN_CHAIN)
        if p.mismatch:
            v.append(f"ground truth: {t.describe()} disagrees with the chain: {p.mismatch}")
    report.in_final_chain = sum(1 for t in transfers if final.get(t.key, NOT_IN_CHAIN).in_chain)

    calls = _parse_requests(requests, v)
    _check_signatures(requests, signatures, key, secret, v)
    _check_identity(calls, v)
    _check_order(calls, v)
    _check_bodies(calls, truth, final, currencies, v, to_payments)

    # 1. every transfer in the final chain with its minimum confirmations has a delivered `confirmed`.
    delivered = [c for c in calls if c.request.accepted]
    confirmed_keys = {c.key for c in delivered if c.status == "confirmed"}
    for t in transfers:
        p = final.get(t.key, NOT_IN_CHAIN)
        if p.in_chain and p.confirmations >= currencies[t.currency].min_confirmations:
            report.due_confirmed += 1
            if t.key not in confirmed_keys:
                v.append(
                    f"missed: {t.describe()} has {p.confirmations} confirmations, no confirmed delivered"
                )

    # 6. a deposit the merchant was told of, whose transaction can never be mined, is cancelled.
    told = {c.key for c in delivered}
    cancelled_keys = {c.key for c in delivered if c.status == "cancelled"}
    for t in transfers:
        if final.get(t.key, NOT_IN_CHAIN).gone and t.key in told and t.key not in cancelled_keys:
            v.append(f"not cancelled: {t.describe()} is gone for good, the merchant was not told")

    report.delivered = len(delivered)
    report.by_status = dict(Counter(c.status for c in delivered))
    per_id_status = Counter((c.deposit_id, c.status) for c in delivered)
    report.duplicates = sum(n - 1 for n in per_id_status.values())
    report.ids = len({c.deposit_id for c in calls})

    # 5. the daemon still runs, and its store is intact (and agrees with the ground truth).
    if not daemon_running:
        v.append("the daemon is not running at the end")
    _check_store(str(store), truth, final, report, to_payments)
    return report


def _loose(key: DepositKey) -> DepositKey:
    """A deposit's key with its address in lower case (a payment's EVM address may be spelled either way)."""
    chain, txid, currency, address, index = key
    return (chain, txid, currency, address.lower() if address.startswith("0x") else address, index)


@dataclass(frozen=True, slots=True)
class _Call:
    """A parsed callback request, with its place in the order of arrival."""

    order: int
    request: Received
    deposit_id: int
    status: str
    key: DepositKey
    body: Mapping[str, Any]


def _parse_requests(requests: Sequence[Received], v: list[str]) -> list[_Call]:
    calls = []
    for order, r in enumerate(requests):
        if not r.key_ok or not r.signature_ok or not r.body:
            v.append(f"request {order} rejected by the receiver ({r.outcome}): {r.raw[:200]!r}")
            continue
        try:
            b = r.body
            tx = b["transactions"][0]
            key = (str(tx["chain"]), str(tx["txid"]), str(b["crypto_address"]["currency"]),
                   str(b["crypto_address"]["address"]), int(tx["index"]))  # fmt: skip
            calls.append(_Call(order, r, int(b["id"]), str(b["status"]), key, b))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            v.append(f"request {order}: not a deposit callback ({exc!r}): {r.raw[:200]!r}")
    return calls


def _check_signatures(
    requests: Sequence[Received], signatures: Mapping[bytes, set[str]] | None, key: str, secret: str,
    v: list[str],
) -> None:  # fmt: skip
    """4. every signature is the HMAC-SHA512 of the exact bytes received, computed here."""
    if signatures is None:
        v.append("no signature headers recorded: use SigningReceiver")
        return
    for order, r in enumerate(requests):
        expected = hmac.new(secret.encode("utf-8"), r.raw, hashlib.sha512).hexdigest()
        seen = signatures.get(r.raw, set())
        if seen != {expected}:
            v.append(f"request {order}: signature headers {sorted(seen)} != HMAC-SHA512 of the body")


def _check_identity(calls: Sequence[_Call], v: list[str]) -> None:
    """2. one id per deposit, one deposit per id; 1. repeats of an (id, status) are the same bytes."""
    ids_of: dict[DepositKey, set[int]] = defaultdict(set)
    keys_of: dict[int, set[DepositKey]] = defaultdict(set)
    bodies: dict[tuple[int, str], set[bytes]] = defaultdict(set)
    for c in calls:
        ids_of[c.key].add(c.deposit_id)
        keys_of[c.deposit_id].add(c.key)
        bodies[(c.deposit_id, c.status)].add(c.request.raw)
    v += [f"deposit {k} got several ids {sorted(ids)}" for k, ids in ids_of.items() if len(ids) > 1]
    v += [f"id {i} used for several deposits {sorted(ks)}" for i, ks in keys_of.items() if len(ks) > 1]
    v += [
        f"id {i} {status}: {len(raws)} different bodies for one callback"
        for (i, status), raws in bodies.items()
        if len(raws) > 1
    ]


def _check_order(calls: Sequence[_Call], v: list[str]) -> None:
    """3. per id, in order of arrival: never not_confirmed after a final status, never two final ones."""
    seen: dict[int, list[str]] = defaultdict(list)
    for c in sorted(calls, key=lambda c: c.order):
        seen[c.deposit_id].append(c.status)
    for deposit_id, statuses in seen.items():
        finals = {s for s in statuses if s != "not_confirmed"}
        first_final = next((i for i, s in enumerate(statuses) if s != "not_confirmed"), len(statuses))
        if "not_confirmed" in statuses[first_final:]:
            v.append(f"id {deposit_id}: not_confirmed after a final status: {statuses}")
        if len(finals) > 1:
            v.append(f"id {deposit_id}: both confirmed and cancelled: {statuses}")


def _check_bodies(
    calls: Sequence[_Call],
    truth: Mapping[DepositKey, SentTransfer],
    final: Mapping[DepositKey, Placement],
    currencies: Mapping[str, Currency],
    v: list[str],
    to_payments: Mapping[DepositKey, SentTransfer],
) -> None:
    """2. nothing invented, nothing confirmed that is not in the final chain; 4. every field exact."""
    address_ids: dict[tuple[str, str], set[int]] = defaultdict(set)
    for c in calls:
        b, where = c.body, f"id {c.deposit_id} {c.status}"
        t = truth.get(c.key)
        address_ids[(c.key[2], c.key[3])].add(b["crypto_address"]["id"])
        if t is None and _loose(c.key) in to_payments:
            v.append(f"{where}: a CoinsPaid callback for a deposit to a payment's address: {c.key}")
            continue
        if t is None:
            v.append(f"{where}: invented: no such transfer was made to a watched address: {c.key}")
            continue
        p = final.get(c.key, NOT_IN_CHAIN)
        if c.status not in STATUSES:
            v.append(f"{where}: unknown status")
        if c.status == "confirmed" and not p.in_chain:
            v.append(f"{where}: confirmed, but {t.describe()} is not in the final chain")
        if c.status == "cancelled" and p.in_chain:
            v.append(f"{where}: cancelled, but {t.describe()} is in the final chain at {p.block_height}")
        _check_fields(c, t, p, currencies[t.currency], v)
    by_id: dict[int, set[tuple[str, str]]] = defaultdict(set)
    for pair, ids in address_ids.items():
        if len(ids) > 1:
            v.append(f"watched address {pair} has several crypto_address ids {sorted(ids)}")
        for i in ids:
            by_id[i].add(pair)
    v += [
        f"crypto_address id {i} names several addresses {sorted(p)}" for i, p in by_id.items() if len(p) > 1
    ]


def _check_fields(c: _Call, t: SentTransfer, p: Placement, currency: Currency, v: list[str]) -> None:
    b, where = c.body, f"id {c.deposit_id} {c.status} ({t.describe()})"
    tx = b["transactions"][0]
    amount = format_amount(t.amount, currency.decimals)
    expected: dict[str, Any] = {
        "type": "deposit",
        "crypto_address.currency": t.currency,
        "crypto_address.foreign_id": t.foreign_id,
        "crypto_address.tag": None,
        "currency_sent": {"currency": t.currency, "amount": amount},
        "currency_received": {"currency": t.currency, "amount": amount, "amount_minus_fee": amount},
        "fees": [],
        "transactions": 1,
        "tx.id": c.deposit_id,
        "tx.currency": t.currency,
        "tx.address": t.address,
        "tx.amount": amount,
        "tx.txid": t.txid,
        "tx.type": "deposit",
        "tx.transaction_type": "blockchain",
    }
    actual = {
        "type": b.get("type"),
        "crypto_address.currency": b["crypto_address"].get("currency"),
        "crypto_address.foreign_id": b["crypto_address"].get("foreign_id"),
        "crypto_address.tag": b["crypto_address"].get("tag", "missing"),
        "currency_sent": b.get("currency_sent"),
        "currency_received": b.get("currency_received"),
        "fees": b.get("fees"),
        "transactions": len(b["transactions"]),
        "tx.id": tx.get("id"),
        "tx.currency": tx.get("currency"),
        "tx.address": tx.get("address"),
        "tx.amount": tx.get("amount"),
        "tx.txid": tx.get("txid"),
        "tx.type": tx.get("type"),
        "tx.transaction_type": tx.get("transaction_type"),
    }
    v += [
        f"{where}: {k} is {actual[k]!r}, expected {expected[k]!r}"
        for k in expected
        if actual[k] != expected[k]
    ]
    confirmations = tx.get("confirmations")
    if not isinstance(confirmations, str) or not confirmations.isdigit():
        v.append(f"{where}: confirmations {confirmations!r} is not a decimal string")
        return
    n, minimum = int(confirmations), currency.min_confirmations
    if c.status == "confirmed":
        if n < minimum:
            v.append(f"{where}: confirmed with {n} < {minimum} confirmations")
        # Trials reorganise only blocks below the minimum: a confirmed deposit's block is final.
        if p.in_chain and (tx.get("block_hash"), tx.get("block_height")) != (p.block_hash, p.block_height):
            v.append(
                f"{where}: confirmed in block {tx.get('block_height')} {tx.get('block_hash')}, but the final"
                f" chain has it in {p.block_height} {p.block_hash}"
            )
    if c.status == "not_confirmed" and n >= minimum:
        v.append(f"{where}: not_confirmed with {n} >= {minimum} confirmations")
    if (c.status == "cancelled") != bool(b.get("error")):
        v.append(f"{where}: error {b.get('error')!r} (a reason belongs to cancelled, and only there)")


_DEPOSIT_ROWS = (
    "SELECT d.id, d.chain, d.txid, d.currency, a.address, d.tx_index, d.amount, d.status"
    " FROM deposits d JOIN addresses a ON a.id = d.address_id"
)
_OUTBOX_STATES = "SELECT state, count(*) FROM outbox GROUP BY state"


@dataclass(frozen=True, slots=True)
class _StoreRows:
    integrity: str  # "ok", or what is wrong
    deposits: list[tuple[Any, ...]]  # _DEPOSIT_ROWS
    outbox: dict[str, int]


def _read_store(location: str) -> _StoreRows:
    """The rows the checks need, read as any other process would (committed data only)."""
    if location.startswith(("postgresql://", "postgres://")):
        return _read_postgres(location)
    with contextlib.closing(sqlite3.connect(f"file:{location}?mode=ro", uri=True, timeout=10)) as conn:
        integrity = ", ".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check"))
        deposits = conn.execute(_DEPOSIT_ROWS).fetchall()
        outbox = dict(conn.execute(_OUTBOX_STATES).fetchall())
    return _StoreRows(integrity, deposits, outbox)


def _read_postgres(url: str) -> _StoreRows:
    """PostgreSQL checks every constraint and reference as rows are written: its "integrity" here is that
    the schema is there. Runs on a loop of its own in a worker thread (`check` is called from threads
    and from coroutines alike)."""

    async def read() -> _StoreRows:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            version = await conn.fetchval("SELECT max(version) FROM schema_version")
            deposits = [tuple(r) for r in await conn.fetch(_DEPOSIT_ROWS)]
            outbox = {str(r[0]): int(r[1]) for r in await conn.fetch(_OUTBOX_STATES)}
        finally:
            await conn.close()
        return _StoreRows("ok" if version else f"no schema version ({version})", deposits, outbox)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, read()).result()


def _check_store(
    location: str,
    truth: Mapping[DepositKey, SentTransfer],
    final: Mapping[DepositKey, Placement],
    report: Report,
    to_payments: Mapping[DepositKey, SentTransfer],
) -> None:
    v = report.violations
    try:
        rows = _read_store(location)
    except (OSError, sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        v.append(f"store {location}: cannot read: {exc}")
        return
    if rows.integrity != "ok":
        v.append(f"store: integrity_check says {rows.integrity!r}")
    report.store_deposits = len(rows.deposits)
    for deposit_id, chain, txid, currency, address, index, amount, status in rows.deposits:
        key = (chain, txid, currency, address, int(index))
        t = truth.get(key)
        paid = to_payments.get(_loose(key))
        if t is None and paid is not None:
            if int(amount) != paid.amount:
                v.append(f"store: deposit {deposit_id} to a payment's address: {amount} != {paid.amount}")
        elif t is None:
            v.append(f"store: deposit {deposit_id} {key} is no transfer the scenario made")
        elif int(amount) != t.amount:
            v.append(f"store: deposit {deposit_id} amount {amount} != {t.amount}")
        elif status == "confirmed" and not final.get(key, NOT_IN_CHAIN).in_chain:
            v.append(f"store: deposit {deposit_id} confirmed but not in the final chain: {key}")
    report.outbox = rows.outbox
    if report.outbox.get("failed"):
        v.append(f"store: {report.outbox['failed']} callbacks failed for good (retry schedule exhausted)")
    if report.outbox.get("pending"):
        v.append(f"store: {report.outbox['pending']} callbacks still pending at the end")
