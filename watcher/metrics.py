"""Prometheus metrics for /metrics: names follow Prometheus conventions with a `deposit_watcher_` prefix.

Counters and histograms are fed as things happen (node calls through the adapters' RPC observer,
callback attempts through the dispatcher); the state of chains, deposits and the outbox is read when
scraped. Labels never carry an address or a txid: only chain, currency, method, status, outcome, and
the daemon's own node name for the leader election's gauges.
"""

from __future__ import annotations

import asyncio
import platform
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from chains.base import RpcObserver
from watcher.errors import StoreError
from watcher.health import ChainHealth, Health
from watcher.leadership import LeadershipStatus
from watcher.store import Store

# A scrape answers within this even when the store does not (with the counts read last).
STORE_READ_TIMEOUT_S = 3.0

VERSION = "0.1.0"
_RPC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_DELIVERY_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 900, 3600, 14400, 86400)


class Metrics:
    def __init__(
        self, health: Health, store: Store, leadership: Callable[[], LeadershipStatus] | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        self.rpc_requests = Counter(
            "deposit_watcher_rpc_requests", "Node RPC calls by chain, method and outcome.",
            ["chain", "method", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.rpc_duration = Histogram(
            "deposit_watcher_rpc_request_duration_seconds", "Node RPC call duration.",
            ["chain", "method", "outcome"], buckets=_RPC_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.callbacks = Counter(
            "deposit_watcher_callback_attempts", "Callback delivery attempts by outcome.",
            ["outcome"], registry=self.registry,
        )  # fmt: skip
        self.delivery_latency = Histogram(
            "deposit_watcher_callback_delivery_latency_seconds",
            "From queueing a callback (the state change was committed) to the merchant's 2xx.",
            buckets=_DELIVERY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        info = Info("deposit_watcher_build", "Version of deposit-watcher.", registry=self.registry)
        info.info({"version": VERSION, "python": platform.python_version()})
        self.state = _StateCollector(health)
        self.registry.register(self.state)
        if leadership is not None:
            self.registry.register(_LeadershipCollector(leadership))
        self.store = store

    def rpc_observer(self, chain: str) -> RpcObserver:
        def observe(method: str, outcome: str, seconds: float) -> None:
            self.rpc_requests.labels(chain, method, outcome).inc()
            self.rpc_duration.labels(chain, method, outcome).observe(seconds)

        return observe

    def callback_attempt(self, outcome: str, queued_at: float | None) -> None:
        """outcome: delivered, failed (will retry) or gave_up (schedule exhausted)."""
        self.callbacks.labels(outcome).inc()
        if outcome == "delivered" and queued_at is not None:
            self.delivery_latency.observe(max(0.0, time.time() - queued_at))

    async def render(self) -> bytes:
        """The text exposition, with the store's counts read now; the last ones read while the store cannot
        be read (a PostgreSQL server restarting): a scrape still answers, and /readyz says why."""
        try:
            self.state.deposits, self.state.outbox = await asyncio.wait_for(
                self._store_counts(), STORE_READ_TIMEOUT_S
            )
        except (StoreError, TimeoutError):
            pass
        rendered: bytes = generate_latest(self.registry)
        return rendered

    async def _store_counts(self) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
        return await self.store.deposit_counts_by_currency(), await self.store.outbox_counts()


class _StateCollector(Collector):
    """Gauges read at scrape time from the daemon's health and the store's counts."""

    def __init__(self, health: Health) -> None:
        self.health = health
        self.deposits: dict[tuple[str, str], int] = {}
        self.outbox: dict[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        yield from self._chains()
        deposits = GaugeMetricFamily(
            "deposit_watcher_deposits", "Deposits by currency and status.", labels=["currency", "status"]
        )
        for (currency, status), count in sorted(self.deposits.items()):
            deposits.add_metric([currency, status], count)
        yield deposits
        outbox = GaugeMetricFamily(
            "deposit_watcher_outbox_entries", "Callback outbox entries by state.", labels=["state"]
        )
        for state in ("pending", "delivered", "failed", "superseded"):
            outbox.add_metric([state], self.outbox.get(state, 0))
        yield outbox

    def _chains(self) -> Iterator[Metric]:
        now = time.time()
        gauges: dict[str, tuple[str, Callable[[ChainHealth], float | None]]] = {
            "node_height": ("The node's head height.", lambda h: h.node_height),
            "processed_height": ("The height processed and committed.", lambda h: h.processed_height),
            "lag_blocks": ("Node head minus processed height.", lambda h: h.lag()),
            "head_age_seconds": ("Seconds since the node's head last changed.", lambda h: h.head_age_s(now)),
            "up": ("1 if the node answers.", lambda h: int(h.connected)),
            "halted": ("1 if the chain is halted (see /status).", lambda h: int(bool(h.halted_reason))),
            "reorg_max_depth_blocks": ("Deepest reorg since start.", lambda h: h.deepest_reorg),
        }
        for suffix, (text, read) in gauges.items():
            family = GaugeMetricFamily(f"deposit_watcher_chain_{suffix}", text, labels=["chain"])
            for name, h in sorted(self.health.chains.items()):
                value = read(h)
                if value is not None:
                    family.add_metric([name], float(value))
            yield family
        reorgs = CounterMetricFamily(
            "deposit_watcher_chain_reorgs", "Reorgs unwound since start.", labels=["chain"]
        )
        for name, h in sorted(self.health.chains.items()):
            reorgs.add_metric([name], h.reorgs)
        yield reorgs


class _LeadershipCollector(Collector):
    """The leader election as this daemon sees it (watcher/leadership.py), read at scrape time."""

    def __init__(self, read: Callable[[], LeadershipStatus]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        lead = self.read()
        gauges = {
            "leader": ("1 while this daemon leads: follows the chains, sends callbacks.", lead.is_leader),
            "leader_term": ("This daemon's term while leader, else the leader's term last seen.", lead.term),
            "leadership_connected": (
                "1 while the election's database answers.", lead.role != "disconnected"
            ),
        }  # fmt: skip
        for suffix, (text, value) in gauges.items():
            family = GaugeMetricFamily(f"deposit_watcher_{suffix}", text, labels=["node"])
            if value is not None:
                family.add_metric([lead.node], float(value))
            yield family
