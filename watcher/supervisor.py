"""The task supervisor: runs a daemon component, and restarts it after a pause when it crashes.

The one place with a broad `except Exception`: a bug or a store fault (disk full) in one component must
not end the process, and a component keeps its state in the store, so a restart is safe. A crash is
reported as that component's failure (`Health.crashes`, shown by /readyz, /status and systemd's STATUS
line) and as a store problem only when it is one. The pause doubles from 1 s to 60 s while crashes come
quickly, and starts again from 1 s once the component ran well for a while.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable

from watcher.errors import ConfigRefused, Deposed, StoreError
from watcher.health import Health
from watcher.logs import get_logger

log = get_logger(component="supervisor")

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
# A component that ran this long before crashing had recovered: its next pause is the first one again.
# The cap itself, so a component that keeps crashing after runs this long is restarted at most about once
# a minute, as a crash loop at the cap is: the reset never lets crashes (and their tracebacks) come faster
# than the cap allows. A shorter threshold (say, the current pause) would let a component that fails a
# couple of seconds into every run (a full disk met at its first write) crash every few seconds forever.
HEALTHY_RUN_S = BACKOFF_MAX_S


def next_backoff(backoff: float, ran_s: float) -> float:
    """Pure: the pause after a crash, given the previous pause and how long the component ran."""
    return BACKOFF_FIRST_S if ran_s >= HEALTHY_RUN_S else backoff


def crash_reason(name: str, exc: BaseException) -> str:
    """One line: it goes into systemd's STATUS=, where a newline would start another assignment. A
    component's TaskGroup that failed of one error is that error (its message says what went wrong)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return " ".join(f"{name} crashed: {type(exc).__name__}: {exc}".splitlines())


def is_store_fault(exc: BaseException) -> bool:
    """Whether a crash is the store's fault (and not a bug, nor a node's): what /readyz calls `store`."""
    if isinstance(exc, (StoreError, sqlite3.Error)):
        return True
    if isinstance(exc, BaseExceptionGroup):  # a component's TaskGroup (the dispatcher's) wraps the cause
        return any(is_store_fault(e) for e in exc.exceptions)
    return isinstance(exc, OSError) and _raised_in(exc) == "watcher.store"


def _raised_in(exc: BaseException) -> str | None:
    """The innermost module of this project the exception passed through: where it was raised, or the
    project's code that called the library which raised it (an OSError from os.open in the store)."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if module.partition(".")[0] in ("watcher", "chains"):
            found = module
        tb = tb.tb_next
    return found


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    health: Health,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Run the component `name` until it returns; restart it after a pause whenever it crashes.

    `sleep` and `clock` are the pause and the time a run lasted (tests pass their own).
    """
    backoff = BACKOFF_FIRST_S
    while True:
        started = clock()
        try:
            await run()
            return
        except (asyncio.CancelledError, ConfigRefused, Deposed):
            # A config that contradicts the chain stops the daemon: restarting cannot help. A write
            # fenced off ends the leader's term: its work stops (watcher/daemon.py), it did not crash.
            raise
        except Exception as exc:
            backoff = next_backoff(backoff, clock() - started)
            store_fault = is_store_fault(exc)
            health.crashed(name, crash_reason(name, exc), store_fault=store_fault)
            log.exception("task_crashed", task=name, store_fault=store_fault, restart_in_s=backoff)
            await sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            health.restarting(name)
