"""The daemon: one TaskGroup holding a follower per chain, the callback dispatcher and the status server.

SIGTERM and SIGINT stop it in order: the followers and the reloader are cancelled (every commit is one
transaction, so a cut step leaves nothing half done), the dispatcher starts no new request, lets those in
flight be answered (at most `STOP_DRAIN_MAX_S`) and records them, then the process exits. So a planned
stop (systemctl restart, an upgrade) sends nothing twice. A second signal cancels at once. Any stop,
SIGKILL included, is safe: state lives in the store, a restart resumes from each chain's cursor and
delivers what is pending (what was cut in flight, at least once).

On a PostgreSQL store several daemons share one database and elect one leader (watcher/leadership.py):
every daemon serves the merchant API (and the back office), the status port and takes part in the
election; only the leader runs the leader's work, the components that move cursors, change deposits and
payments or record deliveries (the followers, the payment sweep, the dispatcher), built afresh from the
store for each term (`_work`) and cancelled when the term ends. Their writes are fenced with the term
(watcher/leader_fence.py, the store's begin check), the dispatcher asks `still_leading()` before each
send. What the API commits on a standby reaches the leader's followers through the store
(Follower._pull_new_addresses). With SQLite there is no election: the lock file makes the daemon alone,
and the leader's work runs from the start.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from typing import Any

from chains.base import ChainAdapter
from chains.registry import create_adapter
from watcher.address_book import AddressBook
from watcher.address_sync import sync_addresses
from watcher.api.server import ApiServer
from watcher.config import Config, LeadershipConfig, MerchantConfig, load_config
from watcher.database_url import is_database_url, safe_database_url
from watcher.dispatcher import STOP_DRAIN_MAX_S, Dispatcher
from watcher.errors import ConfigError, ConfigRefused, Deposed, StoreError, WatcherError, exit_code_of
from watcher.follower import Follower
from watcher.health import Health
from watcher.lag_history import LagHistory
from watcher.leadership import (
    DISCONNECTED_ROLE,
    LEADER_ROLE,
    Leadership,
    LeadershipStatus,
    run_while_leader,
    systemd_status,
)
from watcher.logs import get_logger, redact_url
from watcher.metrics import Metrics
from watcher.model import IssuedAddress
from watcher.notify import Notifier
from watcher.payment_book import PaymentBook
from watcher.payment_tracker import PaymentTracker, no_callbacks
from watcher.reload import live_config, restart_needed
from watcher.status import StatusServer
from watcher.store import Store
from watcher.store_open import open_store
from watcher.supervisor import supervise

log = get_logger(component="daemon")
# Beyond the dispatcher's drain: time for a supervisor's restart pause or a last flush before we give up.
STOP_GRACE_S = 5.0
CHECKPOINT_EVERY_S = 2.0
STORE_PROBE_EVERY_S = 2.0
# The supervisors' names of the leader's work: their beats and crashes end with its term.
_LEADER_TASKS = ("follower:", "dispatcher", "payments", "leader_work")


class Daemon:
    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.health = Health()
        self.lag_history = LagHistory(self.health)  # the back office's lag chart
        self.wake = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self.stop_requested = asyncio.Event()
        # Set once the components run: from then on a stop drains the dispatcher instead of cancelling.
        self.serving = False
        self.store: Store | None = None
        self.adapters: dict[str, ChainAdapter] = {}
        # The leader's work (followers, payment tracker, dispatcher): empty/None on a standby.
        self.followers: list[Follower] = []
        self.dispatcher: Dispatcher | None = None
        self.status: StatusServer | None = None
        self.metrics: Metrics | None = None
        self.reload_error: str | None = None
        self.book: AddressBook | None = None
        self.api: ApiServer | None = None  # listens when some integration has an API key
        self.payments: PaymentTracker | None = None
        # The election, on a PostgreSQL store (None: SQLite, this daemon is alone).
        self.leadership: Leadership | None = None
        # Clear while the leader's work runs: a planned stop waits for it to drain its dispatcher.
        self._idle = asyncio.Event()
        self._idle.set()

    async def run(self) -> None:
        self.store = await open_store(self.config, exclusive=True)
        try:
            self.leadership = self._election(self.store)
            await sync_addresses(self.store, self.config)
            await self._check_integrations(self.store)
            await self._start_components(self.store)
            self.notifier.ready(f"started; {self._status_line([])}")
            await self._run_tasks()
        finally:
            self.notifier.stopping()
            await self._stop()

    def _election(self, store: Store) -> Leadership | None:
        """The election a PostgreSQL store needs (`leadership:`'s settings, else the defaults: two daemons
        on one database must never both follow), and its fence on every store transaction."""
        if not is_database_url(self.config.database):
            if self.config.leadership is not None:
                log.warning("leadership_ignored", reason="an SQLite store has one daemon (its lock file)")
            return None
        from watcher.leader_fence import fence_check
        from watcher.store_pg import PgStore

        leadership = Leadership(
            self.config.database,
            self.config.leadership or LeadershipConfig(),
            password=self.config.database_password,
            on_change=self._role_changed,
        )
        assert isinstance(store, PgStore)
        # Leadership.before_write's fence, sent with BEGIN (no round trip of its own): leader_fence.py.
        store.begin_check = fence_check(leadership)
        return leadership

    def _role_changed(self, status: LeadershipStatus) -> None:
        log.info("leadership_role", node=status.node, role=status.role, term=status.term)
        self.notifier.status(self._status_line(self.health.stalled()))

    async def _start_components(self, store: Store) -> None:
        lead = self.leadership
        self.metrics = Metrics(self.health, store, None if lead is None else lead.status)
        for chain in self.config.chains:
            settings = replace(
                chain.settings,
                rpc_observer=self.metrics.rpc_observer(chain.name),
                on_rpc_url=self._fail_over_reporter(chain.name),
            )
            self.adapters[chain.name] = create_adapter(chain.adapter, settings)
        if lead is None:
            await self._build_work(store)  # before the status port, as always without an election
        self.book = AddressBook(store, self.config, self._watch_issued)
        self.status = StatusServer(self.config, store, self.health, self.metrics, lead)
        await self.status.start()
        if any(i.api_keys for i in self.config.integrations):
            payments = PaymentBook(self.book, trouble=self.chain_trouble)
            self.api = ApiServer(self.config, self.book, payments, self.health, self.lag_history)
            await self.api.start()
        log.info(
            "daemon_started",
            network=self.config.network,
            database=safe_database_url(db) if is_database_url(db := self.config.database) else db,
            status_port=self.status.port,
            chains={c.name: [redact_url(url) for url in c.settings.urls] for c in self.config.chains},
            addresses=len(self.config.addresses),
            leadership=None if lead is None else lead.node,
        )

    async def _build_work(self, store: Store) -> None:
        """The leader's components, from the store as it is now: the watch sets, the payments' clocks and
        the outbox are what the last leader (or this daemon, before a restart) left there."""
        assert self.metrics is not None
        high = await store.address_high_water()  # before the sets: a row added meanwhile is pulled later
        watch_sets = await store.watch_sets([c.name for c in self.config.chains])
        followers = []
        for chain in self.config.chains:
            follower = Follower(
                chain,
                self.config.network,
                self.adapters[chain.name],
                store,
                self.health.chain(chain.name),
                self.wake.set,
                beats=self.health.beat,
                max_head_age_s=self.config.status.max_head_age_s,
            )
            follower.use_watch(watch_sets[chain.name], high)
            followers.append(follower)
        payments = PaymentTracker(store, self.config)
        await payments.load({name: "mempool" in a.capabilities for name, a in self.adapters.items()})
        lead = self.leadership
        self.followers, self.payments = followers, payments
        self._wire_payments()
        self.dispatcher = Dispatcher(
            store,
            self.config.merchant,
            self.wake,
            beats=self.health.beat,
            observe=self.metrics.callback_attempt,
            callbacks=_callbacks(self.config),
            may_send=None if lead is None else lead.still_leading,
        )

    def _forget_work(self) -> None:
        """The leader's work ended with its term: nothing of it may look stalled or crashed now."""
        self.followers, self.payments, self.dispatcher = [], None, None
        for name in [n for n in self.health.beats if n.startswith(_LEADER_TASKS)]:
            del self.health.beats[name]
        for name in [n for n in self.health.crashes if n.startswith(_LEADER_TASKS)]:
            # Not Health.restarting: a store fault it met stays /readyz's `store` problem (the store has
            # not come back by the term's end) until the store probe writes again.
            del self.health.crashes[name]

    def _wire_payments(self) -> None:
        """Each follower moves payments in the transactions that change deposits, tells the tracker when
        it is at the head, and queues CoinsPaid callbacks only for integrations that take them."""
        assert self.payments is not None
        quiet = no_callbacks(self.config)
        for follower in self.followers:
            follower.after_apply = self.payments.after_plan
            follower.at_head = partial(self.payments.saw_head, follower.chain.name)
            follower.no_callbacks = quiet

    def chain_trouble(self, chain: str) -> str | None:
        """Why a chain is not followed now (halted, behind, its node unreachable, its follower crashed),
        or None: a payment is not created on a chain the daemon cannot watch. A standby follows nothing
        itself: a chain is followed while some daemon leads (the leader's health is its own)."""
        if self.leadership is not None and not self.leadership.status().is_leader:
            seen = self.leadership.status()
            if seen.holder and seen.lease_expires_in_s is not None and seen.lease_expires_in_s >= 0:
                return None
            return "no daemon leads now (a take-over is under way): the chains are not followed"
        crashed = self.health.crashes.get(f"follower:{chain}")
        if crashed is not None:
            return crashed
        status = self.config.status
        return self.health.chain(chain).not_ready_reason(
            time.time(), status.max_head_age_s, status.max_lag_blocks
        )

    def _watch_issued(self, issued: IssuedAddress, watch_key: bytes, maybe_paid: bool) -> None:
        """An address the book just committed: watched by its chain's follower before the caller answers."""
        for follower in self.followers:
            if follower.chain.name == issued.chain:
                follower.watch_address(issued.currency, watch_key, issued.id, maybe_paid=maybe_paid)

    async def _check_integrations(self, store: Store) -> None:
        """Addresses of an integration the config no longer lists stay in the store and their deposits
        and callbacks too (nothing is lost); their callbacks wait, failing, until it is configured again."""
        unknown = await store.integration_ids() - {i.id for i in self.config.integrations}
        for integration_id in sorted(unknown):
            log.error(
                "integration_not_configured",
                integration_id=integration_id,
                hint="its addresses stay watched and its callbacks wait; add it back to integrations:",
            )

    def _fail_over_reporter(self, chain: str) -> Callable[[str], None]:
        health = self.health.chain(chain)

        def report(url: str) -> None:
            health.rpc_url = url
            log.warning("node_failover", chain=chain, rpc_url=redact_url(url))

        return report

    async def _run_tasks(self) -> None:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self._watchdog()),
                group.create_task(self._reloader()),
                group.create_task(supervise("lag_history", self.lag_history.run, self.health)),
                group.create_task(supervise("checkpointer", self._checkpointer, self.health)),
            ]
            if self.leadership is None:
                tasks.append(group.create_task(self._work()))
            else:
                tasks.append(group.create_task(self.leadership.run()))
                tasks.append(group.create_task(run_while_leader(self.leadership, self._lead)))
                tasks.append(group.create_task(supervise("store_probe", self._store_probe, self.health)))
            self.serving = True
            await self.stop_requested.wait()
            # The leader's work drains its dispatcher; the election ends after it (a leader resigns, so
            # a standby takes over at once instead of waiting out the lease).
            try:
                async with asyncio.timeout(STOP_DRAIN_MAX_S + STOP_GRACE_S):
                    await self._idle.wait()
            except TimeoutError:
                log.error("stop_drain_timeout", waited_s=STOP_DRAIN_MAX_S + STOP_GRACE_S)
            for task in tasks:
                task.cancel()

    async def _lead(self, term: int) -> None:
        """The leader's work for one term (run_while_leader cancels it when the term ends). A write the
        fence refused ends it early: the term is over, run_while_leader sees that at once."""
        log.info("leader_work_starting", term=term)
        try:
            await supervise("leader_work", self._fresh_work, self.health)
        except Deposed as refused:
            log.warning("leader_work_fenced", term=term, error=str(refused))
        finally:
            self._forget_work()

    async def _fresh_work(self) -> None:
        """`_work` built from the store (supervised: the store may not answer at the start of a term);
        a refused write (or a config the chain refuses) comes out alone, as the supervisor lets it through."""
        try:
            await self._work()
        except ExceptionGroup as group:
            for kind in (ConfigRefused, Deposed):  # what the supervisor passes on, not a crash
                if (leaves := group.subgroup(kind)) is not None:
                    raise next(_leaves(leaves)) from None
            raise
        finally:
            self._forget_work()

    async def _work(self) -> None:
        """The followers, the payment sweep and the dispatcher, until a stop is requested (then the
        dispatcher drains: a planned stop sends nothing twice) or cancelled (the end of a term)."""
        assert self.store is not None
        if self.stop_requested.is_set():
            return
        self._idle.clear()
        try:
            if self.dispatcher is None:
                await self._build_work(self.store)
            assert self.dispatcher is not None and self.payments is not None
            async with asyncio.TaskGroup() as group:
                others = [
                    group.create_task(supervise(f"follower:{f.chain.name}", f.run, self.health))
                    for f in self.followers
                ]
                sweeping = partial(self.payments.run, self.wake.set)
                others.append(group.create_task(supervise("payments", sweeping, self.health)))
                dispatcher = self.dispatcher
                dispatching = group.create_task(supervise("dispatcher", dispatcher.run, self.health))
                await self.stop_requested.wait()
                for task in others:
                    task.cancel()  # nothing new is committed, so nothing new is queued
                dispatcher.stop()
                await dispatching
        finally:
            self._idle.set()

    async def _store_probe(self) -> None:
        """While the store is known to fail (`write_error`, or a store fault a component crashed on:
        /readyz's `store` problem), or the election's database does not answer, try a write that changes
        nothing every few seconds: a standby writes only for the API, so without it a standby would not
        say its store fails, or would keep saying so from one lost connection, until a merchant wrote.
        Never on the leader: its own work retries the writes that failed, and only they say whether the
        store takes them (on a full disk a write that changes nothing may fit where a block's does not)."""
        assert self.store is not None
        while True:
            await asyncio.sleep(STORE_PROBE_EVERY_S)
            role = None if self.leadership is None else self.leadership.status().role
            if role == LEADER_ROLE:
                continue
            lost = role == DISCONNECTED_ROLE
            if self.store.write_error is None and self.health.store_ok and not lost:
                continue
            try:
                await self.store.probe_write()
            except StoreError:
                continue  # still failing: write_error says why
            if not any(n.startswith(_LEADER_TASKS) for n in self.health.crashes):
                self.health.store_ok, self.health.store_error = True, None

    async def _checkpointer(self) -> None:
        """Checkpoint the store's WAL every few seconds, off the writers' path (Store.checkpoint)."""
        assert self.store is not None
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY_S)
            await self.store.checkpoint()

    def request_stop(self, reason: str) -> bool:
        """A planned stop: drain and exit. False if the components do not run yet (or a stop is already
        draining): then the caller cancels at once, there is nothing in flight worth waiting for."""
        if not self.serving or self.stop_requested.is_set():
            return False
        log.info("shutdown_requested", signal=reason)
        self.notifier.stopping()  # systemd shows "deactivating" while the callbacks in flight drain
        self.stop_requested.set()
        return True

    # ------------------------------------------------------------------------------------- systemd

    async def _watchdog(self) -> None:
        """Pings systemd's watchdog only while every follower and the dispatcher keep their beats, and
        keeps STATUS= up to date. A node outage keeps the beats going (the loops retry); a wedged loop
        stops them, so systemd restarts the service."""
        interval = self.notifier.watchdog_interval_s or 5.0
        last_status = ""
        withheld = False
        while True:
            stalled = self.health.stalled()
            if not stalled:
                self.notifier.watchdog()
            if bool(stalled) != withheld:
                withheld = bool(stalled)
                (log.error if withheld else log.info)(
                    "watchdog_" + ("withheld" if withheld else "resumed"), stalled=stalled
                )
            status = self._status_line(stalled)
            if status != last_status:
                self.notifier.status(status)
                last_status = status
            await asyncio.sleep(min(interval, 5.0))

    def _status_line(self, stalled: list[str]) -> str:
        summary = self.health.summary()
        if self.leadership is not None:  # the role first; a standby's chain heights say nothing
            summary = systemd_status(self.leadership.status(), summary)
        parts = [summary]
        if stalled:
            parts.append("STALLED: " + ", ".join(stalled))
        if self.reload_error:
            parts.append(f"reload refused: {self.reload_error}")
        return "; ".join(parts)

    # ------------------------------------------------------------------------------------- reload

    async def _reloader(self) -> None:
        while True:
            await self.reload_requested.wait()
            self.reload_requested.clear()
            self.notifier.reloading()
            await self.reload()
            self.notifier.ready(self._status_line(self.health.stalled()))

    async def reload(self) -> bool:
        """Re-read the config and address files; apply what can change live. False if refused."""
        try:
            # In a thread: a million addresses take a minute to read, and the loop must go on meanwhile.
            new = await asyncio.to_thread(load_config, self.config.path)
        except ConfigError as exc:
            self.reload_error = str(exc)
            log.error("config_reload_refused", error=str(exc), path=self.config.path)
            return False
        self.reload_error = None
        fixed = restart_needed(self.config, new)
        if fixed:
            log.warning("config_reload_needs_restart", settings=fixed)
        self.config = live_config(self.config, new)
        assert self.store is not None and self.status is not None and self.book is not None
        await sync_addresses(self.store, self.config)
        for follower in self.followers:  # the leader's; a standby's next term reads the new config
            await follower.reload_watch()
        if self.dispatcher is not None:
            self.dispatcher.merchant = self.config.merchant
            self.dispatcher.callbacks = _callbacks(self.config)
        self.book.config = self.config
        if self.payments is not None:
            self.payments.config = self.config
            self._wire_payments()
        self.status.config = self.config
        if self.api is not None:
            self.api.config = self.config  # keys and client networks change at once
        elif any(i.api_keys for i in self.config.integrations):
            log.warning(
                "config_reload_needs_restart", settings=["api (the first API key starts the listener)"]
            )
        log.info("config_reloaded", addresses=len(self.config.addresses), needs_restart=fixed)
        return True

    async def _stop(self) -> None:
        if self.api is not None:
            await self.api.stop()
        if self.status is not None:
            await self.status.stop()
        for adapter in self.adapters.values():
            await adapter.close()
        if self.store is not None:
            await self.store.close()
        self.notifier.close()
        log.info("daemon_stopped")


def _callbacks(config: Config) -> dict[str, MerchantConfig]:
    return {i.id: i.callback for i in config.integrations}


def run_forever(config: Config) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the process exit code (chosen by the error's class,
    see watcher.errors: 78 for a config the chain refuses, which systemd does not restart on)."""

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        daemon = Daemon(config)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _stop_requested, task, daemon, sig)
        loop.add_signal_handler(signal.SIGHUP, _reload_requested, daemon)
        await daemon.run()

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        pass
    except (WatcherError, sqlite3.Error, OSError) as failed:
        # At start (the components' own failures go to their supervisors): the store cannot be opened or
        # written (a full or read-only disk, another daemon's lock), or the status port is taken. One
        # line, not a traceback; the service manager starts it again later.
        log.error("start_failed", error=f"{type(failed).__name__}: {failed}")
        return exit_code_of(failed)
    except ExceptionGroup as group:  # from the daemon's TaskGroup
        refused = group.subgroup(ConfigRefused)
        if refused is None:
            raise
        leaves = list(_leaves(refused))
        for exc in leaves:
            log.error("config_refused", error=str(exc))
        return exit_code_of(leaves[0])
    return 0


def _leaves(group: BaseExceptionGroup[Any]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def _reload_requested(daemon: Daemon) -> None:
    log.info("reload_requested", signal="SIGHUP")
    daemon.reload_requested.set()


def _stop_requested(task: asyncio.Task[Any], daemon: Daemon, sig: signal.Signals) -> None:
    if not daemon.request_stop(sig.name):
        log.info("shutdown_now", signal=sig.name)
        task.cancel()
