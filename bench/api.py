"""Issue 10's take latency: `POST /v1/addresses` at a fixed rate while the daemon follows both chains.

The whole daemon runs as it runs in production, as its own process (`python -m watcher run`), against a
real anvil and a real bcoin regtest node, on a store pre-filled with N watched addresses (per customer:
ETH, USDT and USDC at one 0x address and BTC at a bech32 one, under the config's `merchant:` integration,
which has an API key and public keys for both chains). Measured:

1. Start-up on that store: from the process start to the merchant API's first answer, and to `/readyz`
   answering 200 (every chain's watch set loaded and its node polled: issue 10's "store open to first
   poll", target <= 60 s at 10,000,000).
2. The take under load. A background thread makes blocks with payments all along (about every second an
   ETH transfer, mined by anvil's automine, and a BTC payment plus a bcoin block, each paying an address
   the API has just issued when there is one), so the followers scan, match and record deposits while the
   API answers. An open-loop generator sends `POST /v1/addresses` at `rate` per second: each request is
   sent at its scheduled time whatever happened to the earlier ones, and its latency runs from that
   scheduled time to the end of its answer, so a daemon that falls behind shows as queueing, not as a
   slower generator. About 90% are new foreign_ids (a derivation, an insert, the watch sets told) and 10%
   repeat an earlier (currency, foreign_id) (a look-up in its batch's transaction: 200 with the same
   address). Currencies BTC, ETH and USDT in equal parts. Every non-2xx answer and every repeat answered
   with another address is an error. A first second at the same rate warms the connections up and is not
   counted.
3. The daemon's peak RSS (VmHWM of /proc/PID/status) at the end, and its CPU during the load.

The API's per-key rate limit is raised above the generated rate in the bench config (a merchant sending
200 takes/s would do the same; the default is 50/s). Daemon logging: JSON, level info, to a file.

Run as a section of `python -m bench.run` (`--only api`, sizes `--api-addresses`, `--api-rate`,
`--api-seconds`); tests/test_bench_smoke.py runs it with toy numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import pstats
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from devnet import btc_tools as btc
from devnet import evm_tools as evm
from devnet.anvil import AnvilNode
from devnet.bcoin import BcoinNode
from watcher.apikeys import new_api_key

TARGET_P99_S = 0.010
TARGET_RATE = 200.0
TARGET_START_S = 60.0  # store open to first poll, at 10,000,000 addresses
TARGET_RSS = 1_500_000_000  # the whole daemon, at 10,000,000 addresses

# The public account keys of the BIP test mnemonic (`abandon` x11 `about`), as tests/test_derivation.py
# computes them: m/84'/1'/0' (BIP-84, test networks) for Bitcoin, m/44'/60'/0' for the EVM chain.
WPKH = (
    "wpkh([73c5da0a/84h/1h/0h]tpubDC8msFGeGuwnKG9Upg7DM2b4DaRqg3CUZa5g8v2SRQ6K4NSkxUgd7HsL2XVWbVm39yBA4LAx"
    "ysQAm397zwQSQoQgewGiYZqrA9DsP4zbQ1M/0/*)"
)
EVM_XPUB = (
    "xpub6DCoCpSuQZB2jawqnGMEPS63ePKWkwWPH4TU45Q7LPXWuNd8TMtVxRrgjtEshuqpK3mdhaWHPFsBngh5GFZaM6si3yZdUsT8"
    "ddYM3PwnATt"
)
CURRENCIES = ("BTC", "ETH", "USDT")
REPEAT_SHARE = 0.10
WARMUP_S = 1.0
BLOCK_EVERY_S = 1.0
POLL_INTERVAL_S = 1.0
MIN_CONFIRMATIONS = 2
RECEIVER_KEY = "bench-key"
RECEIVER_SECRET = "bench-secret"  # a throw-away secret for a loopback receiver


@dataclass(frozen=True, slots=True)
class Answer:
    """One measured request."""

    at_s: float  # scheduled time, from the first request of its run
    latency_s: float  # scheduled time -> answer read
    status: int
    repeat: bool
    error: str  # "" when the answer is what it must be


@dataclass(frozen=True, slots=True)
class TakeRun:
    addresses: int  # in the store before the daemon starts
    fill_s: float
    db_bytes: int
    start_api_s: float  # process start -> the API's first answer
    start_ready_s: float  # process start -> /readyz 200
    rate: float  # asked
    seconds: float  # asked
    block_every_s: float
    answers: tuple[Answer, ...]  # the measured ones (not the warm-up)
    load_s: float  # first scheduled request -> last answer
    warmup_errors: tuple[str, ...]
    eth_blocks: int  # made during warm-up and load
    btc_blocks: int
    payments: int  # of those, to addresses the API issued
    deposits: int  # the daemon's deposits of them, seen over the API afterwards
    daemon_hwm: int  # VmHWM, bytes
    daemon_rss: int  # VmRSS at the end
    daemon_cpu_s: float  # during the measured load
    profile: str = ""  # the daemon's cProfile, when asked for

    @property
    def latencies(self) -> list[float]:
        return sorted(a.latency_s for a in self.answers)

    def percentile(self, q: float) -> float:
        ordered = self.latencies
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def achieved_rate(self) -> float:
        return len(self.answers) / self.load_s

    def slow_bursts(self, gap_s: float = 0.1) -> list[tuple[float, float, int]]:
        """The slowest 1% of requests grouped by when they were sent (a gap over `gap_s` starts a new
        group): (first sent, last sent, how many). Few tight groups mean stalls; many, steady queueing."""
        slow = sorted(self.answers, key=lambda a: a.latency_s)[-max(1, len(self.answers) // 100) :]
        groups: list[tuple[float, float, int]] = []
        for at in sorted(a.at_s for a in slow):
            if groups and at - groups[-1][1] <= gap_s:
                first, _, count = groups[-1]
                groups[-1] = (first, at, count + 1)
            else:
                groups.append((at, at, 1))
        return groups

    @property
    def errors(self) -> list[str]:
        return [f"{a.status}: {a.error}" for a in self.answers if a.error]


# ------------------------------------------------------------------------------------------ fixture


def fill(path: str, count: int, seed: int) -> float:
    """bench.addresses' store fixture in a child process (this process stays small: it is the load
    generator); the seconds it took."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "bench.addresses", "--fill", path, str(count), str(seed)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=7200, check=False, cwd=_repo())
    if done.returncode != 0:
        raise RuntimeError(f"fill failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.perf_counter() - t0


def _repo() -> Path:
    return Path(__file__).resolve().parents[1]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def daemon_config(
    db: str, status_port: int, api_port: int, key_hash: str, callback_url: str,
    anvil: AnvilNode, bcoin: BcoinNode, tokens: dict[str, str], rate: float,
) -> dict[str, Any]:  # fmt: skip
    """The daemon's config: chain names and currencies as bench.addresses fills the store."""
    return {
        "network": "regtest",
        "database": db,
        "status": {"listen": f"127.0.0.1:{status_port}"},
        "api": {"listen": f"127.0.0.1:{api_port}", "rate_per_s": rate * 5, "burst": int(rate * 5)},
        "log": {"format": "json", "level": "info"},
        "merchant": {
            "callback_url": callback_url, "key": RECEIVER_KEY, "secret": RECEIVER_SECRET,
            "api_keys": [key_hash], "public_keys": {"bitcoin": WPKH, "ethereum": EVM_XPUB},
        },
        "chains": {
            "ethereum": {
                "adapter": "evm", "rpc_url": anvil.url, "chain_id": 31337, "poll_interval_s": POLL_INTERVAL_S,
                "start_height": evm.head_height(anvil.url) + 1,
                "currencies": {
                    "ETH": {"min_confirmations": MIN_CONFIRMATIONS},
                    **{code: {"contract": contract, "decimals": 6, "min_confirmations": MIN_CONFIRMATIONS}
                       for code, contract in tokens.items()},
                },
            },
            "bitcoin": {
                "adapter": "bitcoin-core", "rpc_url": bcoin.rpc_url, "rpc_user": bcoin.rpc_user,
                "rpc_password": bcoin.rpc_password, "poll_interval_s": POLL_INTERVAL_S,
                "start_height": btc.height(bcoin) + 1,
                "currencies": {"BTC": {"min_confirmations": MIN_CONFIRMATIONS}},
            },
        },
    }  # fmt: skip


# ------------------------------------------------------------------------------------------ blocks


@dataclass
class BlockMaker:
    """The background thread: every `every_s` an ETH transfer (anvil automines it: one block) and a BTC
    payment plus one bcoin block, each to the newest address the API issued on that chain if any."""

    anvil: AnvilNode
    bcoin: BcoinNode
    every_s: float = BLOCK_EVERY_S  # 0: no blocks at all (for comparison)
    issued: dict[str, deque[str]] = field(default_factory=lambda: {"evm": deque(), "btc": deque()})
    eth_blocks: int = 0
    btc_blocks: int = 0
    payments: int = 0
    failure: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        if self.every_s <= 0:
            return
        self._thread = threading.Thread(target=self._run, name="block-maker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.failure is not None:
            raise RuntimeError(f"the block maker failed: {self.failure!r}") from self.failure

    def counts(self) -> tuple[int, int, int]:
        return self.eth_blocks, self.btc_blocks, self.payments

    def _next(self, chain: str, fallback: str) -> tuple[str, bool]:
        try:
            return self.issued[chain].popleft(), True
        except IndexError:
            return fallback, False

    def _run(self) -> None:
        sender = evm.accounts(self.anvil.url)[0]
        rng = random.Random(11)
        try:
            while not self._stop.wait(self.every_s):
                to, issued = self._next("evm", "0x" + rng.randbytes(20).hex())
                evm.send_eth(self.anvil.url, sender, to, 10**15 + rng.randrange(10**6), wait=True)
                self.eth_blocks += 1
                self.payments += issued
                to, issued = self._next("btc", btc.burn_address())
                btc.pay(self.bcoin, to, 10_000 + rng.randrange(10_000))
                btc.mine(self.bcoin, 1)
                self.btc_blocks += 1
                self.payments += issued
        except BaseException as e:  # reported by stop(), in the main thread
            self.failure = e


# ------------------------------------------------------------------------------------------ daemon


@contextlib.contextmanager
def daemon_process(
    config: Path, log_path: Path, profile: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m watcher run`; with `profile`, under cProfile writing there when it stops (SIGTERM: the
    daemon's clean shutdown, so the profile is written)."""
    profiler = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, *profiler, "-m", "watcher", "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=_repo(),
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS of a process, in bytes (Linux /proc)."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmHWM", "VmRSS"):
                found[name] = int(value.split()[0]) * 1024
    return found


def process_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_started(
    session: aiohttp.ClientSession, proc: subprocess.Popen[bytes], t0: float, api: str, status: str,
    log_path: Path, timeout_s: float,
) -> tuple[float, float]:  # fmt: skip
    """Seconds from `t0` (the process start) to the API's first answer and to /readyz 200."""
    api_s = ready_s = None
    while api_s is None or ready_s is None:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}:\n{_tail(log_path)}")
        if time.perf_counter() - t0 > timeout_s:
            raise RuntimeError(f"daemon not ready after {timeout_s:g} s:\n{_tail(log_path)}")
        if api_s is None and await _answers(session, f"{api}/v1/keys") == 200:
            api_s = time.perf_counter() - t0
        if ready_s is None and await _answers(session, f"{status}/readyz") == 200:
            ready_s = time.perf_counter() - t0
        await asyncio.sleep(0.02)
    return api_s, ready_s


def _tail(log_path: Path) -> str:
    with open(log_path, errors="replace") as log:
        return log.read()[-3000:]


async def _answers(session: aiohttp.ClientSession, url: str) -> int | None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
            await r.read()
            return r.status
    except (aiohttp.ClientError, TimeoutError):
        return None


# ------------------------------------------------------------------------------------------ load


@dataclass
class Load:
    """The open-loop generator's state: what was taken (for repeats and for the block maker)."""

    session: aiohttp.ClientSession
    url: str
    rng: random.Random
    blocks: BlockMaker
    taken: list[tuple[str, str, str]] = field(default_factory=list)  # (currency, foreign_id, address)
    serial: int = 0

    def next_body(self) -> tuple[bytes, str | None]:
        """A request body, and the address a repeat must get back (None for a new foreign_id)."""
        if self.taken and self.rng.random() < REPEAT_SHARE:
            currency, foreign_id, address = self.rng.choice(self.taken)
            return orjson.dumps({"currency": currency, "foreign_id": foreign_id}), address
        self.serial += 1
        currency = CURRENCIES[self.serial % len(CURRENCIES)]
        return orjson.dumps({"currency": currency, "foreign_id": f"bench-{self.serial}"}), None

    async def one(self, body: bytes, expected: str | None, scheduled: float, at_s: float) -> Answer:
        repeat = expected is not None
        try:
            async with self.session.post(self.url, data=body) as r:
                status, answer = r.status, await r.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            return Answer(at_s, time.perf_counter() - scheduled, 0, repeat, repr(e))
        latency = time.perf_counter() - scheduled
        if status != (200 if repeat else 201):
            return Answer(at_s, latency, status, repeat, answer[:300].decode(errors="replace"))
        got = orjson.loads(answer)
        if repeat and got["address"] != expected:
            return Answer(at_s, latency, status, repeat, f"repeat got {got['address']}, first {expected}")
        if not repeat:
            self.taken.append((got["currency"], got["foreign_id"], got["address"]))
            self.blocks.issued["btc" if got["currency"] == "BTC" else "evm"].append(got["address"])
        return Answer(at_s, latency, status, repeat, "")

    async def run(self, rate: float, seconds: float) -> tuple[list[Answer], float]:
        """`rate * seconds` requests, request i sent at start + i / rate: (answers, first send to last
        answer in seconds)."""
        count = round(rate * seconds)
        tasks: list[asyncio.Task[Answer]] = []
        start = time.perf_counter()
        for i in range(count):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body, expected = self.next_body()
            tasks.append(asyncio.create_task(self.one(body, expected, scheduled, i / rate)))
        answers = await asyncio.gather(*tasks)
        return list(answers), time.perf_counter() - start


async def count_deposits(session: aiohttp.ClientSession, api: str, want: int, timeout_s: float) -> int:
    """The daemon's deposits over the API, waiting up to `timeout_s` for `want` of them."""
    deadline = time.monotonic() + timeout_s
    while True:
        found, cursor = 0, ""
        while True:
            async with session.get(f"{api}/v1/deposits?limit=1000{cursor}") as r:
                page = await r.json()
            found += len(page["data"])
            if not page.get("next_cursor"):
                break
            cursor = f"&cursor={page['next_cursor']}"
        if found >= want or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.5)


async def measure(
    proc: subprocess.Popen[bytes], api: str, status: str, key: str, blocks: BlockMaker, log_path: Path,
    rate: float, seconds: float, start_timeout_s: float, t0: float,
) -> dict[str, Any]:  # fmt: skip
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=0)  # no client-side queue: queueing shows in the daemon
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(headers=headers, connector=connector, timeout=timeout) as session:
        start_api_s, start_ready_s = await wait_started(
            session, proc, t0, api, status, log_path, start_timeout_s
        )
        load = Load(session, f"{api}/v1/addresses", random.Random(7), blocks)
        warmup, _ = await load.run(rate, WARMUP_S)
        cpu0 = process_cpu_s(proc.pid)
        answers, load_s = await load.run(rate, seconds)
        cpu_s = process_cpu_s(proc.pid) - cpu0
        eth_blocks, btc_blocks, payments = blocks.counts()
        # Two polls and the confirmations' blocks later, every payment to an issued address is a deposit.
        deposits = await count_deposits(session, api, payments, timeout_s=POLL_INTERVAL_S * 4 + 5)
        memory = proc_status(proc.pid)
    return {
        "start_api_s": start_api_s,
        "start_ready_s": start_ready_s,
        "answers": tuple(answers),
        "load_s": load_s,
        "warmup_errors": tuple(f"{a.status}: {a.error}" for a in warmup if a.error),
        "eth_blocks": eth_blocks,
        "btc_blocks": btc_blocks,
        "payments": payments,
        "deposits": deposits,
        "daemon_hwm": memory["VmHWM"],
        "daemon_rss": memory["VmRSS"],
        "daemon_cpu_s": cpu_s,
    }


def run_api_bench(
    addresses: int,
    rate: float = TARGET_RATE,
    seconds: float = 10.0,
    seed: int = 8,
    profile: bool = False,
    block_every_s: float = BLOCK_EVERY_S,
) -> TakeRun:
    """The whole measurement (module docstring); every process started here is stopped, even on error.
    `profile`: the daemon runs under cProfile (slower: figures only to compare within such runs)."""
    from bench.run import receiver_process  # bench.run imports this module for its table

    key, key_hash = new_api_key(live=False)
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        db = os.path.join(tmp, "watcher.sqlite3")
        fill_s = fill(db, addresses, seed)
        db_bytes = os.path.getsize(db)
        with AnvilNode() as anvil, BcoinNode() as bcoin, receiver_process() as (callback_url, _):
            btc.fund(bcoin)
            tokens = {code: evm.deploy_token(anvil.url, code, code, 6) for code in ("USDT", "USDC")}
            status_port, api_port = _free_port(), _free_port()
            config = daemon_config(
                db, status_port, api_port, key_hash.line(), callback_url, anvil, bcoin, tokens, rate
            )
            config_path = Path(tmp, "config.yaml")
            config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            log_path = Path(tmp, "daemon.log")
            profile_path = Path(tmp, "daemon.prof") if profile else None
            blocks = BlockMaker(anvil, bcoin, block_every_s)
            blocks.start()
            try:
                t0 = time.perf_counter()
                with daemon_process(config_path, log_path, profile_path) as proc:
                    figures = asyncio.run(
                        measure(
                            proc, f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{status_port}", key,
                            blocks, log_path, rate, seconds, 600 + addresses / 50_000, t0,
                        )
                    )  # fmt: skip
            finally:
                blocks.stop()
            profile_text = profile_summary(profile_path) if profile_path is not None else ""
    return TakeRun(
        addresses=addresses, fill_s=fill_s, db_bytes=db_bytes, rate=rate, seconds=seconds,
        block_every_s=block_every_s, profile=profile_text, **figures,
    )  # fmt: skip


def profile_summary(path: Path, lines: int = 30) -> str:
    """The daemon's whole run (start-up included), by own time and by cumulative time."""
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(lines)
    stats.sort_stats("cumulative").print_stats(lines)
    return out.getvalue()


# ------------------------------------------------------------------------------------------ report

Row = tuple[str, str, str]


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def api_rows(run: TakeRun | None) -> list[Row]:
    if run is None:
        return []
    n = run.addresses
    at_scale = " (target at 10,000,000)" if n < 10_000_000 else ""
    p99 = run.percentile(0.99)
    errors = run.errors + list(run.warmup_errors)
    rate_ok = run.achieved_rate >= 0.95 * min(run.rate, TARGET_RATE)
    p99_ok = p99 <= TARGET_P99_S and rate_ok and run.rate >= TARGET_RATE and not errors
    created = sum(1 for a in run.answers if not a.repeat)
    bursts = run.slow_bursts()
    blocks = (
        f"a block with a payment on each every {run.block_every_s:g} s"
        if run.block_every_s > 0
        else "no blocks"
    )
    title = (
        f"== merchant API take: POST /v1/addresses at {run.rate:g}/s for {run.seconds:g} s (open loop), "
        f"{n:,} addresses in the store, the daemon following anvil and bcoin ({blocks})"
    )
    rows: list[Row] = [
        (title, "", ""),
        ("start-up: process start to the API's first answer", f"{run.start_api_s:,.2f} s", ""),
        (
            "start-up: process start to /readyz (watch sets loaded, both chains polled)",
            f"{run.start_ready_s:,.2f} s",
            f"target <= {TARGET_START_S:g} s{at_scale} {_verdict(run.start_ready_s <= TARGET_START_S)}",
        ),
        ("take latency p50 (scheduled send to answer read)", _ms(run.percentile(0.50)), ""),
        (
            "take latency p99",
            _ms(p99),
            f"target <= {TARGET_P99_S * 1000:g} ms at {TARGET_RATE:g}/s {_verdict(p99_ok)}",
        ),
        ("take latency max", _ms(run.latencies[-1]), ""),
        (
            "  the slowest 1%, by when they were sent",
            f"{len(bursts)} group{'s' if len(bursts) != 1 else ''}",
            "at "
            + ", ".join(f"{a:.2f}-{b:.2f} s ({n})" for a, b, n in bursts[:8])
            + (" ..." if len(bursts) > 8 else ""),
        ),
        (
            "achieved rate (answers / first send to last answer)",
            f"{run.achieved_rate:,.0f}/s",
            f"asked {run.rate:g}/s {_verdict(rate_ok)}",
        ),
        (
            "answers: new foreign_ids (201) / repeats (200, same address)",
            f"{created:,} / {len(run.answers) - created:,}",
            f"errors {len(errors)} (must be 0) {_verdict(not errors)}",
        ),
    ]
    rows += [(f"  error: {error[:150]}", "", "") for error in errors[:10]]
    cpu = run.daemon_cpu_s / run.load_s
    per_take = f"{run.daemon_cpu_s / len(run.answers) * 1e3:.2f} ms a take"
    rows += [
        ("daemon CPU during the load", f"{cpu:.0%}", per_take),
        (
            "daemon peak RSS (VmHWM)",
            f"{run.daemon_hwm / 1e6:,.0f} MB",
            f"target <= {TARGET_RSS / 1e9:g} GB{at_scale} {_verdict(run.daemon_hwm <= TARGET_RSS)}; "
            f"VmRSS at the end {run.daemon_rss / 1e6:,.0f} MB",
        ),
        (
            "chains meanwhile: ETH blocks / BTC blocks",
            f"{run.eth_blocks} / {run.btc_blocks}",
            f"{run.payments} payments to issued addresses, {run.deposits} deposits seen by the daemon",
        ),
        ("store file", f"{run.db_bytes / 1e6:,.0f} MB", f"(filled in {run.fill_s:,.1f} s)"),
    ]  # fmt: skip
    return rows
