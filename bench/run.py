"""deposit-watcher benchmarks: EVM log scan, memory per address, callbacks, YAML addresses files.

Run by hand (`make bench`, i.e. `.venv/bin/python bench/run.py`); prints one table with the ratios
against the targets stated in bench/README.md. Everything runs on 127.0.0.1 and every
process started here (anvil, the callback receiver, the loading child) is stopped, even on error.

1. EVM: a real anvil with ~1,000 blocks of ~46 ERC-20 Transfer logs each. A bare aiohttp+orjson
   eth_getLogs of the range is compared with the adapter's log path (fetch + decode + match against
   100,000 watched addresses) and with the adapter's full `scan` (which also fetches the headers).
2. Memory: 1,000,000 EVM addresses in a fresh SQLite store; a fresh child process times `Store.open` +
   `watch_keys` and measures what the loaded keys cost (tracemalloc and RSS).
3. Callbacks: a Dispatcher on a real store with N pending outbox entries, delivering to the devnet
   receiver running in its own process; deliveries per second until all are DELIVERED in the store.
4. YAML addresses files: a config whose addresses file holds 100,000 and 1,000,000 entries, loaded by
   `check-config` and by the daemon's start (load + sync into the store + watch keys) in fresh
   processes; time and each process's own peak RSS, against 1 GB at 1,000,000.
5. Ledger catch-up (bench/ledger.py): blocks per second and store calls per block through the
   follower, ledger and store, with 1, 50 and 500 deposits per block.
6. Addresses (bench/addresses.py): `addresses import` rate from a CSV, and the start-up (Store.open to
   every chain's watch set) time and peak RSS with `--addresses` addresses in the store.
7. Merchant API take (bench/api.py): the real daemon process on a store of `--api-addresses` addresses,
   following anvil and bcoin while they make blocks with payments; `POST /v1/addresses` p50/p99/max at
   `--api-rate` requests/s (open loop), its start-up time and peak RSS.
8. Store backends (bench/backends.py, issue 12): the ledger catch-up at 50 and 500 deposits per block
   and committed callback deliveries, on SQLite and on a PostgreSQL server started with fsync on, with
   the ratio PostgreSQL / SQLite (target: within 2x).

The building blocks (`run_evm_bench`, `run_memory_bench`, `run_callback_bench`, `run_yaml_bench`,
`ledger.run_ledger_bench`, `backends.run_backends_bench`) take their sizes as arguments so
tests/test_bench_smoke.py can run them small.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import os
import pstats
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import structlog

from bench.addresses import ImportRun, StartRun, address_rows, run_import_bench, run_start_bench
from bench.api import TakeRun, api_rows, run_api_bench
from bench.backends import BackendsResult, backends_rows, run_backends_bench
from bench.ledger import LedgerRun, ledger_rows, run_ledger_bench
from chains.base import BlockRef, ChainSettings, CurrencySpec, WatchList
from chains.bitcoin.address import address_for_script, p2pkh_script, witness_script
from chains.evm import decode
from chains.evm.adapter import EvmAdapter
from chains.evm.address import to_checksum
from chains.watchset import COMPACT_ABOVE, CompactKeys, build_index
from devnet import evm_tools
from devnet.anvil import DEFAULT_CHAIN_ID, AnvilNode
from watcher.callbacks import build_body
from watcher.config import MerchantConfig
from watcher.dispatcher import Dispatcher
from watcher.logs import configure as configure_logs
from watcher.model import Deposit, DepositStatus
from watcher.store import NewAddress, Store

T = TypeVar("T")

# Targets (the brief of this benchmark).
TARGET_SCAN_RATIO = (
    1.5  # adapter fetch + decode + match / bare eth_getLogs fetch (also shown for b' and scan)
)
TARGET_BYTES_PER_ADDRESS = 150.0
TARGET_LOAD_S = 10.0  # 1,000,000 addresses
# Issue 10, at 10,000,000 watched addresses: start-up (store open to first poll) and the daemon's RSS.
TARGET_LOAD_S_10M = 60.0
TARGET_RSS_10M = 1_500_000_000
TARGET_DELIVERIES_PER_S = 2000.0

CHAIN = "eth"
TOKEN_CODE = "BNC"
TOKEN_DECIMALS = 6
RECEIVER_KEY = "bench-key"
RECEIVER_SECRET = "bench-secret"  # a throw-away secret for a loopback receiver
# Blocks mined per anvil_mine call while building. anvil's cost of mining grows with its pending pool
# (measured: 200 blocks take 1.9 s in chunks of 10, 9.5 s in chunks of 50), so the chunks stay small.
MINE_CHUNK = 10
BLOCK_HASH = "0x" + "ab" * 32  # of the callbacks' deposits (never checked)
WARM_BATCH = 200  # recipients per batch while funding the pool: ~5M gas, a few per 30M-gas block


# ----------------------------------------------------------------------------------------- helpers


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


async def timed(make: Callable[[], Awaitable[T]]) -> tuple[float, T]:
    """Seconds taken by one await of `make()`, and its result."""
    t0 = time.perf_counter()
    result = await make()
    return time.perf_counter() - t0, result


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name (field 2) may contain spaces; the fields after its closing ")" are fixed.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def index_form(index: object) -> str:
    """Which of chains.watchset's forms `index` is: "compact" or "dict"."""
    return "compact" if isinstance(index, CompactKeys) else "dict"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


# -------------------------------------------------------------------------------------- 1. EVM scan


@dataclass(frozen=True, slots=True)
class TokenChain:
    """The blocks built on anvil: `first..last` hold `logs` Transfer logs to `recipients`."""

    url: str
    token: str  # lower-case 0x address
    first: int
    last: int
    logs: int
    pool: list[bytes]  # the distinct recipients
    recipients: list[bytes]  # the recipient of each log, in chain order
    build_s: float


@dataclass(frozen=True, slots=True)
class EvmResult:
    blocks: int
    logs: int
    watched: int
    watch_form: str  # "dict" or "compact" (chains.watchset)
    hits: int
    hit_txs: int
    build_s: float
    runs: int
    bare_fetch_s: float  # medians from here on
    adapter_fetch_s: float
    decode_match_s: float
    fetch_match_s: float
    tx_infos_s: float
    adapter_logs_s: float
    headers_s: float
    scan_s: float
    response_bytes: int
    profile: str = ""

    @property
    def fetch_match_ratio(self) -> float:
        return self.fetch_match_s / self.bare_fetch_s

    @property
    def logs_ratio(self) -> float:
        return self.adapter_logs_s / self.bare_fetch_s

    @property
    def scan_ratio(self) -> float:
        return self.scan_s / self.bare_fetch_s


def build_token_chain(
    url: str, blocks: int, logs_per_block: int, pool_size: int, rng: random.Random
) -> TokenChain:
    """Deploy a token and mine `blocks` blocks of one batchTransfer each, paying `logs_per_block`
    recipients in turn from a pool of `pool_size` random addresses.

    A pool rather than fresh recipients: anvil's cost per mined block grows with the token's storage
    (measured: 1,000 blocks of 46 fresh recipients take ~60 s, from a pool of 4,600 ~19 s); the logs
    are the same size either way. Automine is off and blocks are mined in chunks. One transaction per
    block is enforced by capping the block gas limit at 1.5x the gas of one batch (anvil is started
    with base fee 0: otherwise the base fee climbs on those well-filled blocks until the pending
    transactions no longer pay it and anvil silently drops them).
    """
    t0 = time.perf_counter()
    pool = [rng.randbytes(20) for _ in range(pool_size)]
    token = evm_tools.deploy_token(url, "Bench Token", TOKEN_CODE, TOKEN_DECIMALS)
    sender = evm_tools.accounts(url)[0]
    evm_tools.mint(url, token, sender, 10**30, wait=True)
    evm_tools.set_automine(url, False)
    # Pay every pool address once before the measured range: a payment to an empty balance costs 4x
    # the gas of one to a funded balance, and the one-batch-per-block cap below needs even batches.
    for start in range(0, pool_size, WARM_BATCH):
        to = ["0x" + key.hex() for key in pool[start : start + WARM_BATCH]]
        evm_tools.token_batch_transfer(url, token, sender, to, [1] * len(to), wait=False)
    evm_tools.mine(url, 1 + pool_size // WARM_BATCH)
    first = evm_tools.head_height(url) + 1
    recipients: list[bytes] = []  # one per log, in chain order

    def send_batch() -> str:
        keys = [pool[(len(recipients) + i) % pool_size] for i in range(logs_per_block)]
        recipients.extend(keys)
        to = ["0x" + key.hex() for key in keys]
        return evm_tools.token_batch_transfer(url, token, sender, to, [1] * len(to), wait=False)

    txid = send_batch()
    evm_tools.mine(url, 1)
    gas = int(evm_tools.rpc(url, "eth_getTransactionReceipt", txid)["gasUsed"], 16)
    evm_tools.rpc(url, "evm_setBlockGasLimit", hex(gas * 3 // 2))
    done = 1
    while done < blocks:
        chunk = min(MINE_CHUNK, blocks - done)
        for _ in range(chunk):
            send_batch()
        evm_tools.mine(url, chunk)
        done += chunk
    last = evm_tools.head_height(url)
    pool_status = evm_tools.rpc(url, "txpool_status")
    if last != first + blocks - 1 or int(pool_status["pending"], 16) or int(pool_status["queued"], 16):
        raise RuntimeError(f"build went wrong: blocks {first}..{last}, pool {pool_status}")
    # One batch per block, all mined and none reverted: the logs must be exactly these.
    counts = Counter(
        int(entry["blockNumber"], 16)
        for entry in evm_tools.rpc(url, "eth_getLogs", logs_query_for(first, last, token.lower()))
    )
    if len(counts) != blocks or set(counts.values()) != {logs_per_block}:
        raise RuntimeError(f"build went wrong: logs per block {sorted(Counter(counts.values()).items())}")
    return TokenChain(
        url=url,
        token=token.lower(),
        first=first,
        last=last,
        logs=len(recipients),
        pool=pool,
        recipients=recipients,
        build_s=time.perf_counter() - t0,
    )


def make_watch_list(
    chain: TokenChain, watched: int, hit_every: int, rng: random.Random, compact_above: int = COMPACT_ABOVE
) -> WatchList:
    """`watched` keys: every `hit_every`-th address of the recipient pool (so about one log in
    `hit_every` is a hit), the rest random addresses never paid; in the form the daemon would use
    (`compact_above`: see chains.watchset)."""
    hits = chain.pool[::hit_every][:watched]
    keys = hits + [rng.randbytes(20) for _ in range(watched - len(hits))]
    pairs = ((key, watch_id) for watch_id, key in enumerate(keys, start=1))
    return WatchList({TOKEN_CODE: build_index(pairs, compact_above)})


def logs_query_for(first: int, last: int, token: str) -> dict[str, Any]:
    """The same filter the adapter sends: the range, the token, topic0 = Transfer only."""
    return {
        "fromBlock": hex(first),
        "toBlock": hex(last),
        "address": [token],
        "topics": [decode.TRANSFER_TOPIC],
    }


def logs_query(chain: TokenChain) -> dict[str, Any]:
    return logs_query_for(chain.first, chain.last, chain.token)


async def bare_get_logs(session: aiohttp.ClientSession, url: str, query: dict[str, Any]) -> list[Any]:
    """The baseline: one POST, read the body, orjson.loads, take `result`. No checks at all."""
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs", "params": [query]})
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
        answer = orjson.loads(await resp.read())
    result: list[Any] = answer["result"]
    return result


def decode_and_match(
    raw_logs: list[Any], refs: Sequence[BlockRef], contract: str, watch: WatchList
) -> list[decode.TransferLog]:
    """The CPU part of the adapter's log path, as `EvmAdapter._token_transfers` does it (no I/O)."""
    keys = watch.keys_for(TOKEN_CODE)
    hashes = {ref.height: ref.block_hash for ref in refs}
    entries = decode.decode_transfer_logs(raw_logs, Counter(), hashes, {contract: keys})
    return [entry for entry in entries if entry.to_key in keys and entry.amount > 0]


def evm_settings(chain: TokenChain) -> ChainSettings:
    # Only the token: with a native currency configured the scan would fetch full blocks instead.
    return ChainSettings(
        name=CHAIN,
        network="regtest",
        rpc_url=chain.url,
        currencies=(CurrencySpec(TOKEN_CODE, TOKEN_DECIMALS, chain.token),),
        timeout_s=120.0,
        chain_id=DEFAULT_CHAIN_ID,
    )


async def measure_evm(chain: TokenChain, watch: WatchList, runs: int, profile: bool) -> EvmResult:
    """Median timings of each part; each timed call starts from a collected heap with no earlier
    answer alive (a live 46,000-log answer makes every later garbage collection slower)."""
    keys = watch.keys_for(TOKEN_CODE)
    expected_hits = sum(1 for key in chain.recipients if key in keys)
    adapter = EvmAdapter(evm_settings(chain))
    await adapter.open()
    query = logs_query(chain)
    first, last, token = chain.first, chain.last, chain.token
    try:
        # Private internals of the adapter, called read-only to split the scan into its parts.
        blocks = await adapter._fetch_blocks(first, last, False)
        refs = [decode.block_ref(block, h) for h, block in enumerate(blocks, start=first)]
        del blocks
        raw = await adapter._get_logs(first, last, [token])
        response_bytes = len(orjson.dumps(raw))
        hit_entries = decode_and_match(raw, refs, token, watch)
        del raw

        async with aiohttp.ClientSession() as session:

            async def bare() -> int:
                return len(await bare_get_logs(session, chain.url, query))

            async def fetch() -> int:
                return len(await adapter._get_logs(first, last, [token]))

            async def tx_infos() -> int:
                return len(await adapter._tx_infos(hit_entries, None, first))

            async def logs_path() -> int:
                return len(await adapter._token_transfers(refs, None, watch))

            async def headers() -> int:
                return len(await adapter._fetch_blocks(first, last, False))

            async def scan() -> int:
                return sum(len(s.transfers) for s in await adapter.scan(first, last, watch))

            async def decode_only() -> int:
                # The answer is fetched untimed; only the CPU part right after it is timed.
                raw = await adapter._get_logs(first, last, [token])
                t0 = time.perf_counter()
                found = len(decode_and_match(raw, refs, token, watch))
                decode_s.append(time.perf_counter() - t0)
                return found

            async def fetch_match() -> int:
                raw = await adapter._get_logs(first, last, [token])
                return len(decode_and_match(raw, refs, token, watch))

            decode_s: list[float] = []
            parts: dict[str, tuple[Callable[[], Awaitable[int]], int]] = {
                "bare": (bare, chain.logs),
                "fetch": (fetch, chain.logs),
                "decode": (decode_only, expected_hits),
                "fetch_match": (fetch_match, expected_hits),
                "tx_infos": (tx_infos, len({e.txid for e in hit_entries})),
                "logs": (logs_path, expected_hits),
                "headers": (headers, last - first + 1),
                "scan": (scan, expected_hits),
            }
            samples: dict[str, list[float]] = {name: [] for name in parts}
            for run in range(runs + 1):  # run 0 warms connections and caches; not counted
                for name, (call, expected) in parts.items():
                    gc.collect()
                    seconds, got = await timed(call)
                    if got != expected:
                        raise RuntimeError(f"{name}: got {got}, expected {expected}")
                    if run:
                        samples[name].append(seconds)
            samples["decode"] = decode_s[1:]
        profile_text = await profile_adapter(adapter, chain, refs, watch) if profile else ""
    finally:
        await adapter.close()
    return EvmResult(
        blocks=last - first + 1,
        logs=chain.logs,
        watched=len(keys),
        watch_form=index_form(keys),
        hits=expected_hits,
        hit_txs=len({e.txid for e in hit_entries}),
        build_s=chain.build_s,
        runs=runs,
        bare_fetch_s=median(samples["bare"]),
        adapter_fetch_s=median(samples["fetch"]),
        decode_match_s=median(samples["decode"]),
        fetch_match_s=median(samples["fetch_match"]),
        tx_infos_s=median(samples["tx_infos"]),
        adapter_logs_s=median(samples["logs"]),
        headers_s=median(samples["headers"]),
        scan_s=median(samples["scan"]),
        response_bytes=response_bytes,
        profile=profile_text,
    )


async def profile_adapter(
    adapter: EvmAdapter, chain: TokenChain, refs: Sequence[BlockRef], watch: WatchList
) -> str:
    """cProfile of the adapter's log path and scan (3 runs each), top functions by own time."""
    profiler = cProfile.Profile()
    for _ in range(3):
        profiler.enable()
        await adapter._token_transfers(refs, None, watch)
        await adapter.scan(chain.first, chain.last, watch)
        profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(18)
    return out.getvalue()


def run_evm_bench(
    *,
    blocks: int = 1000,
    logs_per_block: int = 46,
    watched: int = 100_000,
    hit_every: int = 100,
    pool_size: int = 4600,
    runs: int = 7,
    profile: bool = False,
    seed: int = 1,
    compact_above: int = COMPACT_ABOVE,
) -> EvmResult:
    """Start anvil, build the chain, measure, stop anvil."""
    rng = random.Random(seed)
    # Base fee 0: see build_token_chain.
    with AnvilNode(extra_args=("--block-base-fee-per-gas", "0")) as node:
        chain = build_token_chain(node.url, blocks, logs_per_block, pool_size, rng)
        watch = make_watch_list(chain, watched, hit_every, rng, compact_above)
        return asyncio.run(measure_evm(chain, watch, runs, profile))


# ---------------------------------------------------------------------------------- 2. memory/load


# The two forms of chains.watchset, by the `compact_above` that forces each.
INDEX_FORMS = {"dict": 2**62, "compact": 0}


@dataclass(frozen=True, slots=True)
class KeysLoad:
    """One form's load of every watched key (`Store.open` + `watch_keys`) in fresh child processes."""

    form: str  # "dict" or "compact"
    load_s: float  # Store.open + watch_keys, fresh process, no tracemalloc
    rss_delta: int  # RSS after - before the load, same process
    rss_open: int  # of which RSS after - before Store.open alone (threads, SQLite)
    rss_before: int  # the child's RSS before the load: interpreter and imports
    peak_rss: int  # the child's peak RSS (ru_maxrss): the load's transient high-water, whole process
    traced_bytes: int  # tracemalloc: live Python allocations after the load (another fresh process)
    traced_peak: int
    traced_load_s: float  # the load under tracemalloc (slower; for reference only)


@dataclass(frozen=True, slots=True)
class MemoryResult:
    addresses: int
    insert_s: float
    db_bytes: int
    loads: tuple[KeysLoad, ...]  # one per form in INDEX_FORMS

    def load(self, form: str) -> KeysLoad:
        return next(load for load in self.loads if load.form == form)

    @property
    def daemon_form(self) -> str:
        """The form the daemon keeps at this many addresses (one currency, chains.watchset)."""
        return "compact" if self.addresses > COMPACT_ABOVE else "dict"

    # The daemon's form, as the single-form figures were reported before both forms were measured.
    @property
    def load_s(self) -> float:
        return self.load(self.daemon_form).load_s

    @property
    def traced_bytes(self) -> int:
        return self.load(self.daemon_form).traced_bytes

    @property
    def bytes_per_address(self) -> float:
        return self.traced_bytes / self.addresses


def address_entries(count: int, rng: random.Random) -> Iterator[NewAddress]:
    for number in range(count):
        key = rng.randbytes(20)
        yield NewAddress(CHAIN, "ETH", key, "0x" + key.hex(), f"customer-{number}")


async def insert_addresses(path: str, count: int, seed: int) -> float:
    """Seconds for Store.sync_addresses of `count` random addresses (generating them included, ~1 us
    each) into a fresh store."""
    store = await Store.open(path)
    try:
        seconds, _ = await timed(
            lambda: store.sync_addresses(CHAIN, address_entries(count, random.Random(seed)))
        )
    finally:
        await store.close()
    return seconds


async def load_keys(path: str, form: str, trace: bool) -> dict[str, float]:
    """The child's measurement: open the store and load the chain's keys in `form`, as the daemon does at
    start."""
    gc.collect()
    rss_before = rss_bytes()
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    store = await Store.open(path)
    opened_s = time.perf_counter() - t0
    rss_open = rss_bytes()
    keys = await store.watch_keys(CHAIN, compact_above=INDEX_FORMS[form])
    load_s = time.perf_counter() - t0
    gc.collect()
    traced, peak = tracemalloc.get_traced_memory() if trace else (0, 0)
    rss_after = rss_bytes()
    count = sum(len(by_key) for by_key in keys.values())
    forms = {index_form(index) for index in keys.values()}
    await store.close()
    return {
        "count": count,
        "forms": sorted(forms),
        "open_s": opened_s,
        "load_s": load_s,
        "rss_before": rss_before,
        "rss_open": rss_open - rss_before,
        "rss_delta": rss_after - rss_before,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "traced": traced,
        "peak": peak,
    }


def load_in_child(path: str, form: str, trace: bool) -> dict[str, Any]:
    """Run `load_keys` in a fresh interpreter (nothing cached, nothing allocated yet) and return its
    JSON answer."""
    cmd = [sys.executable, "-m", "bench.run", "--load-child", path, "--form", form]
    if trace:
        cmd.append("--tracemalloc")
    repo = Path(__file__).resolve().parents[1]  # where `bench` is a package
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False, cwd=repo)
    if done.returncode != 0:
        raise RuntimeError(f"load child failed ({done.returncode}): {done.stderr[-2000:]}")
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def measure_form(path: str, form: str, addresses: int) -> KeysLoad:
    plain = load_in_child(path, form, trace=False)
    traced = load_in_child(path, form, trace=True)
    for answer in (plain, traced):
        if answer["count"] != addresses or answer["forms"] != [form]:
            raise RuntimeError(
                f"loaded {answer['count']} keys as {answer['forms']}, wanted {addresses} {form}"
            )
    return KeysLoad(
        form=form,
        load_s=plain["load_s"],
        rss_delta=int(plain["rss_delta"]),
        rss_open=int(plain["rss_open"]),
        rss_before=int(plain["rss_before"]),
        peak_rss=int(plain["peak_rss"]),
        traced_bytes=int(traced["traced"]),
        traced_peak=int(traced["peak"]),
        traced_load_s=traced["load_s"],
    )


def run_memory_bench(*, addresses: int = 1_000_000, seed: int = 2) -> MemoryResult:
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        path = os.path.join(tmp, "watcher.sqlite3")
        insert_s = asyncio.run(insert_addresses(path, addresses, seed))
        return MemoryResult(
            addresses=addresses,
            insert_s=insert_s,
            db_bytes=os.path.getsize(path),
            loads=tuple(measure_form(path, form, addresses) for form in INDEX_FORMS),
        )


# ------------------------------------------------------------------------------------- 3. callbacks


@dataclass(frozen=True, slots=True)
class CallbackRun:
    """One delivery of the whole outbox at one concurrency."""

    concurrency: int
    count: int
    seconds: float
    attempts: int  # results recorded; more than `count` means callbacks were sent more than once
    failed_attempts: int
    daemon_cpu_s: float  # this process, all threads (dispatcher, aiosqlite)
    receiver_cpu_s: float

    @property
    def per_s(self) -> float:
        return self.count / self.seconds


@dataclass(frozen=True, slots=True)
class CallbackResult:
    count: int
    prepare_s: float
    body_bytes: int
    runs: list[CallbackRun] = field(default_factory=list)  # every repeat, in the order run

    def by_concurrency(self) -> dict[int, list[CallbackRun]]:
        grouped: dict[int, list[CallbackRun]] = {}
        for run in self.runs:
            grouped.setdefault(run.concurrency, []).append(run)
        return grouped


async def prepare_outbox(path: str, count: int, seed: int, batch: int = 500) -> tuple[float, int]:
    """A store with `count` deposits, each with one pending callback, queued like the ledger does
    (insert the deposit, build its body, enqueue), `batch` deposits per transaction. Returns the
    seconds taken and the size of one body."""
    rng = random.Random(seed)
    store = await Store.open(path)
    try:
        t0 = time.perf_counter()
        keys = [rng.randbytes(20) for _ in range(100)]
        await store.sync_addresses(
            CHAIN, [NewAddress(CHAIN, "USDT", k, "0x" + k.hex(), f"customer-{i}") for i, k in enumerate(keys)]
        )
        address_ids = list((await store.watch_keys(CHAIN))["USDT"].items())
        now = time.time() - 1.0
        body = b""
        for start in range(0, count, batch):
            async with store.transaction() as tx:
                for number in range(start, min(start + batch, count)):
                    key, address_id = address_ids[number % len(address_ids)]
                    txid = "0x" + rng.randbytes(32).hex()
                    amount = rng.randrange(1, 10**12)
                    deposit_id = await tx.insert_deposit(
                        chain=CHAIN, currency="USDT", address_id=address_id, txid=txid, tx_index=0,
                        amount=amount, sender=None, nonce=None, inputs=(), now=now,
                    )  # fmt: skip
                    deposit = Deposit(
                        id=deposit_id, chain=CHAIN, currency="USDT", address_id=address_id,
                        address="0x" + key.hex(), foreign_id=f"customer-{address_id}", txid=txid,
                        tx_index=0, amount=amount, block_height=100 + number, block_hash=BLOCK_HASH,
                        confirmations=1, status=DepositStatus.NOT_CONFIRMED, error="", first_seen_at=now,
                        updated_at=now,
                    )  # fmt: skip
                    body = build_body(deposit, 6, "regtest")
                    await tx.enqueue_callback(deposit_id, DepositStatus.NOT_CONFIRMED, body, now)
        return time.perf_counter() - t0, len(body)
    finally:
        await store.close()


@contextlib.contextmanager
def receiver_process() -> Iterator[tuple[str, int]]:
    """The devnet receiver (`python -m devnet.receiver`) in its own process: (url, pid).

    It has no flag to silence its one line per callback, so its stdout goes to /dev/null.
    """
    port = free_port()
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            [sys.executable, "-m", "devnet.receiver", "--port", str(port), "--key", RECEIVER_KEY],
            env={**os.environ, "RECEIVER_SECRET": RECEIVER_SECRET},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 20.0
            while True:
                if proc.poll() is not None:
                    errors.seek(0)
                    tail = errors.read()[-2000:].decode(errors="replace")
                    raise RuntimeError(f"receiver exited with {proc.returncode}: {tail}")
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("receiver did not listen within 20 s")
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port}/callbacks", proc.pid
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@contextlib.contextmanager
def daemon_logging() -> Iterator[None]:
    """The daemon's default logging (JSON lines, level info: one line per delivered callback), written
    to /dev/null: rendering the lines is part of the daemon's cost, printing them to a terminal is not."""
    previous = structlog.get_config()
    # The daemon's loggers write to whatever sys.stderr is at each line: the sink, while this lasts.
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        configure_logs("json", "info")
        try:
            yield
        finally:
            structlog.configure(**previous)


async def deliver_all(path: str, url: str, receiver_pid: int, count: int, concurrency: int) -> CallbackRun:
    """Run a Dispatcher until `count` outbox entries are DELIVERED in the store."""
    store = await Store.open(path)
    merchant = MerchantConfig(
        callback_url=url, key=RECEIVER_KEY, secret=RECEIVER_SECRET, timeout_s=10.0, concurrency=concurrency
    )
    dispatcher = Dispatcher(store, merchant, asyncio.Event())
    deadline = time.monotonic() + max(60.0, count / 100)
    cpu0, rx_cpu0 = time.process_time(), process_cpu_s(receiver_pid)
    t0 = time.perf_counter()
    task = asyncio.create_task(dispatcher.run())
    try:
        while True:
            counts = await store.outbox_counts()
            if counts.get("delivered", 0) >= count:
                break
            if task.done():
                task.result()  # raises what stopped the dispatcher
                raise RuntimeError("the dispatcher stopped")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"not all delivered in time: {counts}, failed attempts {dispatcher.failed_attempts}"
                )
            await asyncio.sleep(0.05)
        seconds = time.perf_counter() - t0
        cpu_s, rx_cpu_s = time.process_time() - cpu0, process_cpu_s(receiver_pid) - rx_cpu0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()
    attempts = dispatcher.delivered + dispatcher.failed_attempts
    return CallbackRun(concurrency, count, seconds, attempts, dispatcher.failed_attempts, cpu_s, rx_cpu_s)


def run_callback_bench(
    *, count: int = 20_000, concurrencies: Sequence[int] = (20, 50), repeats: int = 3, seed: int = 3
) -> CallbackResult:
    """Queue `count` callbacks once, then deliver a fresh copy of that outbox `repeats` times per
    concurrency (interleaved, so drift in the machine's load hits every concurrency alike)."""
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as tmp:
        template = os.path.join(tmp, "template.sqlite3")
        prepare_s, body_bytes = asyncio.run(prepare_outbox(template, count, seed))
        result = CallbackResult(count=count, prepare_s=prepare_s, body_bytes=body_bytes)
        path = os.path.join(tmp, "run.sqlite3")
        with receiver_process() as (url, pid), daemon_logging():
            for _ in range(repeats):
                for concurrency in concurrencies:
                    for suffix in ("", "-wal", "-shm"):
                        with contextlib.suppress(FileNotFoundError):
                            os.remove(path + suffix)
                    shutil.copyfile(template, path)  # closed cleanly: the WAL is checkpointed into it
                    result.runs.append(asyncio.run(deliver_all(path, url, pid, count, concurrency)))
        return result


# ---------------------------------------------------------------------------- 4. YAML addresses files

YAML_CONFIG = """\
network: mainnet
database: watcher.sqlite3
merchant:
  callback_url: https://shop.example/callbacks/deposits
  key: bench-key
  secret: bench-secret
chains:
  bitcoin:
    adapter: bitcoin-core
    rpc_url: http://127.0.0.1:8332
    currencies:
      BTC: {}
  ethereum:
    adapter: evm
    rpc_url: http://127.0.0.1:8545
    chain_id: 1
    currencies:
      ETH: {}
      USDT: {contract: "0xdAC17F958D2ee523a2206206994597C13D831ec7", decimals: 6}
      USDC: {contract: "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48", decimals: 6}
addresses_files: [addresses.yaml]
"""

# The daemon's start before it talks to a node: load the config, sync the addresses into the store, load
# every chain's watch keys (what the followers hold). Run with `python -c` so only the daemon's modules
# are imported; prints its timings as JSON.
YAML_SYNC_CHILD = """\
import asyncio, json, sys, time
from watcher.config import load_config
from watcher.address_sync import sync_addresses
from watcher.store import Store

async def main(path, db):
    t0 = time.perf_counter()
    config = load_config(path, {})
    t1 = time.perf_counter()
    store = await Store.open(db)
    try:
        await sync_addresses(store, config)
        keys = [await store.watch_keys(chain.name) for chain in config.chains]
    finally:
        await store.close()
    count = sum(len(k) for by_currency in keys for k in by_currency.values())
    sync_s = time.perf_counter() - t1
    return {"count": len(config.addresses), "keys": count, "load_s": t1 - t0, "sync_s": sync_s}

print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
"""
TARGET_YAML_PEAK_RSS = 1_000_000_000  # bytes, at 1,000,000 addresses


@dataclass(frozen=True, slots=True)
class YamlLoad:
    addresses: int
    file_bytes: int
    generate_s: float
    check_s: float  # `python -m watcher check-config`, wall, whole process
    check_cpu_s: float
    check_peak_rss: int
    load_s: float  # load_config alone, in the second child
    sync_s: float  # Store.open + sync_addresses + watch_keys of every chain
    run_peak_rss: int  # the second child's peak RSS: load + sync + keys


def yaml_address_lines(count: int, rng: random.Random) -> Iterator[str]:
    """`count` distinct entries as operators export them; per 8: 2 BTC (bech32, base58), 3 checksummed
    EVM entries, 1 lower case, 2 in block style; text and numeric foreign ids."""
    for n in range(count):
        kind = n % 8
        key = rng.randbytes(20)
        if kind < 2:
            script = witness_script(0, key) if kind == 0 else p2pkh_script(key)
            address = address_for_script(script, "mainnet")
            yield f"- {{currency: BTC, address: {address}, foreign_id: c-{n}}}\n"
        elif kind < 5:
            code = ("ETH", "USDT", "USDC")[kind - 2]
            yield f'- {{currency: {code}, address: "{to_checksum(key)}", foreign_id: customer-{n}}}\n'
        elif kind == 5:
            yield f"- {{currency: USDT, address: '0x{key.hex()}', foreign_id: 'shop/{n}'}}\n"
        else:
            code = ("ETH", "USDC")[kind - 6]
            yield f'- currency: {code}\n  address: "{to_checksum(key)}"\n  foreign_id: {n}\n'


def measured_child(cmd: list[str]) -> tuple[str, float, float, int]:
    """Run `cmd`: (stdout, wall seconds, CPU seconds, peak RSS bytes) of that process alone (wait4)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}): {err.read()[-2000:].decode()}")
        return out.read().decode(), seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def run_yaml_bench(count: int, seed: int = 3) -> YamlLoad:
    with tempfile.TemporaryDirectory(prefix="bench-yaml-") as tmp:
        t0 = time.perf_counter()
        addresses = Path(tmp) / "addresses.yaml"
        with open(addresses, "w") as f:
            f.writelines(yaml_address_lines(count, random.Random(seed)))
        config = Path(tmp) / "config.yaml"
        config.write_text(YAML_CONFIG)
        generate_s = time.perf_counter() - t0
        check = [sys.executable, "-m", "watcher", "check-config", "--config", str(config)]
        summary, check_s, check_cpu_s, check_rss = measured_child(check)
        if f"addresses: {count} watched" not in summary:
            raise RuntimeError(f"check-config did not load {count} addresses:\n{summary}")
        sync = [sys.executable, "-c", YAML_SYNC_CHILD, str(config), os.path.join(tmp, "watcher.sqlite3")]
        answer, _, _, run_rss = measured_child(sync)
        synced = json.loads(answer.strip().splitlines()[-1])
        if synced["count"] != count or synced["keys"] != count:
            raise RuntimeError(f"loaded {synced['count']} addresses, {synced['keys']} keys; wrote {count}")
        return YamlLoad(
            addresses=count,
            file_bytes=addresses.stat().st_size,
            generate_s=generate_s,
            check_s=check_s,
            check_cpu_s=check_cpu_s,
            check_peak_rss=check_rss,
            load_s=synced["load_s"],
            sync_s=synced["sync_s"],
            run_peak_rss=run_rss,
        )


# ------------------------------------------------------------------------------------------ report


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def ratio(value: float, target: float) -> str:
    """`value` as a multiple of the bare fetch, against a target multiple."""
    return f"{value:.2f}x  (target <= {target:g}x) {verdict(value <= target)}"


Row = tuple[str, str, str]  # what, figure, against the target; a "== " title starts a section


def evm_rows(evm: EvmResult) -> list[Row]:
    bare = evm.bare_fetch_s

    def times(seconds: float) -> str:
        return f"{seconds / bare:.2f}x"

    target = TARGET_SCAN_RATIO
    title = (
        f"== 1. EVM log scan: {evm.blocks:,} blocks, {evm.logs:,} Transfer logs "
        f"({evm.response_bytes / 1e6:.1f} MB JSON), {evm.watched:,} watched addresses ({evm.watch_form}), "
        f"{evm.hits:,} hits in {evm.hit_txs:,} txs; median of {evm.runs}"
    )
    return [
        (title, "", ""),
        ("chain build (deploy, fund pool, batches, mining)", f"{evm.build_s:,.1f} s", ""),
        ("(a) bare aiohttp + orjson eth_getLogs", ms(bare), "1.00x  (baseline)"),
        ("adapter: eth_getLogs through JsonRpcClient", ms(evm.adapter_fetch_s), times(evm.adapter_fetch_s)),
        (
            "adapter: decode + block-hash check + match (CPU)",
            ms(evm.decode_match_s),
            times(evm.decode_match_s),
        ),
        ("(b) adapter: fetch + decode + match", ms(evm.fetch_match_s), ratio(evm.fetch_match_ratio, target)),
        (f"adapter: sender/nonce of the {evm.hit_txs} hit txs", ms(evm.tx_infos_s), times(evm.tx_infos_s)),
        (
            "(b') adapter log path as scan runs it: b + tx infos",
            ms(evm.adapter_logs_s),
            ratio(evm.logs_ratio, target),
        ),
        ("adapter: headers (eth_getBlockByNumber batches)", ms(evm.headers_s), times(evm.headers_s)),
        (
            "EvmAdapter.scan: headers + b' + last-block re-check",
            ms(evm.scan_s),
            ratio(evm.scan_ratio, target),
        ),
    ]


def memory_rows(memory: MemoryResult) -> list[Row]:
    n = memory.addresses
    title = (
        f"== 2. Watched addresses: {n:,} EVM addresses in SQLite ({memory.db_bytes / 1e6:,.0f} MB file); "
        f"the daemon keeps them as {memory.daemon_form} (chains.watchset: compact above {COMPACT_ABOVE:,})"
    )
    rows: list[Row] = [
        (title, "", ""),
        ("Store.sync_addresses, one call", f"{memory.insert_s:,.1f} s", f"{n / memory.insert_s:,.0f}/s"),
    ]
    for load in memory.loads:
        rows += form_rows(load, n, daemon=load.form == memory.daemon_form)
    return rows


def form_rows(load: KeysLoad, n: int, daemon: bool) -> list[Row]:
    """One form's figures; the targets of issue 10 (10,000,000 addresses) apply from that size on."""
    at_scale = n >= 10_000_000
    target_load_s = TARGET_LOAD_S_10M if at_scale else TARGET_LOAD_S
    load_ok = verdict(load.load_s < target_load_s)
    bytes_ok = verdict(load.traced_bytes / n <= TARGET_BYTES_PER_ADDRESS)
    peak_target = f"target <= {TARGET_RSS_10M / 1e9:g} GB, whole daemon, at 10,000,000"
    peak_note = f"{peak_target} {verdict(load.peak_rss <= TARGET_RSS_10M)}" if at_scale else peak_target
    name = f"{load.form}{' (the daemon)' if daemon else ''}"
    return [
        (
            f"{name}: Store.open + watch_keys, fresh process",
            f"{load.load_s:,.2f} s",
            f"target < {target_load_s:g} s {load_ok}",
        ),
        (
            "  memory kept per address (tracemalloc)",
            f"{load.traced_bytes / n:,.1f} B",
            f"target <= {TARGET_BYTES_PER_ADDRESS:g} B {bytes_ok}",
        ),
        (
            "  kept in total (tracemalloc)",
            f"{load.traced_bytes / 1e6:,.0f} MB",
            f"peak {load.traced_peak / 1e6:,.0f} MB (the traced load took {load.traced_load_s:.1f} s)",
        ),
        (
            "  RSS growth per address (untraced run)",
            f"{load.rss_delta / n:,.1f} B",
            f"{load.rss_delta / 1e6:,.0f} MB in all: {load.rss_open / 1e6:,.1f} MB Store.open, "
            f"{(load.rss_delta - load.rss_open) / n:,.1f} B/address watch_keys (incl. allocator high-water)",
        ),
        (
            "  peak RSS of the loading process",
            f"{load.peak_rss / 1e6:,.0f} MB",
            f"{load.rss_before / 1e6:,.0f} MB before the load; {peak_note}",
        ),
    ]


def callback_rows(callbacks: CallbackResult) -> list[Row]:
    n = callbacks.count
    title = (
        f"== 3. Callbacks: {n:,} pending outbox entries ({callbacks.body_bytes:,} B bodies), "
        "receiver in its own process"
    )
    rows: list[Row] = [
        (title, "", ""),
        (
            "queueing: deposit + body + enqueue, 500 per tx",
            f"{callbacks.prepare_s:,.1f} s",
            f"{n / callbacks.prepare_s:,.0f}/s",
        ),
    ]
    for concurrency, runs in callbacks.by_concurrency().items():
        rates = [run.per_s for run in runs]
        rate = median(rates)
        ok = verdict(rate >= TARGET_DELIVERIES_PER_S and not any(run.failed_attempts for run in runs))
        spread = f"{min(rates):,.0f}..{max(rates):,.0f}/s over {len(runs)}"
        cpu = (
            f"{median([r.daemon_cpu_s / r.seconds for r in runs]):.0%} / "
            f"{median([r.receiver_cpu_s / r.seconds for r in runs]):.0%}"
        )
        cpu_us = median([r.daemon_cpu_s / r.count * 1e6 for r in runs])
        extra = median([(r.attempts - r.count) / r.count for r in runs])
        sent = f"{median([r.attempts for r in runs]):,.0f} (+{extra:.1%})"
        rows += [
            (
                f"concurrency {concurrency}: until all DELIVERED in the store",
                f"{rate:,.0f}/s",
                f"target >= {TARGET_DELIVERIES_PER_S:,.0f}/s {ok}  (median; {spread})",
            ),
            ("  CPU busy: daemon process / receiver process", cpu, ""),
            (
                "  daemon CPU per delivery (all its threads)",
                f"{cpu_us:,.0f} us",
                f"= {1e6 / cpu_us:,.0f}/s per fully busy core",
            ),
            (
                f"  attempts recorded for {callbacks.count:,} callbacks",
                sent,
                f"failed: {sum(r.failed_attempts for r in runs)}",
            ),
        ]
    return rows


def yaml_rows(loads: Sequence[YamlLoad]) -> list[Row]:
    title = "== 4. YAML addresses file (BTC, ETH, USDT, USDC; mainnet), each size in fresh processes"
    rows: list[Row] = [(title, "", "")]
    for y in loads:
        n = y.addresses
        rows += [
            (f"{n:,} addresses ({y.file_bytes / 1e6:,.1f} MB file): check-config, wall",
             f"{y.check_s:,.1f} s", f"{y.check_cpu_s:,.1f} s CPU; {n / y.check_s:,.0f} addresses/s"),
            ("  check-config peak RSS", f"{y.check_peak_rss / 1e6:,.0f} MB",
             f"{y.check_peak_rss / n:,.0f} B/address"),
            ("  run's start: load_config + sync into the store + watch keys",
             f"{y.load_s + y.sync_s:,.1f} s", f"load {y.load_s:,.1f} s, store {y.sync_s:,.1f} s"),
            ("  run's start peak RSS", f"{y.run_peak_rss / 1e6:,.0f} MB",
             f"(generating the file took {y.generate_s:,.1f} s)"),
        ]  # fmt: skip
    at_million = [y for y in loads if y.addresses >= 1_000_000]
    if at_million:
        peak = max(max(y.check_peak_rss, y.run_peak_rss) for y in at_million)
        ok = verdict(peak < TARGET_YAML_PEAK_RSS)
        target = f"target < {TARGET_YAML_PEAK_RSS / 1e9:g} GB {ok}"
        what = "peak RSS at 1,000,000 addresses (check-config or run's start)"
        rows.append((what, f"{peak / 1e6:,.0f} MB", target))
    return rows


def render(
    evm: EvmResult | None,
    memory: MemoryResult | None,
    callbacks: CallbackResult | None,
    yaml_loads: Sequence[YamlLoad] = (),
    ledger: Sequence[LedgerRun] = (),
    imported: ImportRun | None = None,
    started: StartRun | None = None,
    taken: TakeRun | None = None,
    backends: BackendsResult | None = None,
) -> str:
    """The results as one plain-text table."""
    rows: list[Row] = []
    if evm is not None:
        rows += evm_rows(evm)
    if memory is not None:
        rows += memory_rows(memory)
    if callbacks is not None:
        rows += callback_rows(callbacks)
    if yaml_loads:
        rows += yaml_rows(yaml_loads)
    if ledger:
        rows += ledger_rows(ledger)
    rows += address_rows(imported, started)
    rows += api_rows(taken)
    rows += backends_rows(backends)
    body = [r for r in rows if not r[0].startswith("==")]
    width = max((len(r[0]) for r in body), default=0)
    figure = max((len(r[1]) for r in body), default=0)
    lines: list[str] = []
    for what, value, target in rows:
        if what.startswith("=="):
            lines += ["", what]
        else:
            lines.append(f"  {what:<{width}}  {value:>{figure}}  {target}".rstrip())
    return "\n".join(lines).lstrip("\n")


# -------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--only",
        choices=("evm", "memory", "callbacks", "yaml", "ledger", "addresses", "api", "backends"),
        action="append",
    )
    parser.add_argument("--blocks", type=int, default=1000)
    parser.add_argument("--logs-per-block", type=int, default=46)
    parser.add_argument("--watched", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7, help="timed runs per EVM figure (median)")
    parser.add_argument("--addresses", type=int, default=1_000_000)
    parser.add_argument(
        "--import-addresses",
        type=int,
        help="import bench rows (default: --addresses, at most 1,000,000)",
    )
    parser.add_argument(
        "--api-addresses", type=int, default=1_000_000, help="addresses in the store of the take bench"
    )
    parser.add_argument("--api-rate", type=float, default=200.0, help="take requests per second")
    parser.add_argument("--api-seconds", type=float, default=10.0, help="seconds of take load")
    parser.add_argument(
        "--api-block-every-s",
        type=float,
        default=1.0,
        help="seconds between the take bench's blocks with payments (0: none, for comparison)",
    )
    parser.add_argument(
        "--api-profile", action="store_true", help="run the take bench's daemon under cProfile and print it"
    )
    parser.add_argument("--callbacks", type=int, default=20_000)
    parser.add_argument("--yaml-addresses", type=int, action="append", help="default: 100000 and 1000000")
    parser.add_argument("--concurrency", type=int, action="append", help="default: 20 and 50")
    parser.add_argument("--repeats", type=int, default=3, help="deliveries per concurrency (median)")
    parser.add_argument("--ledger-blocks", type=int, default=100, help="blocks per ledger catch-up run")
    parser.add_argument(
        "--backend-callbacks", type=int, default=10_000, help="callbacks per delivery run of the backends"
    )
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the adapter's scan")
    parser.add_argument("--load-child", metavar="DB", help=argparse.SUPPRESS)
    parser.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--form", choices=tuple(INDEX_FORMS), default="dict", help=argparse.SUPPRESS)
    parser.add_argument(
        "--watch-index",
        choices=("auto", *INDEX_FORMS),
        default="auto",
        help="form of the EVM bench's watched keys (auto: as the daemon, chains.watchset.COMPACT_ABOVE)",
    )
    args = parser.parse_args(argv)
    if args.load_child:
        print(json.dumps(asyncio.run(load_keys(args.load_child, args.form, args.tracemalloc))))
        return 0

    only = set(args.only or ("evm", "memory", "callbacks", "yaml", "ledger", "addresses", "api", "backends"))
    started = time.perf_counter()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"deposit-watcher bench: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, load {load}",
        flush=True,
    )
    evm = memory = callbacks = None
    if "evm" in only:
        print("running: EVM log scan ...", flush=True)
        evm = run_evm_bench(
            blocks=args.blocks,
            logs_per_block=args.logs_per_block,
            watched=args.watched,
            runs=args.runs,
            profile=args.profile,
            compact_above=INDEX_FORMS.get(args.watch_index, COMPACT_ABOVE),
        )
    if "memory" in only:
        print("running: watched addresses ...", flush=True)
        memory = run_memory_bench(addresses=args.addresses)
    if "callbacks" in only:
        print("running: callbacks ...", flush=True)
        callbacks = run_callback_bench(
            count=args.callbacks, concurrencies=args.concurrency or (20, 50), repeats=args.repeats
        )
    yaml_loads = []
    if "yaml" in only:
        for count in args.yaml_addresses or (100_000, 1_000_000):
            print(f"running: YAML addresses file, {count:,} addresses ...", flush=True)
            yaml_loads.append(run_yaml_bench(count))
    ledger: list[LedgerRun] = []
    if "ledger" in only:
        print("running: ledger catch-up ...", flush=True)
        with daemon_logging():
            ledger = run_ledger_bench((1, 50, 500), args.ledger_blocks)
    imported = start_run = None
    if "addresses" in only:
        count = args.import_addresses or min(args.addresses, 1_000_000)
        print(f"running: addresses import, {count:,} addresses ...", flush=True)
        imported = run_import_bench(count)
        print(f"running: start-up with {args.addresses:,} addresses ...", flush=True)
        start_run = run_start_bench(args.addresses)
    taken = None
    if "api" in only:
        print(f"running: merchant API take with {args.api_addresses:,} addresses ...", flush=True)
        taken = run_api_bench(
            args.api_addresses,
            args.api_rate,
            args.api_seconds,
            profile=args.api_profile,
            block_every_s=args.api_block_every_s,
        )
    backends = None
    if "backends" in only:
        print("running: store backends (SQLite, PostgreSQL) ...", flush=True)
        backends = run_backends_bench(
            blocks=args.ledger_blocks, callbacks=args.backend_callbacks, repeats=args.repeats
        )
    print()
    print(render(evm, memory, callbacks, yaml_loads, ledger, imported, start_run, taken, backends))
    if evm is not None and evm.profile:
        print("\ncProfile of 3x (adapter log path + scan), by own time:\n" + evm.profile)
    if taken is not None and taken.profile:
        print("\ncProfile of the daemon (start-up, warm-up and load), take bench:\n" + taken.profile)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\ntotal run time {time.perf_counter() - started:,.0f} s; load average now {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
