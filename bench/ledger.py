"""Catch-up through the follower, ledger and store: blocks per second and store calls per block.

A chain of pre-built blocks, each paying `per_block` watched addresses (Bitcoin-like: every payment
spends one input, and its block reports that spend, as a block does for a payment first seen in the
mempool), is served by an in-process adapter, so only the daemon's own work is timed: the follower's
steps, the ledger's decisions and the store's writes to a real SQLite file (WAL, as in production).

"Store calls" are the calls that reach SQLite's connections (execute, executemany, fetches, BEGIN and
COMMIT): in-process they cost a thread hop each; on a store across a network (PostgreSQL) each is a
round trip. An `executemany` of many rows is one call.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from chains.base import (
    BlockRef,
    BlockScan,
    ChainSettings,
    CurrencySpec,
    MempoolScan,
    Spend,
    Transfer,
    TxFate,
    TxState,
    WatchList,
)
from watcher.config import ChainConfig, CurrencyConfig
from watcher.follower import Follower
from watcher.health import ChainHealth
from watcher.store import NewAddress, Store
from watcher.store_pg import PgStore

CHAIN = "btc"
MIN_CONFIRMATIONS = 6
BATCH_BLOCKS = 20


@dataclass(frozen=True, slots=True)
class LedgerRun:
    per_block: int
    blocks: int
    deposits: int
    callbacks: int
    seconds: float
    store_calls: int | None  # counted on SQLite only (PostgreSQL: see bench/backends.py)

    @property
    def blocks_per_s(self) -> float:
        return self.blocks / self.seconds

    @property
    def calls_per_block(self) -> float | None:
        return None if self.store_calls is None else self.store_calls / self.blocks


def _hash(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def build_chain(blocks: int, per_block: int) -> list[BlockScan]:
    """Blocks 1..blocks; block h pays addresses (h * per_block + i) % addresses."""
    scans: list[BlockScan] = []
    parent = _hash("genesis")
    for height in range(1, blocks + 1):
        transfers = []
        spends = []
        for i in range(per_block):
            txid = _hash("tx", height, i)
            outpoint = f"{_hash('funding', height, i)}:0"
            key = _address(height * per_block + i)
            transfers.append(Transfer("BTC", 0, key, 10_000 + i, txid, 0, inputs=(outpoint,)))
            spends.append(Spend(outpoint, txid))
        ref = BlockRef(height, _hash("block", height), parent)
        scans.append(BlockScan(ref, tuple(transfers), tuple(spends)))
        parent = ref.block_hash
    return scans


def _address(n: int) -> str:
    return f"addr{n:08d}"


class PrebuiltChain:
    """An adapter over pre-built blocks: no I/O, so the bench times the daemon alone."""

    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, scans: list[BlockScan]) -> None:
        self.scans = scans
        self.genesis = BlockRef(0, _hash("genesis"), "")
        self.ids: dict[str, int] = {}

    async def open(self) -> str:
        return "bench:1"

    async def check_currencies(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def head(self) -> BlockRef:
        return self.scans[-1].ref

    async def block_ref(self, height: int) -> BlockRef | None:
        if height == 0:
            return self.genesis
        return self.scans[height - 1].ref if height <= len(self.scans) else None

    async def scan(self, from_height: int, to_height: int, watch: WatchList) -> list[BlockScan]:
        keys = watch.keys_for("BTC")
        out = []
        for scan in self.scans[from_height - 1 : to_height]:
            transfers = tuple(replace(t, watch_id=keys[t.address.encode()]) for t in scan.transfers)
            out.append(BlockScan(scan.ref, transfers, scan.spends))
        return out

    async def mempool_scan(self, watch: WatchList) -> MempoolScan:
        return MempoolScan((), ())

    async def tx_fate(self, transfer: Transfer) -> TxFate:
        return TxFate(TxState.MINED, "")


# `_execute`: a whole transaction run on the connection's thread (Store.write), one round trip.
_COUNTED = ("execute", "executemany", "execute_fetchall", "execute_insert", "executescript", "_execute")


class CountingConnection:
    """Forwards to an aiosqlite connection and counts the calls that reach it."""

    def __init__(self, conn: Any, counter: list[int]) -> None:
        # Not `_conn`: Store.write reaches the sqlite3 connection as `writer._conn`, forwarded from here.
        self._inner = conn
        self._counter = counter

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name in _COUNTED:

            def counted(*args: Any, **kwargs: Any) -> Any:
                self._counter[0] += 1
                return attr(*args, **kwargs)

            return counted
        return attr


def chain_config() -> ChainConfig:
    settings = ChainSettings(
        name=CHAIN, network="regtest", rpc_url="http://127.0.0.1:1", currencies=(CurrencySpec("BTC", 8),)
    )
    return ChainConfig(
        name=CHAIN, adapter="bench", settings=settings, poll_interval_s=0.01,
        currencies=(CurrencyConfig("BTC", 8, MIN_CONFIRMATIONS),), start_height=1, batch_blocks=BATCH_BLOCKS,
        reorg_depth_limit=256, unconfirmed_expiry_s=86_400.0,
    )  # fmt: skip


async def catch_up(per_block: int, blocks: int, location: str) -> LedgerRun:
    """Follow `blocks` blocks of `per_block` payments each from a fresh store (an SQLite path or a
    PostgreSQL URL); time only the steps. Store calls are counted on SQLite only."""
    scans = build_chain(blocks, per_block)
    store = await Store.open(location)
    counting = not isinstance(store, PgStore)
    try:
        addresses = {t.address for s in scans for t in s.transfers}
        await store.sync_addresses(
            CHAIN, (NewAddress(CHAIN, "BTC", a.encode(), a, f"customer-{a}") for a in sorted(addresses))
        )
        follower = Follower(
            chain_config(),
            "regtest",
            PrebuiltChain(scans),
            store,
            ChainHealth(CHAIN),
            lambda: None,  # type: ignore[arg-type]
        )
        await follower.reload_watch()
        counter = [0]
        if counting:
            store._writer = CountingConnection(store._writer, counter)  # type: ignore[assignment]
            store._reader = CountingConnection(store._reader, counter)  # type: ignore[assignment]
        started = time.perf_counter()
        while await follower.step():
            pass
        seconds = time.perf_counter() - started
        if counting:
            store._writer = store._writer._inner  # type: ignore[attr-defined]
            store._reader = store._reader._inner  # type: ignore[attr-defined]
        deposits = sum((await store.deposit_counts()).values())
        callbacks = sum((await store.outbox_counts()).values())
        return LedgerRun(per_block, blocks, deposits, callbacks, seconds, counter[0] if counting else None)
    finally:
        await store.close()


def run_ledger_bench(per_blocks: tuple[int, ...] = (1, 50, 500), blocks: int = 200) -> list[LedgerRun]:
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as directory:
        return [asyncio.run(catch_up(n, blocks, f"{directory}/bench-{n}.sqlite3")) for n in per_blocks]


def ledger_rows(runs: list[LedgerRun]) -> list[tuple[str, str, str]]:
    rows = [(f"== Catch-up through follower + ledger + store (min {MIN_CONFIRMATIONS} conf, "
             f"{BATCH_BLOCKS} blocks a commit)", "", "")]  # fmt: skip
    for run in runs:
        what = f"{run.per_block} deposits/block, {run.blocks} blocks"
        rows.append((f"{what}: blocks/s", f"{run.blocks_per_s:,.1f}", ""))
        if run.calls_per_block is not None:
            rows.append((f"{what}: store calls/block", f"{run.calls_per_block:,.1f}", ""))
        rows.append((f"{what}: deposits, callbacks", f"{run.deposits:,}, {run.callbacks:,}", ""))
    return rows
