"""The fail-over trial: three daemons on one PostgreSQL, the leader faulted again and again.

    python -m tests.trials.failover_trial --deposits 50 --kills 6 --cuts 4 --pauses 4 --pg-restarts 3 \
        --payments 24 --seed N

The crash trial's world and script (tests/trials/crash_trial.py: anvil with ETH, USDT and USDC, a bcoin
regtest node, reorgs, controls, a merchant receiver failing a share of the callbacks, payments for orders
with Coinskro webhooks), run against three real daemon processes that share one PostgreSQL database
(devnet/postgres.py) and elect a leader (watcher/leadership.py). Each daemon reaches the server through a
TCP proxy of its own (tests/tcp_proxy.py), and the payments script reaches the merchant API through one
more proxy, pointed at a daemon other than the one faulted (a standby, mostly). At each of the crash
trial's kill points the trial faults the leader, in a seeded order of:

- `sigkill`: SIGKILL the leader; it is started again a moment after a standby took over;
- `cut`: its database proxy is shut (open connections cut, new ones refused) for longer than a lease,
  then opened again: the daemon lost its lease meanwhile and comes back as a standby;
- `pause`: SIGSTOP for longer than the lease, then SIGCONT: it wakes up deposed (its own clock says so,
  and the database refuses what it was in the middle of);
- `pg_restart`: the PostgreSQL server itself is restarted (every daemon loses its connections).

Only one fault at a time: the next waits until the last one is over (the faulted daemon is back).

At the end, the crash trial's checks (tests/trials/invariants.py on the callbacks and the store,
tests/trials/payment_invariants.py on the payments) find nothing lost, nothing invented, nothing out of
order, and every repeat of one callback (deposit id and status) or webhook (payment and event) byte for
byte the same, whichever daemon sent it (the receivers cannot tell who did; the bodies must not either).
Every take-over is measured from the fault to the new leader's `leadership_taken` line in its log (wall
clock) and must be within the configured `takeover_s`; after a PostgreSQL restart, the time until some
daemon leads again is printed (it includes the server's own restart).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from devnet.anvil import AnvilNode
from devnet.bcoin import BcoinNode
from devnet.postgres import PostgresServer
from tests.daemon_process import DaemonProcess, free_port, write_config
from tests.tcp_proxy import TcpProxy
from tests.trials import payments as pay
from tests.trials.crash_trial import (
    KEY,
    MERCHANT_TIMEOUT_S,
    SECRET,
    Trial,
    TrialOptions,
    TrialResult,
    _chains,
    _stop,
    listed,
)
from tests.trials.invariants import Report, SigningReceiver

DEFAULT_SEED = 20_251_207
NODES = ("node-a", "node-b", "node-c")
FAULTS = ("sigkill", "cut", "pause", "pg_restart")
LEASE_S, POLL_S, TAKEOVER_S = 3.0, 0.5, 5.0
# How long a cut or a pause lasts beyond the lease: the faulted leader is surely deposed.
OUTAGE_BEYOND_LEASE_S = (0.5, 2.5)
# A SIGKILLed leader is started again this long after a standby took over.
RESTART_AFTER_S = (0.2, 2.0)
LEADER_WAIT_S = 60.0  # bound on any wait for a leader (a take-over, a PostgreSQL restart)
T = TypeVar("T")


def replay_command(o: FailoverOptions) -> str:
    return (
        f"python -m tests.trials.failover_trial --deposits {o.deposits} --kills {o.kills} --cuts {o.cuts}"
        f" --pauses {o.pauses} --pg-restarts {o.pg_restarts} --payments {o.payments} --seed {o.seed}"
    )


@dataclass(frozen=True, slots=True)
class FailoverOptions:
    deposits: int = 50
    kills: int = 6  # SIGKILLs of the leader
    cuts: int = 4  # its database connection cut
    pauses: int = 4  # SIGSTOP / SIGCONT
    pg_restarts: int = 3
    seed: int = DEFAULT_SEED
    payments: int = 24
    workdir: Path | None = None
    final_wait_s: float = 240.0
    verbose: bool = False

    @property
    def faults(self) -> int:
        return self.kills + self.cuts + self.pauses + self.pg_restarts

    def trial(self, workdir: Path) -> TrialOptions:
        """The crash trial's options: its kill points are this trial's fault points."""
        return TrialOptions(
            deposits=self.deposits, kills=self.faults, seed=self.seed, workdir=workdir,
            final_wait_s=self.final_wait_s, verbose=self.verbose, payments=self.payments, store="postgres",
        )  # fmt: skip


@dataclass
class Fault:
    """One fault of the leader and how the cluster came through it."""

    number: int
    kind: str
    node: str  # the leader faulted (for pg_restart: the leader at the time)
    term: int | None  # its term
    at: float  # wall clock
    leader_seen_at: float | None = None  # wall clock: some daemon (another one, but for pg_restart) leads
    new_leader: str | None = None
    takeover_s: float | None = None  # from the new leader's log: its leadership_taken minus `at`

    def describe(self) -> str:
        took = "?" if self.takeover_s is None else f"{self.takeover_s:.2f} s"
        return (
            f"fault #{self.number} {self.kind} of {self.node} (term {self.term}): {self.new_leader} in {took}"
        )


@dataclass
class FailoverResult:
    options: FailoverOptions
    crash: TrialResult
    faults: list[Fault] = field(default_factory=list)
    deliveries_by_node: dict[str, int] = field(default_factory=dict)
    exits: dict[str, int | None] = field(default_factory=dict)

    @property
    def report(self) -> Report:
        return self.crash.report

    @property
    def ok(self) -> bool:
        return self.report.ok

    def count(self, kind: str) -> int:
        return sum(1 for f in self.faults if f.kind == kind)

    def takeovers(self) -> list[float]:
        return [f.takeover_s for f in self.faults if f.kind != "pg_restart" and f.takeover_s is not None]

    def figures(self) -> str:
        times = self.takeovers()
        spread = (
            f"max {max(times):.2f} s, median {statistics.median(times):.2f} s over {len(times)}"
            if times
            else "none measured"
        )
        pg = [f.takeover_s for f in self.faults if f.kind == "pg_restart" and f.takeover_s is not None]
        pg_line = f"max {max(pg):.2f} s" if pg else "none"
        return (
            f"fail-over trial, seed {self.options.seed}: {self.crash.steps} steps, "
            f"{len(NODES)} daemons, one PostgreSQL\n"
            f"faults: SIGKILLs {self.count('sigkill')}, connection cuts {self.count('cut')}, "
            f"pauses {self.count('pause')}, PostgreSQL restarts {self.count('pg_restart')}\n"
            f"take-overs (configured takeover_s {TAKEOVER_S:g} s, lease {LEASE_S:g} s): {spread}; "
            f"a leader again after a PostgreSQL restart: {pg_line}\n"
            f"callbacks delivered per daemon (their logs): {self.deliveries_by_node}; exits on SIGTERM "
            f"{self.exits}\n{self.crash.figures()}"
        )

    def failure_message(self) -> str:
        return (
            f"fail-over trial seed {self.options.seed}: {len(self.report.violations)} violation(s); "
            f"replay: {replay_command(self.options)}\n{listed(self.report.violations)}"
            f"\n{self.figures()}\nfiles (configs, daemon logs, steps.log): {self.crash.workdir}"
        )


# ------------------------------------------------------------------------------------------ the cluster


class ProxyThread:
    """The trial's TCP proxies run on an event loop of their own, in a thread: the trial's loop blocks at
    times (node RPCs, the checkers, waiting for a daemon to exit), and the proxies must not stall the
    daemons' database connections meanwhile (a daemon would see a network stall the trial did not mean)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="proxies", daemon=True)
        self._thread.start()

    async def run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """`make()` run on the proxies' loop; its result."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(make(), self.loop))

    async def do(self, action: Callable[[], T]) -> T:
        """A plain call on the proxies' loop (TcpProxy.cut, retarget touch its transports)."""

        async def call() -> T:
            return action()

        return await self.run(call)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@dataclass
class Node:
    name: str
    daemon: DaemonProcess
    proxy: TcpProxy  # its way to PostgreSQL
    api_port: int | None
    paused: bool = False

    def running(self) -> bool:
        return self.daemon.proc is not None and self.daemon.proc.poll() is None

    def taken_lines(self) -> list[tuple[float, int]]:
        """(wall time, term) of each `leadership_taken` in its log."""
        found = []
        for line in _log_lines(self.daemon.log_path):
            if line.get("event") == "leadership_taken":
                found.append((_wall(line["timestamp"]), int(line["term"])))
        return found

    def delivered(self) -> int:
        return sum(
            1 for line in _log_lines(self.daemon.log_path) if line.get("event") == "callback_delivered"
        )


class Cluster:
    """The three daemons, seen by the crash trial's script as its one daemon (`proc`, `status_port`,
    `start`); the faults themselves are FailoverTrial's."""

    def __init__(self, nodes: list[Node], api_proxy: TcpProxy | None, proxies: ProxyThread) -> None:
        self.nodes = nodes
        self.api_proxy = api_proxy
        self.proxies = proxies
        self.leader: Node = nodes[0]  # as last seen
        self.down_on_purpose: set[str] = set()

    # What crash_trial.Trial reads of its daemon.

    @property
    def proc(self) -> Cluster:
        return self

    def poll(self) -> int | None:
        """None while every daemon runs (or is down on purpose); else the exit code of one that died."""
        for node in self.nodes:
            if node.name not in self.down_on_purpose and not node.running():
                assert node.daemon.proc is not None
                return node.daemon.proc.returncode if node.daemon.proc.returncode is not None else -1
        return None

    @property
    def status_port(self) -> int:
        return self.leader.daemon.status_port

    def start(self) -> None:
        """The crash trial restarts its daemon here between two kills: here each fault restarts its own."""

    # The trial's views.

    async def status(self, node: Node, session: aiohttp.ClientSession) -> dict[str, Any] | None:
        if node.paused or not node.running():
            return None
        try:
            async with session.get(f"http://127.0.0.1:{node.daemon.status_port}/status") as r:
                body: dict[str, Any] = await r.json()
                return body
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError, ValueError):
            return None

    async def wait_leader(self, exclude: str | None, timeout_s: float = LEADER_WAIT_S) -> tuple[Node, int]:
        """The daemon that says it leads (not `exclude`), and its term; raises after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:
            while time.monotonic() < deadline:
                for node in self.nodes:
                    if node.name == exclude:
                        continue
                    status = await self.status(node, session)
                    lead = (status or {}).get("leadership") or {}
                    if lead.get("role") == "leader":
                        self.leader = node
                        return node, int(lead["term"])
                await asyncio.sleep(0.1)
        raise AssertionError(f"no leader (other than {exclude}) within {timeout_s:g} s")

    async def wait_ready(self, timeout_s: float = LEADER_WAIT_S) -> None:
        """Every running daemon's /readyz says ready (after a PostgreSQL restart: store and election)."""
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:
            for node in self.nodes:
                while node.running() and not node.paused:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with session.get(f"http://127.0.0.1:{node.daemon.status_port}/readyz") as r:
                            if r.status == 200:
                                break
                    if time.monotonic() > deadline:
                        raise AssertionError(f"{node.name} not ready within {timeout_s:g} s")
                    await asyncio.sleep(0.1)

    async def point_api_away_from(self, node: Node, rng: random.Random) -> None:
        """The payments script's API requests go to another daemon from now on. Its open connections are
        cut (the client keeps them alive and would go on asking `node`): a request in flight is retried
        with the same Idempotency-Key, as after a SIGKILL in the crash trial."""
        if self.api_proxy is None:
            return
        others = [n for n in self.nodes if n is not node and n.running() and not n.paused and n.api_port]
        if others:
            chosen = rng.choice(others)
            assert chosen.api_port is not None
            proxy, port = self.api_proxy, chosen.api_port
            await self.proxies.do(lambda: proxy.retarget("127.0.0.1", port))
            await self.proxies.do(proxy.cut)


# ------------------------------------------------------------------------------------------ the trial


class FailoverTrial(Trial):
    def __init__(self, options: FailoverOptions, workdir: Path) -> None:
        super().__init__(options.trial(workdir), workdir)
        self.failover = options
        self.fault_order = random.Random(options.seed * 31 + 7)
        kinds = (
            ["sigkill"] * options.kills + ["cut"] * options.cuts
            + ["pause"] * options.pauses + ["pg_restart"] * options.pg_restarts
        )  # fmt: skip
        self.fault_order.shuffle(kinds)
        self.planned = kinds
        self.faults: list[Fault] = []
        self.pg: PostgresServer | None = None
        self.cluster: Cluster | None = None
        self.recovering: asyncio.Task[None] | None = None
        self.proxies = ProxyThread()

    async def run_failover(self) -> FailoverResult:
        o = self.failover
        self.say(f"seed {o.seed}; replay: {replay_command(o)}; files in {self.workdir}", always=True)
        try:
            with AnvilNode() as anvil, BcoinNode() as bitcoin, PostgresServer() as pg:
                self.pg = pg
                self.say(f"PostgreSQL on port {pg.port}, its files in {pg.workdir}")
                return await self._run_cluster(anvil, bitcoin, {"url": pg.create_database("trial")})
        except Exception as exc:
            raise AssertionError(
                f"fail-over trial seed {o.seed} broke off after {self.steps} steps, "
                f"{len(self.faults)} faults: {exc}\nreplay: {replay_command(o)}; files: {self.workdir}"
            ) from exc
        finally:
            self._step_log.close()

    async def _run_cluster(
        self, anvil: AnvilNode, bitcoin: BcoinNode, database: dict[str, str]
    ) -> FailoverResult:
        scenario, config = await asyncio.to_thread(self._setup, anvil.url, bitcoin, database)
        assert self.pg is not None
        rx = SigningReceiver(KEY, SECRET, slow_answer_s=MERCHANT_TIMEOUT_S + 1.5, huge_bytes=2**20)
        orders = pay.CoinskroReceiver(
            pay.COINSKRO_SECRET, slow_answer_s=MERCHANT_TIMEOUT_S + 1.5, huge_bytes=2**20
        )
        api_proxy = TcpProxy("127.0.0.1", 9) if self.options.payments else None  # retargeted below
        async with rx, orders:
            callback = config["merchant"] if "merchant" in config else config["integrations"][0]["callback"]
            callback["callback_url"] = rx.url
            if self.options.payments:
                config["integrations"][1]["callback"]["callback_url"] = orders.url
            nodes = await self._nodes(config)
            cluster = self.cluster = Cluster(nodes, api_proxy, self.proxies)
            if api_proxy is not None:
                await self.proxies.run(api_proxy.start)  # pointed at a standby once the daemons run
                self.payments = pay.PaymentScript(
                    self.options.payments, self.options.seed, _chains(scenario), api_proxy.port, self.say
                )
            failing = asyncio.Event()
            failing.set()
            faults = asyncio.create_task(self._faults([rx, orders] if self.payments else [rx], failing))
            for node in nodes:
                node.daemon.start()
            exits: dict[str, int | None] = {}
            try:
                for node in nodes:
                    await node.daemon.wait_live()
                leader, term = await cluster.wait_leader(None)
                self.say(f"{leader.name} leads (term {term})", always=True)
                await cluster.point_api_away_from(leader, self.fault_order)
                async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=pay.API_TIMEOUT_S)
                ) as api:
                    await self._script(scenario, cluster, api)
                    while self.planned:  # kill points taken by faults in payment requests
                        await self._kill(cluster, "(planned, not done yet)")
                        await asyncio.sleep(self.fault_order.uniform(0.5, 2.0))
                    failing.clear()
                    rx.clear_plan()
                    orders.clear_plan()
                    report, payments = await self._finish(scenario, cluster, rx, orders, config, api)
                await self._recovered()
                await self._final_checks(report)
            finally:
                faults.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await faults
                if self.recovering is not None:
                    self.recovering.cancel()
                for node in nodes:
                    if node.paused and node.daemon.proc is not None:
                        node.daemon.proc.send_signal(signal.SIGCONT)
                for node in nodes:
                    exits[node.name] = _stop(node.daemon)
                for node in nodes:
                    await self.proxies.run(node.proxy.stop)
                if api_proxy is not None:
                    await self.proxies.run(api_proxy.stop)
                self.proxies.close()
        for name, code in exits.items():
            if code != 0:
                report.violations.append(f"{name} exited with {code} on SIGTERM")
        self._measure(nodes, report)
        crash = TrialResult(
            options=self.options, report=report, workdir=self.workdir, kills=self.kills,
            reorgs_evm=scenario.reorgs_evm, reorgs_btc=scenario.reorgs_btc,
            double_spends=scenario.double_spends, controls=len(scenario.controls), steps=self.steps,
            run_time_s=time.monotonic() - self.started, daemon_exit=None, payments=payments,
        )  # fmt: skip
        return FailoverResult(
            options=self.failover, crash=crash, faults=self.faults,
            deliveries_by_node={n.name: n.delivered() for n in nodes}, exits=exits,
        )  # fmt: skip

    async def _nodes(self, config: dict[str, Any]) -> list[Node]:
        """Three daemons' configs: the crash trial's, with a database URL through a proxy of their own, a
        status port, an API port (with payments) and a name in the election."""
        assert self.pg is not None
        nodes = []
        for name in NODES:
            proxy = TcpProxy("127.0.0.1", self.pg.port)
            await self.proxies.run(proxy.start)
            own = deepcopy(config)
            own["database"] = {
                "url": config["database"]["url"].replace(f":{self.pg.port}/", f":{proxy.port}/")
            }
            status_port = free_port()
            own["status"]["listen"] = f"127.0.0.1:{status_port}"
            api_port = None
            if "api" in own:
                api_port = free_port()
                own["api"]["listen"] = f"127.0.0.1:{api_port}"
            own["leadership"] = {
                "name": name,
                "lease_s": LEASE_S,
                "poll_interval_s": POLL_S,
                "takeover_s": TAKEOVER_S,
            }
            path = write_config(self.workdir / f"{name}.yaml", own)
            nodes.append(
                Node(name, DaemonProcess(path, status_port, self.workdir / f"{name}.log"), proxy, api_port)
            )
        return nodes

    # ---------------------------------------------------------------------------------- faults

    async def _kill(self, daemon: Any, why: str) -> None:
        """The crash trial's kill point: the next fault of the seeded order (a SIGKILL once they are all
        done), on the leader, after the last fault is over."""
        await self._recovered()
        cluster = self.cluster
        assert cluster is not None and self.pg is not None
        if (code := cluster.poll()) is not None:
            raise AssertionError(f"a daemon died by itself (exit {code}): {self._logs_tail()}")
        if "request is in flight" in why:
            # A SIGKILL, as in the crash trial; the request is cut by the API proxy (pointed away from
            # the leader) and retried with its key. A database fault would have the daemon answer it 500,
            # which the payments script takes for a bug. The planned fault waits for the next point.
            kind = "sigkill"
        else:
            kind = self.planned.pop(0) if self.planned else "sigkill"
        leader, term = await cluster.wait_leader(None)
        fault = Fault(len(self.faults) + 1, kind, leader.name, term, time.time())
        self.faults.append(fault)
        self.kills += kind == "sigkill"
        await cluster.point_api_away_from(leader, self.fault_order)
        self.say(
            f"fault #{fault.number}: {kind} of the leader {leader.name} (term {term}) {why}", always=True
        )
        self.down_since = fault.at
        if kind == "sigkill":
            cluster.down_on_purpose.add(leader.name)
            leader.daemon.kill()
        elif kind == "cut":
            await self.proxies.run(leader.proxy.stop)
        elif kind == "pause":
            assert leader.daemon.proc is not None
            leader.paused = True
            leader.daemon.proc.send_signal(signal.SIGSTOP)
        else:
            await asyncio.to_thread(self.pg.restart)
        recovery = self._recover(fault, leader)
        if kind == "pg_restart":
            await recovery  # the API answers 500 while the server is away: the script waits for it
        else:
            self.recovering = asyncio.create_task(recovery)

    async def _restart(self, daemon: Any, why: str = "") -> None:
        """Each fault restarts (resumes, reconnects) its daemon by itself (`_recover`)."""

    async def _recover(self, fault: Fault, faulted: Node) -> None:
        cluster = self.cluster
        assert cluster is not None
        exclude = None if fault.kind == "pg_restart" else faulted.name
        leader, term = await cluster.wait_leader(exclude)
        fault.leader_seen_at, fault.new_leader = time.time(), leader.name
        self.downs.append((fault.at, fault.leader_seen_at))
        self.down_since = None
        self.say(f"fault #{fault.number}: {leader.name} leads (term {term})", always=True)
        lo, hi = OUTAGE_BEYOND_LEASE_S
        if fault.kind == "sigkill":
            await asyncio.sleep(self.fault_order.uniform(*RESTART_AFTER_S))
            faulted.daemon.start()
            await faulted.daemon.wait_live()
            cluster.down_on_purpose.discard(faulted.name)
        elif fault.kind == "cut":
            await asyncio.sleep(max(0.0, fault.at + LEASE_S + self.fault_order.uniform(lo, hi) - time.time()))
            await self.proxies.run(faulted.proxy.start)
        elif fault.kind == "pause":
            await asyncio.sleep(max(0.0, fault.at + LEASE_S + self.fault_order.uniform(lo, hi) - time.time()))
            assert faulted.daemon.proc is not None
            faulted.daemon.proc.send_signal(signal.SIGCONT)
            faulted.paused = False
        else:
            await cluster.wait_ready()
        self.say(f"fault #{fault.number} over: {faulted.name} is back", always=True)

    async def _recovered(self) -> None:
        if self.recovering is not None:
            await self.recovering
            self.recovering = None

    def _logs_tail(self) -> str:
        assert self.cluster is not None
        return "\n".join(f"--- {n.name}\n{n.daemon.log()}" for n in self.cluster.nodes)

    # ---------------------------------------------------------------------------------- the end

    async def _final_checks(self, report: Report) -> None:
        """Once every fault is over: one leader, the two others standby, every daemon running."""
        cluster = self.cluster
        assert cluster is not None
        leader, _ = await cluster.wait_leader(None)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            for node in cluster.nodes:
                if not node.running():
                    report.violations.append(f"{node.name} is not running at the end")
                    continue
                status = await cluster.status(node, session)
                role = ((status or {}).get("leadership") or {}).get("role")
                if role != ("leader" if node is leader else "standby"):
                    report.violations.append(
                        f"{node.name} says {role!r} at the end (the leader is {leader.name})"
                    )

    def _measure(self, nodes: list[Node], report: Report) -> None:
        """Each take-over from the logs: the first `leadership_taken` after the fault (by another daemon
        than the one faulted, but for a PostgreSQL restart), minus the fault's time."""
        taken = sorted((at, term, node.name) for node in nodes for at, term in node.taken_lines())
        for fault in self.faults:
            after = [
                (at, name) for at, term, name in taken
                if at >= fault.at and (fault.kind == "pg_restart" or name != fault.node)
            ]  # fmt: skip
            if fault.kind == "pg_restart":
                # The leader may keep its term across a short restart: then the wait for a leader is it.
                seen = fault.leader_seen_at
                first = min([a for a, _ in after] + ([seen] if seen is not None else []), default=None)
                fault.takeover_s = None if first is None else first - fault.at
            elif after:
                fault.takeover_s = after[0][0] - fault.at
                fault.new_leader = after[0][1]
            else:
                report.violations.append(f"fault #{fault.number} {fault.kind}: no take-over in any log")
            if fault.kind != "pg_restart" and fault.takeover_s is not None and fault.takeover_s > TAKEOVER_S:
                report.violations.append(f"{fault.describe()}: beyond takeover_s {TAKEOVER_S:g} s")
            self.say(fault.describe(), always=True)


def _log_lines(path: Path) -> Iterator[dict[str, Any]]:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                yield json.loads(line)


def _wall(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


async def run_failover_trial(options: FailoverOptions) -> FailoverResult:
    """Run the trial; the caller decides what a failed result means (pytest asserts, main() exits 1)."""
    own_dir = options.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="failover-trial-")) if own_dir else Path(options.workdir or ".")
    workdir.mkdir(parents=True, exist_ok=True)
    result = await FailoverTrial(options, workdir).run_failover()
    if own_dir and result.ok:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deposits", type=int, default=50, help="transfers to watched addresses (50)")
    parser.add_argument("--kills", type=int, default=6, help="SIGKILLs of the leader (6)")
    parser.add_argument("--cuts", type=int, default=4, help="cuts of the leader's database connection (4)")
    parser.add_argument("--pauses", type=int, default=4, help="SIGSTOPs of the leader beyond its lease (4)")
    parser.add_argument("--pg-restarts", type=int, default=3, help="PostgreSQL restarts (3)")
    parser.add_argument("--payments", type=int, default=24, help="payments for orders besides (24; 0: none)")
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: a new random seed)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here (default: temp)")
    parser.add_argument("--final-wait", type=float, default=240.0, help="seconds to wait at the end (240)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every step")
    args = parser.parse_args(argv)
    counts = (args.kills, args.cuts, args.pauses, args.pg_restarts, args.payments)
    if args.deposits < 1 or min(counts) < 0 or sum(counts[:4]) < 1:
        parser.error("--deposits at least 1, the counts at least 0, and at least one fault")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    options = FailoverOptions(
        deposits=args.deposits, kills=args.kills, cuts=args.cuts, pauses=args.pauses,
        pg_restarts=args.pg_restarts, seed=seed, payments=args.payments, workdir=args.workdir,
        final_wait_s=args.final_wait, verbose=args.verbose,
    )  # fmt: skip
    result = asyncio.run(run_failover_trial(options))
    print(result.figures(), flush=True)
    if not result.ok:
        print(result.failure_message(), file=sys.stderr, flush=True)
        return 1
    print(f"fail-over trial seed {seed}: no invariant violated", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
