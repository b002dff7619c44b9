"""The daemon: one TaskGroup holding a follower per chain, the callback dispatcher and the status server.

SIGTERM and SIGINT cancel the group and everything shuts down cleanly. Any stop, SIGKILL included, is
safe: state lives in the store, a restart resumes from each chain's cursor and delivers what is pending.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from chains.base import ChainAdapter
from chains.registry import create_adapter
from watcher.config import Config
from watcher.dispatcher import Dispatcher
from watcher.follower import Follower
from watcher.health import Health
from watcher.logs import get_logger, redact_url
from watcher.status import StatusServer
from watcher.store import NewAddress, Store

log = get_logger(component="daemon")


def address_rows(config: Config, chain_name: str) -> Iterator[NewAddress]:
    """The configured addresses of one chain with their watch keys (computed by the config loader)."""
    codes = {c.code for c in config.chain(chain_name).currencies}
    for entry in config.addresses:
        if entry.currency in codes:
            yield NewAddress(chain_name, entry.currency, entry.watch_key, entry.address, entry.foreign_id)


async def sync_addresses(store: Store, config: Config) -> None:
    for chain in config.chains:
        await store.sync_addresses(chain.name, address_rows(config, chain.name))


async def supervise(name: str, run: Callable[[], Awaitable[None]], health: Health) -> None:
    """Run a component; if it crashes unexpectedly, log it and restart it after a pause.

    The one place with a broad except: a bug or a store fault (disk full) in one component must not
    end the process, and the component's own state is in the store, so a restart is safe.
    """
    backoff = 1.0
    while True:
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            health.store_ok = False
            health.store_error = f"{name} crashed: {type(exc).__name__}: {exc}"
            log.exception("task_crashed", task=name, restart_in_s=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 60.0)
            health.store_ok, health.store_error = True, None


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.health = Health()
        self.wake = asyncio.Event()
        self.store: Store | None = None
        self.adapters: dict[str, ChainAdapter] = {}
        self.followers: list[Follower] = []
        self.dispatcher: Dispatcher | None = None
        self.status: StatusServer | None = None

    async def run(self) -> None:
        self.store = await Store.open(self.config.database, exclusive=True)
        try:
            await sync_addresses(self.store, self.config)
            await self._start_components(self.store)
            await self._run_tasks()
        finally:
            await self._stop()

    async def _start_components(self, store: Store) -> None:
        for chain in self.config.chains:
            adapter = create_adapter(chain.adapter, chain.settings)
            self.adapters[chain.name] = adapter
            self.followers.append(
                Follower(
                    chain, self.config.network, adapter, store, self.health.chain(chain.name), self.wake.set
                )
            )
        self.dispatcher = Dispatcher(store, self.config.merchant, self.wake)
        self.status = StatusServer(self.config, store, self.health)
        await self.status.start()
        log.info(
            "daemon_started",
            network=self.config.network,
            database=self.config.database,
            status_port=self.status.port,
            chains={c.name: redact_url(c.settings.rpc_url) for c in self.config.chains},
            addresses=len(self.config.addresses),
        )

    async def _run_tasks(self) -> None:
        assert self.dispatcher is not None
        async with asyncio.TaskGroup() as group:
            for follower in self.followers:
                group.create_task(supervise(f"follower:{follower.chain.name}", follower.run, self.health))
            group.create_task(supervise("dispatcher", self.dispatcher.run, self.health))

    async def _stop(self) -> None:
        if self.status is not None:
            await self.status.stop()
        for adapter in self.adapters.values():
            await adapter.close()
        if self.store is not None:
            await self.store.close()
        log.info("daemon_stopped")


def run_forever(config: Config) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the process exit code."""

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _stop_requested, task, sig)
        await Daemon(config).run()

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        pass
    return 0


def _stop_requested(task: asyncio.Task[Any], sig: signal.Signals) -> None:
    log.info("shutdown_requested", signal=sig.name)
    task.cancel()
