"""Issue 10's address figures: `addresses import` rate, and start-up time and RSS with many addresses.

1. Import: N valid addresses (per customer: ETH and USDT at one EIP-55 0x address, USDC at a lower-case
   one, BTC at a regtest bech32 address) written to a CSV, then imported as `deposit-watcher addresses
   import` does (`cli_addresses.import_file`: read, check every row in worker processes while the store
   stages the rows checked, one store transaction) into a fresh store, in a fresh child process.
   Addresses per second, with the part spent until the last row was checked, and the peak RSS of the
   child and of its largest worker process (one per core).
2. Start-up: a store filled with N addresses (a child process, plain executemany: the fixture, not what
   is measured), then a fresh child times `Store.open` + `watch_keys` of every chain (what the daemon does
   before its first poll) and reports its own peak RSS (getrusage), and the RSS above the bare
   interpreter's per address.

Run as a section of `python -m bench.run` (`--only addresses`); the sizes are arguments so
tests/test_bench_smoke.py runs both at toy sizes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count as count_from
from itertools import islice
from pathlib import Path

from chains.bitcoin.address import address_for_script, witness_script
from chains.evm.address import to_checksum

TARGET_IMPORT_PER_S = 50_000.0
TARGET_START_S = 60.0  # at 10,000,000 addresses
TARGET_RSS = 1_500_000_000  # bytes, the whole daemon at 10,000,000 addresses

CONFIG = """\
network: regtest
database: watcher.sqlite3
merchant: {callback_url: "http://127.0.0.1:1/callbacks", key: bench-key, secret: bench-secret}
chains:
  ethereum:
    adapter: evm
    rpc_url: http://127.0.0.1:8545
    currencies:
      ETH: {}
      USDT: {contract: "0x5FbDB2315678afecb367f032d93F642f64180aa3", decimals: 6}
      USDC: {contract: "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512", decimals: 6}
  bitcoin:
    adapter: bitcoin-core
    rpc_url: http://127.0.0.1:18443
    currencies:
      BTC: {}
"""
CHAINS = ("ethereum", "bitcoin")


# ------------------------------------------------------------------------------------------ 1. import


@dataclass(frozen=True, slots=True)
class ImportRun:
    addresses: int
    file_bytes: int
    generate_s: float
    seconds: float  # the whole import: open, read and check every row, write
    checked_s: float  # of which until the last row was checked (and all but the last batch staged)
    added: int
    peak_rss: int  # of the importing process (a fresh child)
    worker_rss: int  # the largest peak RSS of its worker processes (forked: shared pages counted)

    @property
    def per_s(self) -> float:
        return self.addresses / self.seconds


def csv_lines(count: int, rng: random.Random) -> Iterator[str]:
    """The header and `count` rows, four per customer as merchants export them (module docstring)."""
    yield "currency,address,foreign_id\n"
    yield from islice(_customer_lines(rng), count)


def _customer_lines(rng: random.Random) -> Iterator[str]:
    for customer in count_from(0):
        checksummed = to_checksum(rng.randbytes(20))
        yield f"ETH,{checksummed},customer-{customer}\n"
        yield f"USDT,{checksummed},customer-{customer}\n"
        yield f"USDC,0x{rng.randbytes(20).hex()},customer-{customer}\n"
        address = address_for_script(witness_script(0, rng.randbytes(20)), "regtest")
        yield f'BTC,{address},"customer {customer}, BTC"\n'


async def timed_import(directory: str, path: str) -> dict[str, float]:
    """The child's measurement: the import as `addresses import` runs it."""
    from watcher.cli_addresses import import_file
    from watcher.config import load_config
    from watcher.progress import Progress
    from watcher.store import Store

    config = load_config(os.path.join(directory, "config.yaml"), {})
    store = await Store.open(config.database)
    try:
        bar = Progress(sys.stderr, enabled=False, label="importing")
        result = await import_file(config, store, config.integrations[0], path, "csv", bar)
    finally:
        await store.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {
        "seconds": result.seconds,
        "checked_s": result.checked_s,
        "added": result.added,
        "peak_rss": peak,
        "worker_rss": worker,
    }


def run_import_bench(count: int, seed: int = 5) -> ImportRun:
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        Path(tmp, "config.yaml").write_text(CONFIG)
        path = os.path.join(tmp, "addresses.csv")
        t0 = time.perf_counter()
        with open(path, "w") as f:
            f.writelines(csv_lines(count, random.Random(seed)))
        generate_s = time.perf_counter() - t0
        answer = json.loads(_child("--import", tmp, path).strip().splitlines()[-1])
        if answer["added"] != count:
            raise RuntimeError(f"imported {answer['added']} addresses of {count}")
        return ImportRun(
            addresses=count,
            file_bytes=os.path.getsize(path),
            generate_s=generate_s,
            seconds=answer["seconds"],
            checked_s=answer["checked_s"],
            added=int(answer["added"]),
            peak_rss=int(answer["peak_rss"]),
            worker_rss=int(answer["worker_rss"]),
        )


# ------------------------------------------------------------------------------------------ 2. start-up


@dataclass(frozen=True, slots=True)
class StartRun:
    addresses: int
    fill_s: float
    db_bytes: int
    open_s: float  # Store.open (migrations checked) in the fresh child
    load_s: float  # Store.open + watch_keys of every chain
    keys: int
    rss_before: int  # the child's RSS before opening the store: interpreter and imports
    peak_rss: int  # the child's peak RSS

    @property
    def bytes_per_address(self) -> float:
        return (self.peak_rss - self.rss_before) / self.addresses


def fill_rows(count: int, rng: random.Random) -> Iterator[tuple[str, str, bytes, str, str]]:
    """(chain, currency, watch_key, address, foreign_id) of `count` rows: per customer ETH, USDT and USDC
    at one lower-case 0x address (valid without a checksum, so quick to make) and BTC at a bech32 one."""
    return islice(_customer_rows(rng), count)


def _customer_rows(rng: random.Random) -> Iterator[tuple[str, str, bytes, str, str]]:
    for customer in count_from(0):
        key, foreign_id = rng.randbytes(20), f"customer-{customer}"
        for currency in ("ETH", "USDT", "USDC"):
            yield "ethereum", currency, key, "0x" + key.hex(), foreign_id
        script = witness_script(0, rng.randbytes(20))
        yield "bitcoin", "BTC", script, address_for_script(script, "regtest"), foreign_id


def fill_store(path: str, count: int, seed: int) -> None:
    """The fixture: the store's schema (Store.open), then rows straight in with executemany."""
    from watcher.store import Store

    async def create() -> None:
        await (await Store.open(path)).close()

    asyncio.run(create())
    conn = sqlite3.connect(path)
    now = time.time()
    rows = ((*row, "import", now) for row in fill_rows(count, random.Random(seed)))
    with conn:
        conn.executemany(
            "INSERT INTO addresses (chain, currency, watch_key, address, foreign_id, source, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    conn.close()


async def load_watch_sets(path: str, split_above: int | None = None) -> dict[str, float]:
    """The child's measurement: what the daemon does from opening the store to its first poll.
    `split_above`: the load's (watcher.watchload.SPLIT_ABOVE if None; past any id span: one process)."""
    from watcher.store import Store
    from watcher.watchload import SPLIT_ABOVE

    rss_before = _rss()
    t0, cpu0 = time.perf_counter(), _cpu()
    store = await Store.open(path)
    open_s = time.perf_counter() - t0
    # As the daemon loads them, in one pass.
    sets = list((await store.watch_sets(CHAINS, split_above=split_above or SPLIT_ABOVE)).values())
    load_s = time.perf_counter() - t0
    cpu_s = _cpu() - cpu0
    keys = sum(len(index) for by_currency in sets for index in by_currency.values())
    await store.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    helper = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {
        "open_s": open_s,
        "load_s": load_s,
        "cpu_s": cpu_s,
        "keys": keys,
        "rss_before": rss_before,
        "peak_rss": peak,
        "helper_peak_rss": helper,
    }


def _cpu() -> float:
    """User and system CPU seconds of this process and of its children waited for (the load's helper)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child(*argv: str) -> str:
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "bench.addresses", *argv]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False, cwd=repo)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} child failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def run_start_bench(count: int, seed: int = 6) -> StartRun:
    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
        path = os.path.join(tmp, "watcher.sqlite3")
        t0 = time.perf_counter()
        _child("--fill", path, str(count), str(seed))
        fill_s = time.perf_counter() - t0
        answer = json.loads(_child("--load", path).strip().splitlines()[-1])
        if answer["keys"] != count:
            raise RuntimeError(f"loaded {answer['keys']} watch keys, filled {count}")
        return StartRun(
            addresses=count,
            fill_s=fill_s,
            db_bytes=os.path.getsize(path),
            open_s=answer["open_s"],
            load_s=answer["load_s"],
            keys=answer["keys"],
            rss_before=int(answer["rss_before"]),
            peak_rss=int(answer["peak_rss"]),
        )


# ------------------------------------------------------------------------------------------ report

Row = tuple[str, str, str]


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def address_rows(imported: ImportRun | None, started: StartRun | None) -> list[Row]:
    rows: list[Row] = []
    if imported is not None:
        n = imported.addresses
        rows += [
            (f"== addresses import: {n:,} addresses (CSV, {imported.file_bytes / 1e6:,.1f} MB)", "", ""),
            (
                "import rate (read, check, one transaction)",
                f"{imported.per_s:,.0f}/s",
                f"target >= {TARGET_IMPORT_PER_S:,.0f}/s {_verdict(imported.per_s >= TARGET_IMPORT_PER_S)}",
            ),
            ("  of which reading, checking and staging rows", f"{imported.checked_s:,.2f} s", ""),
            (
                "  of which the last staging and the transaction",
                f"{imported.seconds - imported.checked_s:,.2f} s",
                "",
            ),
            (
                "whole import",
                f"{imported.seconds:,.2f} s",
                f"(writing the CSV took {imported.generate_s:,.1f} s)",
            ),
            ("peak RSS of the importing process", f"{imported.peak_rss / 1e6:,.0f} MB", ""),
            ("peak RSS of its largest worker process", f"{imported.worker_rss / 1e6:,.0f} MB", ""),
        ]
    if started is not None:
        n = started.addresses
        at_scale = " (target at 10,000,000)" if n < 10_000_000 else ""
        rows += [
            (f"== start-up with {n:,} addresses (ETH, USDT, USDC, BTC)", "", ""),
            (
                "Store.open + watch_keys of every chain",
                f"{started.load_s:,.2f} s",
                f"target <= {TARGET_START_S:g} s{at_scale} {_verdict(started.load_s <= TARGET_START_S)}",
            ),
            (
                "peak RSS of that process",
                f"{started.peak_rss / 1e6:,.0f} MB",
                f"target <= {TARGET_RSS / 1e9:g} GB{at_scale} {_verdict(started.peak_rss <= TARGET_RSS)}",
            ),
            ("  above the bare interpreter, per address", f"{started.bytes_per_address:,.0f} B", ""),
            ("store file", f"{started.db_bytes / 1e6:,.0f} MB", f"(filled in {started.fill_s:,.1f} s)"),
        ]
    return rows


def main(argv: list[str]) -> int:
    """The children: `--import DIR CSV`, `--fill DB N SEED` and `--load DB [SPLIT_ABOVE]`."""
    if argv[0] == "--import":
        print(json.dumps(asyncio.run(timed_import(argv[1], argv[2]))))
    elif argv[0] == "--fill":
        fill_store(argv[1], int(argv[2]), int(argv[3]))
    elif argv[0] == "--load":
        split_above = int(argv[2]) if len(argv) > 2 else None
        print(json.dumps(asyncio.run(load_watch_sets(argv[1], split_above))))
    else:
        raise SystemExit(f"unknown child command {argv[0]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
