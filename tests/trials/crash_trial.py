"""The crash trial: random payments, reorgs and merchant faults while the daemon is SIGKILLed again and again.

    python -m tests.trials.crash_trial --deposits 50 --kills 10 --payments 24 --seed N [--store postgres]

One seeded `random.Random` drives the whole script of actions, so a failure replays with `--seed`
(the daemon's own timing differs between runs; the actions do not). It starts anvil (ETH and two 6-decimal
test tokens, USDT and USDC, plus an unconfigured look-alike) and a funded bcoin regtest node, a merchant
receiver in this process that fails a random share of callbacks (500/503, answers after the daemon's
timeout, dropped connections; its plan is refilled as the run goes), writes a config (small minimum
confirmations, a retry schedule in seconds, 0.2 s polls) and starts the real daemon process. Then, step
by step: payments to watched addresses (ETH, USDT, USDC, BTC; addresses reused; token batches and
Bitcoin transactions with several outputs, one to the same address twice), controls that must give no
callback (unwatched addresses, a watched address for another currency, zero values, a reverting receiver,
an unconfigured token), mining, and reorgs shallower than the minimum (EVM: re-include, drop, replace;
Bitcoin: move transactions back to the mempool and into new blocks, double-spend). At least `--kills`
times, spread over the run, the daemon is SIGKILLed: right after a payment, right after a reorg, at a
random moment, while it starts, or left down while the chains move on; then it is restarted.

With `--payments N` (24 by default; 0 leaves them out) a second integration takes payments for orders
with Coinskro webhooks at its own faulty receiver, and tests/trials/payments.py's seeded schedule of
payments runs between the steps (created, paid, expired, canceled, double-spent, paid late), some of its
requests interrupted by a SIGKILL and retried with the same Idempotency-Key.

At the end the faults stop, both chains mine past every minimum, the trial waits (bounded) until the
daemon has delivered everything and every payment has surely ended, and `tests.trials.invariants.check`
compares the receiver's requests and the store with the final chains, and
`tests.trials.payment_invariants.check_payments` each payment's final status and webhooks with the
lives its evidence allows. The figures are printed; any violation makes the exit code 1.

`--store postgres` runs the same trial on a PostgreSQL store: the trial starts a server of its own
(devnet/postgres.py, a cluster in the work directory) and gives the daemon its `database.url`; the
default is an SQLite file in the work directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from bitcoin.core import b2lx

from chains.evm.address import to_checksum
from devnet import btc_tools as btc
from devnet import evm_tools as evm
from devnet.anvil import AnvilNode
from devnet.bcoin import BcoinNode
from devnet.postgres import PostgresServer
from devnet.receiver import Receiver
from tests.daemon_process import DaemonProcess, free_port, write_config
from tests.trials import payments as pay
from tests.trials.invariants import (
    Currency,
    DepositKey,
    Placement,
    Report,
    SentTransfer,
    SigningReceiver,
    btc_final_chain,
    check,
    evm_final_chain,
)
from tests.trials.payment_invariants import PaymentReport, check_payments, surely_ended

KEY, SECRET = "trial-key", "trial-secret-\u00fc"
EVM, BTC = "ethereum", "bitcoin"
DEFAULT_SEED = 20_240_611
# Retries every few seconds for minutes: no callback can exhaust the schedule within a run, and once the
# faults stop every pending one is retried within seconds.
RETRY_SCHEDULE_MIN = [0.002, 0.005, 0.01, 0.02, 0.03, *(round(0.05 * i, 2) for i in range(1, 61))]
MERCHANT_TIMEOUT_S = 1.0
# The merchant's answers: any 2xx is a delivery; a redirect is not followed; "timeout" answers after the
# daemon stopped waiting; "drop" closes the connection unanswered; "huge" is a 500 with a 1 MB page.
SUCCESSES: list[int | str] = [200, 200, 200, 200, 201, 202, 204]
FAILURES: list[int | str] = [
    500,
    500,
    500,
    503,
    404,
    "timeout",
    "timeout",
    "drop",
    "drop",
    "redirect",
    "huge",
]
STORES = ("sqlite", "postgres")
KEYED_UTXOS = 40
KEYED_UTXO_SATS = 30_000_000


def replay_command(options: TrialOptions) -> str:
    return (
        f"python -m tests.trials.crash_trial --deposits {options.deposits} --kills {options.kills}"
        f" --payments {options.payments} --seed {options.seed}"
        + (f" --store {options.store}" if options.store != "sqlite" else "")
    )


class TrialError(Exception):
    """The trial could not run to its end (a node or the daemon failed); the message names the seed."""


@dataclass(frozen=True, slots=True)
class TrialOptions:
    deposits: int = 50
    kills: int = 10
    seed: int = DEFAULT_SEED
    workdir: Path | None = None  # config, store, daemon log, step log; a temporary directory if None
    final_wait_s: float = 180.0
    verbose: bool = False
    payments: int = 24  # payments for orders (tests/trials/payments.py); 0: the deposits flow alone
    store: str = "sqlite"  # or "postgres": a PostgreSQL server of the trial's own (STORES)


@dataclass
class TrialResult:
    options: TrialOptions
    report: Report
    workdir: Path
    kills: int = 0
    reorgs_evm: int = 0
    reorgs_btc: int = 0
    double_spends: int = 0
    controls: int = 0
    steps: int = 0
    run_time_s: float = 0.0
    daemon_exit: int | None = None
    payments: PaymentReport | None = None

    @property
    def ok(self) -> bool:
        return self.report.ok

    def figures(self) -> str:
        return (
            f"crash trial, seed {self.options.seed}, store {self.options.store}: {self.steps} steps\n"
            f"{self.report.figures()}\n"
            f"kills {self.kills}, reorgs EVM {self.reorgs_evm} / BTC {self.reorgs_btc}, "
            f"BTC double-spends {self.double_spends}, controls {self.controls}, "
            f"daemon exit on SIGTERM {self.daemon_exit}\n"
            + (self._payment_figures() if self.payments is not None else "")
            + f"run time {self.run_time_s:.1f} s"
        )

    def _payment_figures(self) -> str:
        p = self.payments
        assert p is not None
        statuses = ", ".join(f"{k} {n}" for k, n in sorted((p.by_status or {}).items()))
        return (
            f"payments {p.payments} ({statuses}); {p.ambiguous} near a deadline (either end allowed), "
            f"{p.in_grace} completed in their grace, {p.late} late payments recorded, "
            f"{p.retried_creates} created only by a retry of the same key\n"
            f"webhooks received {p.webhooks}, delivered {p.delivered}, repeats {p.repeats}\n"
        )

    def failure_message(self) -> str:
        return (
            f"crash trial seed {self.options.seed}: {len(self.report.violations)} invariant violation(s); "
            f"replay: {replay_command(self.options)}\n{listed(self.report.violations)}"
            f"\n{self.figures()}\nfiles (config, store, daemon.log, steps.log): {self.workdir}"
        )


def listed(violations: Sequence[str], limit: int = 40) -> str:
    """The first `limit` violations, one a line, and how many more there are."""
    more = len(violations) - limit
    lines = "\n".join(f"  - {v}" for v in violations[:limit])
    return lines + (f"\n  ... and {more} more" if more > 0 else "")


# ------------------------------------------------------------------------------------------ the world


@dataclass(frozen=True, slots=True)
class Watched:
    chain: str
    currency: str
    address: str  # as configured (and as the callbacks must name it)
    foreign_id: str
    script: bytes = b""  # Bitcoin: the scriptPubKey


@dataclass
class KeyedUtxo:
    """A confirmed P2PKH output whose key the trial holds: payments from it can be double-spent."""

    key: Any
    utxo: btc.Utxo


@dataclass
class Scenario:
    """The chains, the watched addresses, and what the script did: the ground truth."""

    rng: random.Random
    url: str
    bitcoin: BcoinNode
    senders: list[str]
    tokens: dict[str, str]  # USDT, USDC, FAKE -> contract
    watched: list[Watched]
    unwatched_evm: list[str]
    unwatched_btc: list[str]
    keyed: list[KeyedUtxo]
    min_conf: dict[str, int]
    evm_anchor: int  # the block before the daemon's first: reorgs never reach it
    btc_anchor: int
    log: Callable[[str], None]
    transfers: list[SentTransfer] = field(default_factory=list)
    controls: list[str] = field(default_factory=list)
    double_spendable: dict[str, Any] = field(default_factory=dict)  # txid -> key of its input
    reorgs_evm: int = 0
    reorgs_btc: int = 0
    double_spends: int = 0
    kinds: set[str] = field(default_factory=set)  # the kinds of reorg done so far
    evm_high: int = 0  # the highest EVM tip so far (seen before every reorg, the only way down)

    def cover(self) -> list[Callable[[], str]]:
        """Steps that make up for a kind of reorg the random script happened not to do (short runs):
        a payment to reorganise, then that reorg."""
        steps: list[Callable[[], str]] = []
        for kind in ("replace", "reinclude", "drop", "rollback"):
            if f"evm_{kind}" not in self.kinds:
                steps += [self.pay_eth, self.mine_evm_one, functools.partial(self.reorg_evm, kind)]
        if "btc_move" not in self.kinds:
            steps += [self.pay_btc, self.mine_btc_one, functools.partial(self.reorg_btc, "move")]
        if "btc_double_spend" not in self.kinds:
            steps += [self.btc_keyed, functools.partial(self.reorg_btc, "double_spend")]
        return steps

    # ---------------------------------------------------------------------------------- helpers

    def of(self, currency: str) -> list[Watched]:
        return [w for w in self.watched if w.currency == currency]

    def payable(self, currency: str) -> list[Watched]:
        """Watched addresses a payment of `currency` can be made to: not the reverting one, and for
        Bitcoin not taproot (bcoin's wallet cannot pay it; see btc_taproot)."""
        return [
            w for w in self.of(currency) if w.foreign_id != "reverting" and not w.address.startswith("bcrt1p")
        ]

    def max_depth(self, chain: str) -> int:
        """Deepest reorg allowed: it replaces no block that ever had the chain's minimum confirmations
        (counted from the highest tip so far: an EVM rollback lowers the tip, not what the daemon may
        already have confirmed), and never the daemon's anchor block."""
        minimum = min(m for c, m in self.min_conf.items() if (c == "BTC") == (chain == BTC))
        if chain == EVM:
            tip = evm.head_height(self.url)
            self.evm_high = max(self.evm_high, tip)
            room, lowered = tip - self.evm_anchor, self.evm_high - tip
        else:
            room, lowered = btc.height(self.bitcoin) - self.btc_anchor, 0  # Bitcoin tips never go down
        return min(minimum - 1 - lowered, room)

    def record(self, w: Watched, txid: str, index: int, amount: int, inputs: tuple[str, ...] = ()) -> None:
        self.transfers.append(
            SentTransfer(w.chain, w.currency, txid, index, w.address, w.foreign_id, amount, inputs)
        )

    def sender(self) -> str:
        return self.rng.choice(self.senders)

    # ---------------------------------------------------------------------------------- EVM payments

    def pay_eth(self) -> str:
        w = self.rng.choice(self.payable("ETH"))
        wei = self.rng.randrange(1, 10**18) if self.rng.random() < 0.8 else self.rng.randrange(1, 10**6)
        txid = evm.send_eth(self.url, self.sender(), w.address, wei, wait=False)
        self.record(w, txid, -1, wei)
        return f"pay ETH {wei} to {w.address} ({txid})"

    def pay_token(self) -> str:
        currency = self.rng.choice(["USDT", "USDC"])
        w = self.rng.choice(self.of(currency))
        amount = self.rng.randrange(1, 10**10)
        txid = evm.token_transfer(
            self.url, self.tokens[currency], self.sender(), w.address, amount, wait=False
        )
        self.record(w, txid, 0, amount)
        return f"pay {currency} {amount} to {w.address} ({txid})"

    def token_batch(self) -> str:
        """One transaction, several Transfer logs: watched (one address maybe twice), unwatched, zero."""
        currency = self.rng.choice(["USDT", "USDC"])
        parts: list[tuple[Watched | None, str, int]] = []
        for _ in range(self.rng.randint(2, 4)):
            roll = self.rng.random()
            if roll < 0.65:
                w = self.rng.choice(self.of(currency))
                parts.append((w, w.address, self.rng.randrange(1, 10**10)))
            elif roll < 0.85:
                parts.append((None, self.rng.choice(self.unwatched_evm), self.rng.randrange(1, 10**8)))
            else:
                parts.append((None, self.rng.choice(self.of(currency)).address, 0))  # zero: no deposit
        txid = evm.token_batch_transfer(
            self.url, self.tokens[currency], self.sender(), [p[1] for p in parts], [p[2] for p in parts],
            wait=False,
        )  # fmt: skip
        for ordinal, (paid, _address, amount) in enumerate(parts):
            if paid is not None:
                self.record(paid, txid, ordinal, amount)
        return f"batch {currency} {[(a[:8], n) for _, a, n in parts]} ({txid})"

    # ---------------------------------------------------------------------------------- Bitcoin payments

    def _record_outputs(self, txid: str, paid: Sequence[Watched]) -> None:
        tx = btc.raw_transaction(self.bitcoin, txid)
        inputs = tuple(f"{b2lx(txin.prevout.hash)}:{txin.prevout.n}" for txin in tx.vin)
        for w in dict.fromkeys(paid):
            for vout, out in enumerate(tx.vout):
                if bytes(out.scriptPubKey) == w.script:
                    self.record(w, txid, vout, int(out.nValue), inputs)

    def pay_btc(self) -> str:
        w = self.rng.choice(self.payable("BTC"))
        sats = self.rng.randrange(5_000, 5_000_000)
        txid = btc.pay(self.bitcoin, w.address, sats)
        self._record_outputs(txid, [w])
        return f"pay BTC {sats} to {w.address} ({txid})"

    def btc_many(self) -> str:
        """One wallet transaction paying several watched addresses (and maybe an unwatched one)."""
        chosen = self.rng.sample(self.payable("BTC"), self.rng.randint(2, 3))
        payments = {w.address: self.rng.randrange(5_000, 2_000_000) for w in chosen}
        if self.rng.random() < 0.5:
            payments[self.rng.choice(self.unwatched_btc)] = self.rng.randrange(5_000, 100_000)
        txid = btc.pay_many(self.bitcoin, payments)
        self._record_outputs(txid, chosen)
        return f"pay BTC to {len(payments)} addresses ({txid})"

    def _keyed_payment(self, to_taproot: bool) -> tuple[Any, list[Watched], KeyedUtxo] | None:
        if not self.keyed:
            return None
        source = self.keyed.pop()
        if to_taproot:
            paid = [w for w in self.of("BTC") if w.address.startswith("bcrt1p")]
        else:  # repeats pay the same address twice in one transaction: two deposits
            paid = [self.rng.choice(self.payable("BTC")) for _ in range(self.rng.randint(1, 3))]
        outputs = [(w.script, self.rng.randrange(5_000, 3_000_000)) for w in paid]
        if self.rng.random() < 0.3:
            outputs.insert(0, (btc.script_of(self.rng.choice(self.unwatched_btc)), 50_000))
        change = source.utxo.value - sum(v for _, v in outputs) - btc.DEFAULT_FEE
        outputs.append((btc.burn_script(), change))
        return btc.build_payment(source.utxo, source.key, outputs), paid, source

    def btc_keyed(self) -> str:
        """A transaction signed here (so it can be double-spent), 1-3 outputs to watched addresses."""
        made = self._keyed_payment(to_taproot=False)
        if made is None:
            return self.pay_btc()
        tx, paid, source = made
        txid = btc.send_raw(self.bitcoin, tx)
        self.double_spendable[txid] = source.key
        self._record_outputs(txid, paid)
        return f"pay BTC (signed here) to {len(paid)} watched outputs ({txid})"

    def btc_taproot(self) -> str:
        """bcoin cannot relay a payment to bcrt1p…: mine it in a block built here, on the tip."""
        made = self._keyed_payment(to_taproot=True)
        if made is None:
            return self.pay_btc()
        tx, paid, source = made
        block = btc.submit_block(
            self.bitcoin, btc.build_block(self.bitcoin, btc.best_hash(self.bitcoin), [tx])
        )
        txid = str(b2lx(tx.GetTxid()))
        self.double_spendable[txid] = source.key
        self._record_outputs(txid, paid)
        return f"pay BTC to taproot {paid[0].address} in built block {block} ({txid})"

    # ---------------------------------------------------------------------------------- controls

    def control(self) -> str:
        """A payment that must give no callback at all."""
        kind = self.rng.choice(
            ["eth_unwatched", "eth_to_token_address", "eth_zero", "eth_reverting", "fake_token",
             "token_zero", "token_to_eth_address", "token_unwatched", "btc_unwatched"]
        )  # fmt: skip
        url, s, rng = self.url, self.sender(), self.rng
        evm_watched = {(w.currency, w.address.lower()) for w in self.watched if w.chain == EVM}
        eth_only = sorted(
            w.address for w in self.payable("ETH") if ("USDT", w.address.lower()) not in evm_watched
        )
        token_only = sorted(
            w.address for w in self.of("USDT") if ("ETH", w.address.lower()) not in evm_watched
        )
        reverting = next(w.address for w in self.of("ETH") if w.foreign_id == "reverting")
        if kind == "eth_unwatched":
            txid = evm.send_eth(url, s, rng.choice(self.unwatched_evm), rng.randrange(1, 10**17), wait=False)
        elif kind == "eth_to_token_address":
            txid = evm.send_eth(url, s, rng.choice(token_only), rng.randrange(1, 10**17), wait=False)
        elif kind == "eth_zero":
            txid = evm.send_eth(url, s, rng.choice(self.payable("ETH")).address, 0, wait=False)
        elif kind == "eth_reverting":
            txid = evm.send_eth(url, s, reverting, rng.randrange(1, 10**17), wait=False)
        elif kind == "fake_token":
            to = rng.choice(self.of("USDT")).address
            txid = evm.token_transfer(url, self.tokens["FAKE"], s, to, rng.randrange(1, 10**8), wait=False)
        elif kind == "token_zero":
            w = rng.choice(self.of("USDC"))
            txid = evm.token_transfer(url, self.tokens["USDC"], s, w.address, 0, wait=False)
        elif kind == "token_to_eth_address":
            to = rng.choice(eth_only)
            txid = evm.token_transfer(url, self.tokens["USDT"], s, to, rng.randrange(1, 10**8), wait=False)
        elif kind == "token_unwatched":
            to = rng.choice(self.unwatched_evm)
            txid = evm.token_transfer(url, self.tokens["USDC"], s, to, rng.randrange(1, 10**8), wait=False)
        else:
            txid = btc.pay(self.bitcoin, rng.choice(self.unwatched_btc), rng.randrange(5_000, 100_000))
        self.controls.append(txid)
        return f"control {kind} ({txid})"

    # ---------------------------------------------------------------------------------- mining

    def mine_evm(self) -> str:
        n = self.rng.choice([1, 1, 1, 2])
        evm.mine(self.url, n)
        return f"mine {n} EVM block(s), head {evm.head_height(self.url)}"

    def mine_evm_one(self) -> str:
        evm.mine(self.url, 1)
        return f"mine 1 EVM block, head {evm.head_height(self.url)}"

    def mine_btc_one(self) -> str:
        btc.mine(self.bitcoin, 1)
        return f"mine 1 Bitcoin block, height {btc.height(self.bitcoin)}"

    def mine_btc(self) -> str:
        n = self.rng.choice([1, 1, 1, 2])
        btc.mine(self.bitcoin, n)
        return f"mine {n} Bitcoin block(s), height {btc.height(self.bitcoin)}"

    # ---------------------------------------------------------------------------------- reorgs

    def reorg_evm(self, kind: str | None = None) -> str:
        # Pending transactions are mined first: a reorg rolls nonces back, and a pending transaction
        # behind a removed one would strand its sender's later payments. The daemon may see that block
        # (and send not_confirmed) before it is reorganised, or not.
        if int(evm.rpc(self.url, "txpool_status")["pending"], 16):
            evm.mine(self.url, 1)
            time.sleep(self.rng.uniform(0.0, 0.6))
        depth = self.max_depth(EVM)
        if depth < 1:
            return self.mine_evm()
        depth = self.rng.randint(1, depth)
        tip = evm.head_height(self.url)
        mined = [
            (str(tx["hash"]), str(tx["from"]).lower())
            for height in range(tip - depth + 1, tip + 1)
            for tx in evm.rpc(self.url, "eth_getBlockByNumber", hex(height), True)["transactions"]
        ]
        kind = kind or self.rng.choice(["reinclude", "reinclude", "drop", "replace", "rollback"])
        self.reorgs_evm += 1
        if mined:
            self.kinds.add(f"evm_{kind}")
        if kind == "replace" and mined:
            # The first of a sender's transactions in the range: its nonce is the sender's next one.
            firsts = list({sender: txid for txid, sender in reversed(mined)}.values())
            txid = self.rng.choice(firsts)
            new = evm.reorg_replace(self.url, depth, txid, offset=self.rng.randrange(depth))
            return f"EVM reorg depth {depth}: {txid} replaced by {new}; {len(mined) - 1} others dropped"
        if kind == "reinclude" and mined:
            # All or none of a sender's transactions, in order, so the nonces stay contiguous.
            keep = {s for s in {s for _, s in mined} if self.rng.random() < 0.6}
            txids = [t for t, s in mined if s in keep]
            offset = self.rng.randrange(depth)
            evm.reorg_reinclude(self.url, depth, txids, offset=offset)
            return f"EVM reorg depth {depth}: {len(txids)} of {len(mined)} re-included at offset {offset}"
        if kind == "rollback":
            # The node goes lower than the daemon's cursor for a moment, then a new branch grows.
            evm.rollback(self.url, depth)
            time.sleep(self.rng.uniform(0.0, 0.5))
            grown = self.rng.randint(0, depth + 1)
            if grown:
                evm.mine(self.url, grown)
            return f"EVM rollback of {depth} blocks ({len(mined)} transactions dropped), then {grown} mined"
        evm.reorg_drop(self.url, depth)
        return f"EVM reorg depth {depth}: {len(mined)} transactions dropped"

    def reorg_btc(self, kind: str | None = None) -> str:
        max_depth = self.max_depth(BTC)
        tip = btc.height(self.bitcoin)
        victims = []
        for txid, key in self.double_spendable.items():
            info = btc.transaction(self.bitcoin, txid)
            if info is None:
                continue
            depth = 0
            if info.get("blockhash"):
                block = btc.in_main_chain(self.bitcoin, txid)
                if block is None:
                    continue
                depth = tip - int(btc.node_rpc(self.bitcoin, "getblockheader", block)["height"]) + 1
            if depth <= max_depth:
                victims.append((txid, key, depth))
        extra = self.rng.choice([1, 1, 2])
        if victims and (kind == "double_spend" or (kind is None and self.rng.random() < 0.45)):
            txid, key, depth = self.rng.choice(victims)
            self.kinds.add("btc_double_spend")
            del self.double_spendable[txid]
            conflict, _ = btc.double_spend_reorg(self.bitcoin, txid, key=key, extra_blocks=extra)
            self.double_spends += 1
            self.reorgs_btc += depth > 0
            return f"BTC double-spend of {txid} at depth {depth} by {conflict}"
        if max_depth < 1:
            return self.mine_btc()
        depth = self.rng.randint(1, max_depth)
        included = self._reincluded(tip, depth)
        btc.reorg(self.bitcoin, depth, include_txs=included, extra_blocks=extra)
        self.reorgs_btc += 1
        self.kinds.add("btc_move")
        return (
            f"BTC reorg depth {depth} (+{extra}): {len(included)} transactions mined again, others to mempool"
        )

    def _reincluded(self, tip: int, depth: int) -> list[Any]:
        """A random subset of the replaced blocks' transactions, with their in-range parents, in order."""
        txs = [
            tx
            for height in range(tip - depth + 1, tip + 1)
            for tx in btc.raw_block(self.bitcoin, btc.block_hash(self.bitcoin, height)).vtx[1:]
        ]
        ids = [tx.GetTxid() for tx in txs]
        chosen = {i for i in ids if self.rng.random() < 0.5}
        for tx, txid in reversed(list(zip(txs, ids, strict=True))):
            if txid in chosen:
                chosen |= {txin.prevout.hash for txin in tx.vin if txin.prevout.hash in ids}
        return [tx for tx, txid in zip(txs, ids, strict=True) if txid in chosen]


PAYMENTS: list[tuple[str, int]] = [
    ("pay_eth", 8), ("pay_token", 8), ("token_batch", 3),
    ("pay_btc", 6), ("btc_many", 3), ("btc_keyed", 5), ("btc_taproot", 1),
]  # fmt: skip
OTHERS: list[tuple[str, int]] = [
    ("control", 5), ("mine_evm", 10), ("mine_btc", 9), ("reorg_evm", 6), ("reorg_btc", 6), ("pause", 3),
]  # fmt: skip
REORGS = ("reorg_evm", "reorg_btc")
KILL_MODES = ("after_payment", "after_reorg", "random_moment", "while_starting", "down_for_steps")
# With payments for orders: a kill while a create or cancel request is in flight (it is then retried with
# the same Idempotency-Key), twice as likely as each other mode.
PAYMENT_KILL_MODES = ("in_payment_request", "in_payment_request")


# ------------------------------------------------------------------------------------------ the run


class Trial:
    def __init__(self, options: TrialOptions, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.rng = random.Random(options.seed)
        # Faults are drawn from their own generator: how often the plan is refilled depends on timing,
        # and must not shift the script's actions.
        self.fault_rng = random.Random(options.seed * 7919 + 1)
        self.failure_share = self.fault_rng.uniform(0.15, 0.45)
        self.kills = 0
        self.steps = 0
        self.started = time.monotonic()
        self.downs: list[tuple[float, float]] = []  # (SIGKILL, live again), by the wall clock
        self.down_since: float | None = None
        self.payments: pay.PaymentScript | None = None
        self.kill_in_request = False  # the next payment request is interrupted by a SIGKILL
        self._step_log = open(workdir / "steps.log", "a", encoding="utf-8")

    def say(self, text: str, *, always: bool = False) -> None:
        line = f"[{time.monotonic() - self.started:7.2f}] {text}"
        self._step_log.write(line + "\n")
        self._step_log.flush()
        if always or self.options.verbose:
            print(f"[crash-trial] {line}", flush=True)

    async def run(self) -> TrialResult:
        o = self.options
        self.say(f"seed {o.seed}; replay: {replay_command(o)}; files in {self.workdir}", always=True)
        try:
            with AnvilNode() as anvil, BcoinNode() as bitcoin, self._database() as database:
                return await self._run(anvil, bitcoin, database)
        except Exception as exc:
            raise TrialError(
                f"crash trial seed {o.seed} broke off after {self.steps} steps, {self.kills} kills: {exc}\n"
                f"replay: {replay_command(o)}; files (config, store, daemon.log, steps.log): {self.workdir}"
            ) from exc
        finally:
            self._step_log.close()

    @contextlib.contextmanager
    def _database(self) -> Iterator[str | dict[str, str]]:
        """The daemon's config `database`: an SQLite file in the work directory, or the URL of a database
        on a PostgreSQL server of the trial's own (stopped at the end; its log stays in the work dir)."""
        if self.options.store == "sqlite":
            yield str(self.workdir / "watcher.sqlite3")
            return
        with PostgresServer() as server:
            self.say(f"PostgreSQL on port {server.port}, its files in {server.workdir}")
            yield {"url": server.create_database("trial")}

    async def _run(self, anvil: AnvilNode, bitcoin: BcoinNode, database: str | dict[str, str]) -> TrialResult:
        scenario, config = await asyncio.to_thread(self._setup, anvil.url, bitcoin, database)
        status_port = int(config["status"]["listen"].rsplit(":", 1)[1])
        rx = SigningReceiver(KEY, SECRET, slow_answer_s=MERCHANT_TIMEOUT_S + 1.5, huge_bytes=2**20)
        orders = pay.CoinskroReceiver(
            pay.COINSKRO_SECRET, slow_answer_s=MERCHANT_TIMEOUT_S + 1.5, huge_bytes=2**20
        )
        async with rx, orders:
            callback = config["merchant"] if "merchant" in config else config["integrations"][0]["callback"]
            callback["callback_url"] = rx.url
            if self.options.payments:
                config["integrations"][1]["callback"]["callback_url"] = orders.url
                self.payments = pay.PaymentScript(
                    self.options.payments, self.options.seed, _chains(scenario),
                    int(config["api"]["listen"].rsplit(":", 1)[1]), self.say,
                )  # fmt: skip
            config_path = write_config(self.workdir / "watcher.yaml", config)
            daemon = DaemonProcess(config_path, status_port, self.workdir / "daemon.log")
            failing = asyncio.Event()
            failing.set()
            faults = asyncio.create_task(self._faults([rx, orders] if self.payments else [rx], failing))
            daemon.start()
            try:
                await daemon.wait_live()
                async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=pay.API_TIMEOUT_S)
                ) as api:
                    await self._script(scenario, daemon, api)
                    failing.clear()
                    rx.clear_plan()
                    orders.clear_plan()
                    report, payments = await self._finish(scenario, daemon, rx, orders, config, api)
            finally:
                faults.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await faults
                exit_code = _stop(daemon)
        if exit_code != 0:
            report.violations.append(f"the daemon exited with {exit_code} on SIGTERM")
        return TrialResult(
            options=self.options, report=report, workdir=self.workdir, kills=self.kills,
            reorgs_evm=scenario.reorgs_evm, reorgs_btc=scenario.reorgs_btc,
            double_spends=scenario.double_spends, controls=len(scenario.controls), steps=self.steps,
            run_time_s=time.monotonic() - self.started, daemon_exit=exit_code, payments=payments,
        )  # fmt: skip

    # ---------------------------------------------------------------------------------- set-up

    def _setup(
        self, url: str, bitcoin: BcoinNode, database: str | dict[str, str]
    ) -> tuple[Scenario, dict[str, Any]]:
        rng = self.rng
        acct = evm.accounts(url)
        senders = acct[:5]
        tokens = {
            "USDT": evm.deploy_token(url, "Tether USD (trial)", "USDT", 6),
            "USDC": evm.deploy_token(url, "USD Coin (trial)", "USDC", 6),
            "FAKE": evm.deploy_token(url, "Tether USD", "USDT", 6),  # the same symbol, not configured
        }
        for token in tokens.values():
            for sender in senders:
                evm.mint(url, token, sender, 10**18)
        e = [to_checksum(rng.randbytes(20)) for _ in range(6)]
        evm.make_reverting(url, e[5])
        watched = [
            Watched(EVM, "ETH", e[0], "cust-0"), Watched(EVM, "USDT", e[0].lower(), "cust-0"),
            Watched(EVM, "USDC", e[0], "cust-0"),
            Watched(EVM, "ETH", e[1], "cust-1-eth"), Watched(EVM, "USDC", e[1].lower(), "cust-1-usdc"),
            Watched(EVM, "USDT", e[2], "cust-2"),  # USDT only: ETH to it is a control
            Watched(EVM, "ETH", e[3], "\u043a\u043b\u0438\u0435\u043d\u0442-3"),  # ETH only; non-ASCII id
            Watched(EVM, "USDT", e[4], "cust-4"), Watched(EVM, "USDC", e[4], "cust-4"),
            Watched(EVM, "ETH", e[5], "reverting"),  # its code reverts: payments to it are controls
        ]  # fmt: skip
        evm.set_automine(url, False)

        btc.fund(bitcoin)
        kinds: list[btc.AddressKind] = ["p2pkh", "p2sh-p2wpkh", "p2wpkh", "p2wsh", "p2tr", "p2wpkh"]
        for n, kind in enumerate(kinds):
            a = btc.make_address(kind, btc.new_key(rng.randbytes(32)))
            watched.append(Watched(BTC, "BTC", a.address, f"btc-{n}-{kind}", a.script_pubkey))
        keys = [btc.new_key(rng.randbytes(32)) for _ in range(KEYED_UTXOS)]
        scripts = [btc.p2pkh_script(bytes(k.pub)) for k in keys]
        funding = btc.pay_many(bitcoin, {btc.address_of(s): KEYED_UTXO_SATS for s in scripts})
        btc.mine(bitcoin, 3)  # deep enough that no reorg of the trial reaches the funding
        funding_tx = btc.raw_transaction(bitcoin, funding)
        keyed = [
            KeyedUtxo(k, btc.Utxo(funding, btc.find_output(funding_tx, s), KEYED_UTXO_SATS, s))
            for k, s in zip(keys, scripts, strict=True)
        ]
        unwatched_evm = [to_checksum(rng.randbytes(20)) for _ in range(3)]
        unwatched_btc = [btc.make_address("p2wpkh", btc.new_key(rng.randbytes(32))).address for _ in range(3)]

        min_conf = {c: rng.choice([2, 3]) for c in ("ETH", "USDT", "USDC", "BTC")}
        # Small batches make a catch-up after a kill take several steps (and commits).
        batch_blocks = rng.choice([1, 2, 5, 100])
        evm_anchor, btc_anchor = evm.head_height(url), btc.height(bitcoin)
        scenario = Scenario(
            rng=rng, url=url, bitcoin=bitcoin, senders=senders, tokens=tokens, watched=watched,
            unwatched_evm=unwatched_evm, unwatched_btc=unwatched_btc, keyed=keyed, min_conf=min_conf,
            evm_anchor=evm_anchor, btc_anchor=btc_anchor, log=self.say,
        )  # fmt: skip
        self.say(
            f"minimum confirmations {min_conf}, batch_blocks {batch_blocks}; "
            f"the merchant fails about {self.failure_share:.0%} of the callbacks"
        )
        config = {
            "network": "regtest",
            "database": database,
            "status": {"listen": f"127.0.0.1:{free_port()}", "max_head_age_s": 3600},
            "log": {"format": "json", "level": "debug"},
            "merchant": {
                "callback_url": "set when the receiver listens", "key": KEY, "secret": SECRET,
                "timeout_s": MERCHANT_TIMEOUT_S, "retry_schedule_min": RETRY_SCHEDULE_MIN, "concurrency": 4,
            },
            "chains": {
                EVM: {
                    "adapter": "evm", "rpc_url": url, "chain_id": 31337, "poll_interval_s": 0.2,
                    "timeout_s": 5, "start_height": evm_anchor + 1, "unconfirmed_expiry_s": 3600,
                    "batch_blocks": batch_blocks,
                    "currencies": {
                        "ETH": {"min_confirmations": min_conf["ETH"]},
                        "USDT": {"contract": tokens["USDT"], "decimals": 6,
                                 "min_confirmations": min_conf["USDT"]},
                        "USDC": {"contract": tokens["USDC"], "decimals": 6,
                                 "min_confirmations": min_conf["USDC"]},
                    },
                },
                BTC: {
                    "adapter": "bitcoin-core", "rpc_url": bitcoin.rpc_url, "rpc_user": bitcoin.rpc_user,
                    "rpc_password": bitcoin.rpc_password, "poll_interval_s": 0.2, "timeout_s": 5,
                    "start_height": btc_anchor + 1, "unconfirmed_expiry_s": 3600,
                    "batch_blocks": batch_blocks,
                    "currencies": {"BTC": {"min_confirmations": min_conf["BTC"]}},
                },
            },
            "addresses": [
                {"currency": w.currency, "address": w.address, "foreign_id": w.foreign_id} for w in watched
            ],
        }  # fmt: skip
        if self.options.payments:
            # Two integrations: the CoinsPaid one of the deposits (the `merchant:` section's id keeps
            # the top-level addresses) and one for payments for orders with Coinskro webhooks.
            merchant = config.pop("merchant")
            config["integrations"] = [
                {"id": "00000000-0000-0000-0000-000000000000", "name": "merchant", "callback": merchant},
                pay.integration("set when the receiver listens", RETRY_SCHEDULE_MIN, MERCHANT_TIMEOUT_S),
            ]
            config["api"] = {"listen": f"127.0.0.1:{free_port()}"}
        return scenario, config

    async def _faults(self, receivers: Sequence[Receiver], failing: asyncio.Event) -> None:
        """Keep the receivers' plans topped up with a random share of failures while `failing` is set."""
        share = self.failure_share
        while failing.is_set():
            for rx in receivers:
                if len(rx.pending_plan) < 8:
                    rx.plan(
                        self.fault_rng.choice(FAILURES)
                        if self.fault_rng.random() < share
                        else self.fault_rng.choice(SUCCESSES)
                        for _ in range(16)
                    )
            await asyncio.sleep(0.05)

    # ---------------------------------------------------------------------------------- the script

    async def _script(self, s: Scenario, daemon: DaemonProcess, api: aiohttp.ClientSession) -> None:
        o, rng, payments = self.options, self.rng, self.payments
        # Kill points spread over the run: one in each of `kills` equal slices of the deposits.
        modes = KILL_MODES + (PAYMENT_KILL_MODES if payments else ())
        points = [((i + rng.random()) * o.deposits / o.kills, rng.choice(modes)) for i in range(o.kills)]
        down_for = 0  # steps left before a killed daemon is restarted
        kill_after_reorg = False
        while (
            len(s.transfers) < o.deposits or points or kill_after_reorg or down_for
            or (payments is not None and payments.busy)
        ):  # fmt: skip
            if payments is not None and not down_for and payments.wants_step(rng):
                kill = self._request_kill(daemon) if self.kill_in_request else None
                self.kill_in_request = False
                what = await payments.step(api, kill)
                await asyncio.to_thread(payments.observe)
                self.steps += 1
                self.say(f"step {self.steps}: {what}")
                await asyncio.sleep(rng.uniform(0.0, 0.3))
                continue
            if kill_after_reorg:
                name = rng.choice(REORGS)
            elif len(s.transfers) >= o.deposits:
                name = rng.choice(["mine_evm", "mine_btc", "control"])
            else:
                name = _pick(rng)
            if name == "pause":
                await asyncio.sleep(rng.uniform(0.2, 1.0))
                what = "pause"
            else:
                what = await asyncio.to_thread(getattr(s, name))
            if payments is not None:
                await asyncio.to_thread(payments.observe)
            self.steps += 1
            self.say(f"step {self.steps}: {what} [deposits {len(s.transfers)}]")
            if down_for:
                down_for -= 1
                if not down_for:
                    await self._restart(daemon, "after the chains moved on")
            elif kill_after_reorg and name in REORGS:
                kill_after_reorg = False
                await self._kill(daemon, "right after a reorg")
                await self._restart(daemon)
            elif points and len(s.transfers) >= points[0][0]:
                _, mode = points.pop(0)
                if mode == "in_payment_request" and payments is not None and payments.requests_left():
                    self.kill_in_request = True
                elif mode == "after_reorg":
                    kill_after_reorg = True
                elif mode in ("after_payment", "in_payment_request"):
                    await self._kill(daemon, f"right after: {what}")
                    await self._restart(daemon)
                elif mode == "random_moment":
                    await asyncio.sleep(rng.uniform(0.0, 1.2))
                    await self._kill(daemon, "at a random moment")
                    await self._restart(daemon)
                elif mode == "while_starting":
                    await self._kill(daemon, "before a restart")
                    daemon.start()
                    await asyncio.sleep(rng.uniform(0.02, 0.8))
                    await self._kill(daemon, "while starting")
                    await self._restart(daemon)
                else:
                    await self._kill(daemon, "to stay down for a few steps")
                    down_for = rng.randint(1, 3)
            await asyncio.sleep(rng.uniform(0.0, 0.3))
        for step in s.cover():
            what = await asyncio.to_thread(step)
            self.steps += 1
            self.say(
                f"step {self.steps}: {what} (a kind of reorg not done yet) [deposits {len(s.transfers)}]"
            )
            await asyncio.sleep(rng.uniform(0.0, 0.3))

    def _request_kill(self, daemon: DaemonProcess) -> Callable[[], Awaitable[None]]:
        async def kill() -> None:
            await self._kill(daemon, "while a payment request is in flight")
            await self._restart(daemon)

        return kill

    async def _kill(self, daemon: DaemonProcess, why: str) -> None:
        assert daemon.proc is not None
        if daemon.proc.poll() is not None:
            raise AssertionError(
                f"the daemon died by itself (exit {daemon.proc.returncode}):\n{daemon.log()}"
            )
        daemon.kill()
        if self.down_since is None:
            self.down_since = time.time()
        self.kills += 1
        self.say(f"SIGKILL #{self.kills} {why}", always=True)

    async def _restart(self, daemon: DaemonProcess, why: str = "") -> None:
        daemon.start()
        await daemon.wait_live()
        if self.down_since is not None:
            self.downs.append((self.down_since, time.time()))
            self.down_since = None
        self.say(f"daemon restarted {why}".rstrip())

    # ---------------------------------------------------------------------------------- the end

    async def _finish(
        self, s: Scenario, daemon: DaemonProcess, rx: SigningReceiver, orders: pay.CoinskroReceiver,
        config: dict[str, Any], api: aiohttp.ClientSession,
    ) -> tuple[Report, PaymentReport | None]:  # fmt: skip
        """Mine past every minimum, wait (bounded) until the daemon has caught up and the invariants
        hold, then check them for the record. Only what is still missing can resolve while waiting:
        what already arrived stays in the receiver's history. With payments, the wait also lasts until
        every payment's deadlines are behind (a late payment is sent to those that ended unpaid)."""
        deepest = max(s.min_conf.values()) + 1
        await asyncio.to_thread(evm.mine, s.url, deepest)
        await asyncio.to_thread(btc.mine, s.bitcoin, deepest)
        if self.payments is not None:
            await asyncio.to_thread(self.payments.observe)
        self.say(
            f"faults stopped; mined {deepest} blocks on both chains; waiting for the daemon", always=True
        )
        # One more crash while the daemon catches up and delivers the last confirmations.
        await asyncio.sleep(self.rng.uniform(0.05, 1.0))
        await self._kill(daemon, "while delivering the last confirmations")
        await self._restart(daemon)
        final = await asyncio.to_thread(self._final_chain, s)
        deadline = time.monotonic() + self.options.final_wait_s
        checked: tuple[Report, PaymentReport | None] | None = None
        next_note = time.monotonic() + 10.0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while time.monotonic() < deadline:
                if daemon.proc is None or daemon.proc.poll() is not None:
                    break
                await self._late_payments(api, s)
                try:
                    async with session.get(f"http://127.0.0.1:{daemon.status_port}/status") as r:
                        status = await r.json()
                except (aiohttp.ClientError, TimeoutError):
                    status = None
                heights = {EVM: evm.head_height(s.url), BTC: btc.height(s.bitcoin)}
                settled = status is not None and _settled(status, heights)
                open_ = self._payments_open()
                if settled and not open_:
                    final = await asyncio.to_thread(self._final_chain, s)
                    checked = await self._check(s, final, config, rx, orders, api, True)
                    if checked[0].ok:
                        await asyncio.sleep(1.0)  # late repeats of deliveries the store already counts
                        break
                if time.monotonic() >= next_note:
                    next_note = time.monotonic() + 10.0
                    waiting = "" if settled else "the daemon to catch up and deliver; "
                    waiting += f"payments to end: {', '.join(open_)}; " if open_ else ""
                    failing = (
                        checked[0].violations[:3] if checked is not None and settled and not open_ else []
                    )
                    self.say(f"waiting for {waiting or 'the invariants to hold: '}{failing}")
                await asyncio.sleep(0.5)
            else:
                self.say(f"the daemon did not settle within {self.options.final_wait_s:g} s", always=True)
        running = daemon.proc is not None and daemon.proc.poll() is None
        return await self._check(s, final, config, rx, orders, api, running)

    def _payments_open(self) -> list[str]:
        """The payments that may not have ended yet (or whose late payment is still to be sent)."""
        p = self.payments
        if p is None:
            return []
        downs = self._downs()
        due = [x.key for _, _, x in p.due]
        return due + [x.key for x in p.payments if not surely_ended(x, pay.GRACE_S, downs, time.time())]

    async def _late_payments(self, api: aiohttp.ClientSession, s: Scenario) -> None:
        p = self.payments
        if p is None:
            return
        downs = self._downs()
        p.late_payments(lambda x: surely_ended(x, pay.GRACE_S, downs, time.time()))
        while p.due:
            self.say(f"step: {await p.step(api)}")
        await asyncio.to_thread(p.observe)

    def _downs(self) -> list[tuple[float, float]]:
        """The daemon's downtimes, the current one (if any) up to now."""
        now = time.time()
        return self.downs + ([(self.down_since, now)] if self.down_since is not None else [])

    def _final_chain(self, s: Scenario) -> dict[DepositKey, Placement]:
        paid = self.payments.transfers() if self.payments is not None else []
        evm_transfers = [t for t in (*s.transfers, *paid) if t.chain == EVM]
        btc_transfers = [t for t in (*s.transfers, *paid) if t.chain == BTC]
        contracts = {c: s.tokens[c] for c in ("USDT", "USDC")}
        return evm_final_chain(s.url, evm_transfers, contracts) | btc_final_chain(s.bitcoin, btc_transfers)

    async def _check(
        self,
        s: Scenario,
        final: dict[DepositKey, Placement],
        config: dict[str, Any],
        rx: SigningReceiver,
        orders: pay.CoinskroReceiver,
        api: aiohttp.ClientSession,
        running: bool,
    ) -> tuple[Report, PaymentReport | None]:
        currencies = {
            "ETH": Currency(EVM, 18, s.min_conf["ETH"]),
            "USDT": Currency(EVM, 6, s.min_conf["USDT"]),
            "USDC": Currency(EVM, 6, s.min_conf["USDC"]),
            "BTC": Currency(BTC, 8, s.min_conf["BTC"]),
        }
        p = self.payments
        paid = p.transfers() if p is not None else []
        report = await asyncio.to_thread(
            functools.partial(
                check, transfers=s.transfers, final=final, currencies=currencies, requests=list(rx.requests),
                signatures=rx.signatures, key=KEY, secret=SECRET, store=_store_location(config),
                daemon_running=running, payment_transfers=paid,
            )
        )  # fmt: skip
        if p is None:
            return report, None
        try:
            await p.collect(api)
        except pay.DaemonDown as exc:
            report.violations.append(f"payments: the API did not answer at the end: {exc}")
            return report, None
        signatures: dict[bytes, set[str]] = {}
        for r in orders.requests:
            signatures.setdefault(r.raw, set()).add(r.signature_header or "")
        payments, violations = check_payments(
            payments=p.payments, requests=list(orders.requests), signatures=signatures,
            secret=pay.COINSKRO_SECRET, integration_id=pay.SHOP, events_subscribed=pay.EVENTS,
            grace_s=pay.GRACE_S, downs=self._downs(),
        )  # fmt: skip
        report.violations += violations
        return report, payments


def _chains(s: Scenario) -> pay.Chains:
    # Payments come from the first senders' funds; deposits' senders are shared (nonces in order).
    return pay.Chains(
        url=s.url, bitcoin=s.bitcoin, senders=s.senders, tokens=s.tokens, min_conf=s.min_conf,
        take_keyed=lambda: s.keyed.pop() if s.keyed else None,
    )  # fmt: skip


def _store_location(config: dict[str, Any]) -> str:
    database = config["database"]
    return str(database["url"] if isinstance(database, dict) else database)


def _pick(rng: random.Random) -> str:
    names = [name for name, _ in PAYMENTS + OTHERS]
    weights = [weight for _, weight in PAYMENTS + OTHERS]
    return rng.choices(names, weights)[0]


def _settled(status: dict[str, Any], heights: dict[str, int]) -> bool:
    chains = status.get("chains", {})
    caught_up = all(chains.get(name, {}).get("processed_height") == h for name, h in heights.items())
    return caught_up and status.get("outbox", {}).get("pending", 1) == 0


def _stop(daemon: DaemonProcess) -> int | None:
    if daemon.proc is None:
        return None
    try:
        return daemon.stop()
    except AssertionError:
        return -1


async def run_trial(options: TrialOptions) -> TrialResult:
    """Run the trial; the caller decides what a failed result means (pytest asserts, main() exits 1)."""
    own_dir = options.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="crash-trial-")) if own_dir else Path(options.workdir or ".")
    workdir.mkdir(parents=True, exist_ok=True)
    result = await Trial(options, workdir).run()
    if own_dir and result.ok:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deposits", type=int, default=50, help="transfers to watched addresses (50)")
    parser.add_argument("--kills", type=int, default=10, help="at least this many SIGKILLs (10)")
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: a new random seed)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here (default: temp)")
    parser.add_argument("--final-wait", type=float, default=180.0, help="seconds to wait at the end (180)")
    parser.add_argument("--payments", type=int, default=24, help="payments for orders besides (24; 0: none)")
    parser.add_argument("--store", choices=STORES, default="sqlite", help="the daemon's store (sqlite)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every step")
    args = parser.parse_args(argv)
    if args.deposits < 1 or args.kills < 1 or args.payments < 0:
        parser.error("--deposits and --kills must be at least 1, --payments at least 0")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    options = TrialOptions(
        deposits=args.deposits, kills=args.kills, seed=seed, workdir=args.workdir,
        final_wait_s=args.final_wait,
        verbose=args.verbose, payments=args.payments, store=args.store,
    )  # fmt: skip
    result = asyncio.run(run_trial(options))
    print(result.figures(), flush=True)
    if not result.ok:
        print(result.failure_message(), file=sys.stderr, flush=True)
        return 1
    print(f"crash trial seed {seed}: no invariant violated", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
