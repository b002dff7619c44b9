"""The task supervisor: a crash is named after the component that crashed (a store problem only when the
store is why), and the restart pause starts again from 1 s once a component ran well for a while."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.scripted_chain import ScriptedChain, ScriptedChainState
from tests.test_follower import chain_config
from watcher.address_list import AddressListBuilder
from watcher.config import (
    DEFAULT_INTEGRATION_ID,
    Config,
    IntegrationConfig,
    LogConfig,
    MerchantConfig,
    StatusConfig,
)
from watcher.errors import ConfigRefused, StoreError
from watcher.follower import Follower
from watcher.health import Health
from watcher.status import StatusServer
from watcher.store import NewAddress, Store
from watcher.supervisor import BACKOFF_MAX_S, HEALTHY_RUN_S, crash_reason, is_store_fault, supervise


class FakeTime:
    """The supervisor's clock and sleep: a pause advances the clock and is recorded, nothing waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.pauses: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def crashing_after(
    fake: FakeTime, run_times_s: list[float]
) -> tuple[list[int], Callable[[], Awaitable[None]]]:
    """A component that runs each of `run_times_s` (fake seconds) and crashes, then returns for good."""
    calls = [0]

    async def run() -> None:
        calls[0] += 1
        if not run_times_s:
            return
        fake.now += run_times_s.pop(0)
        raise RuntimeError("a bug")

    return calls, run


async def test_the_pause_doubles_to_the_cap_and_starts_again_after_a_healthy_run() -> None:
    fake = FakeTime()
    # Eight quick crashes (a long store fault: the pause climbs to the cap), then one after a run of
    # HEALTHY_RUN_S (the fault is long over), then quick crashes again.
    calls, run = crashing_after(fake, [0.5] * 8 + [HEALTHY_RUN_S, 0.5, 0.5])
    await supervise("dispatcher", run, Health(), sleep=fake.sleep, clock=fake.clock)
    assert fake.pauses == [1, 2, 4, 8, 16, 32, 60, 60, 1, 2, 4]
    assert calls == [12]  # eleven crashes, each restarted, then the run that returned


async def test_a_run_shorter_than_the_threshold_keeps_the_pause_growing() -> None:
    fake = FakeTime()
    calls, run = crashing_after(fake, [0.1, HEALTHY_RUN_S - 1, HEALTHY_RUN_S - 1])
    await supervise("dispatcher", run, Health(), sleep=fake.sleep, clock=fake.clock)
    assert fake.pauses == [1, 2, 4]
    assert calls == [4]
    assert BACKOFF_MAX_S == HEALTHY_RUN_S  # the reason for the threshold: see watcher/supervisor.py


async def test_config_refused_and_cancellation_are_not_restarted() -> None:
    fake = FakeTime()

    async def refused() -> None:
        raise ConfigRefused("ethereum: USDT has 6 decimals, the config says 18")

    with pytest.raises(ConfigRefused):
        await supervise("follower:ethereum", refused, Health(), sleep=fake.sleep, clock=fake.clock)
    assert fake.pauses == []


def test_a_crash_reason_is_one_line_for_systemds_status() -> None:
    reason = crash_reason("dispatcher", ValueError("first line\nREADY=1\r\nlast"))
    assert reason == "dispatcher crashed: ValueError: first line READY=1 last"
    health = Health()
    health.crashed("dispatcher", reason, store_fault=False)
    assert "\n" not in health.summary() and reason in health.summary()


def test_a_task_groups_single_error_is_the_crash_reason_and_the_fault() -> None:
    """The dispatcher runs its workers in a TaskGroup: a StoreError reaches the supervisor wrapped."""
    wrapped = ExceptionGroup("unhandled errors in a TaskGroup", [StoreError("postgresql://h/db: gone")])
    assert crash_reason("dispatcher", wrapped) == "dispatcher crashed: StoreError: postgresql://h/db: gone"
    assert is_store_fault(wrapped)
    assert not is_store_fault(ExceptionGroup("bugs", [ValueError("a bug")]))
    both = ExceptionGroup("two", [ValueError("a bug"), StoreError("gone")])
    assert is_store_fault(both) and crash_reason("x", both).startswith("x crashed: ExceptionGroup: two")


def test_what_counts_as_a_store_fault(tmp_path: Path) -> None:
    assert is_store_fault(StoreError("locked"))
    assert is_store_fault(sqlite3.OperationalError("database or disk is full"))
    assert not is_store_fault(RuntimeError("a bug"))
    assert not is_store_fault(ValueError("a bug"))
    try:
        raise OSError(28, "No space left on device")  # raised here, not in the store
    except OSError as exc:
        assert not is_store_fault(exc)
    (tmp_path / "file").write_text("")
    try:  # the store's own OSError: its directory cannot be made (a file is in the way)
        asyncio.run(Store.open(str(tmp_path / "file" / "watcher.sqlite3")))
    except OSError as exc:
        assert is_store_fault(exc)
    else:
        raise AssertionError("Store.open did not fail")


# ========================================================== the crash as /readyz, /status, STATUS= say it


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(str(tmp_path / "watcher.sqlite3"))
    await s.sync_addresses("test", [NewAddress("test", "ETH", b"alice", "alice", "customer-1")])
    yield s
    await s.close()


def config(tmp_path: Path) -> Config:
    merchant = MerchantConfig("http://127.0.0.1:1/callbacks", "key", "secret")
    return Config(
        path=str(tmp_path / "watcher.yaml"), network="regtest", database=str(tmp_path / "watcher.sqlite3"),
        status=StatusConfig(port=0), log=LogConfig(), chains=(chain_config(),),
        integrations=(IntegrationConfig(DEFAULT_INTEGRATION_ID, "merchant", merchant),),
        addresses=AddressListBuilder().build(),
    )  # fmt: skip


class Paused:
    """The supervisor's sleep, held until the test has looked at what is reported meanwhile."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.entered.set()
        await self.release.wait()
        # A real sleep always yields: so must this one once released, or a component that crashes again
        # at once (before any await) would spin the supervisor without letting the test look.
        await asyncio.sleep(0)


async def crash_and_look(
    tmp_path: Path, store: Store, health: Health, follower: Follower, heal: Callable[[], None]
) -> tuple[int, dict[str, object], dict[str, object], str]:
    """Run the follower under the supervisor until it crashes; the readyz and status answers and the
    STATUS= line during the pause. Then `heal` the fault, let it restart, and return once the crash is
    cleared (a fault left in place would crash the restart too, and rightly be reported again)."""
    server = StatusServer(config(tmp_path), store, health)
    await server.start()
    paused = Paused()
    task = asyncio.create_task(supervise("follower:test", follower.run, health, sleep=paused))
    try:
        await asyncio.wait_for(paused.entered.wait(), 10)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{server.port}/readyz") as r:
                code, ready = r.status, await r.json()
            async with http.get(f"http://127.0.0.1:{server.port}/status") as r:
                status = await r.json()
        summary = health.summary()
        heal()
        paused.release.set()
        for _ in range(100):
            if "follower:test" not in health.crashes:
                break
            await asyncio.sleep(0.01)
        assert "follower:test" not in health.crashes  # restarted: no longer reported
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.stop()
    return code, ready, status, summary


async def test_a_follower_bug_is_reported_as_that_followers_crash_not_as_the_store(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    ScriptedChain.shared = ScriptedChainState()
    chain = ScriptedChain()
    chain.mine()

    async def head() -> object:
        raise RuntimeError("adapter bug: head() lost its block")

    monkeypatch.setattr(chain, "head", head)
    health = Health()
    follower = Follower(chain_config(), "regtest", chain, store, health.chain("test"), lambda: None)  # type: ignore[arg-type]
    code, ready, status, summary = await crash_and_look(tmp_path, store, health, follower, monkeypatch.undo)
    expected = "follower:test crashed: RuntimeError: adapter bug: head() lost its block"
    assert code == 503
    assert ready["problems"]["follower:test"] == expected  # type: ignore[index]
    assert "store" not in ready["problems"]  # type: ignore[operator]
    assert status["problems"]["follower:test"] == expected  # type: ignore[index]
    assert "store" not in status["problems"]  # type: ignore[operator]
    assert expected in summary
    assert health.store_ok and health.store_error is None


async def test_a_store_fault_in_a_follower_is_reported_as_the_store_and_the_crash(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    ScriptedChain.shared = ScriptedChainState()
    chain = ScriptedChain()
    chain.mine()

    def full_disk() -> object:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "transaction", full_disk)
    health = Health()
    follower = Follower(chain_config(), "regtest", chain, store, health.chain("test"), lambda: None)  # type: ignore[arg-type]
    code, ready, status, summary = await crash_and_look(tmp_path, store, health, follower, monkeypatch.undo)
    expected = "follower:test crashed: OperationalError: database or disk is full"
    assert code == 503
    assert ready["problems"]["store"] == expected  # type: ignore[index]
    assert ready["problems"]["follower:test"] == expected  # type: ignore[index]
    assert status["problems"]["store"] == expected  # type: ignore[index]
    assert expected in summary
    assert health.store_ok and health.store_error is None  # cleared by the restart, as before
