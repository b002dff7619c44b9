"""Group commit: requests that arrive while one store transaction runs share the next one.

Each write transaction costs a BEGIN, a COMMIT and a round trip to SQLite's thread per statement, all
under the store's write lock; taken one by one at 200 takes/s those queued behind each other (and behind
the followers' commits) and made the take's p99. A `GroupCommit` keeps one drain task: it hands every
request waiting at that moment (up to `max_batch`) to `apply` in one call, which answers each request's
future after its transaction committed; requests arriving meanwhile wait for the next call. A lone request
is applied at the next turn of the event loop, so an idle daemon answers as soon as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    """`apply(batch)` must settle every future of its batch (a result or an exception each); a future whose
    caller went away is already cancelled and is skipped. What `apply` raises reaches every future of its
    batch it left unsettled, and the next batch still runs."""

    def __init__(
        self,
        apply: Callable[[list[tuple[Item, asyncio.Future[Result]]]], Awaitable[None]],
        max_batch: int,
    ) -> None:
        self._apply = apply
        self._max_batch = max_batch
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._drain: asyncio.Task[None] | None = None
        self._applying = 0  # requests of the batch being applied

    @property
    def pending(self) -> int:
        """Requests not answered yet: waiting, or in the batch being applied."""
        return len(self._waiting) + self._applying

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._drain is None:
            self._drain = asyncio.create_task(self._drain_all(), name="group-commit")
        return await future

    async def _drain_all(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                self._applying = len(batch)
                try:
                    await self._apply_one(batch)
                finally:
                    self._applying = 0
        finally:
            # Reached with nothing waiting (no await since the loop's test), or on cancellation (the loop
            # stopping): no caller is left waiting on a future nobody will settle.
            self._drain = None
            for _, future in self._waiting:
                future.cancel()
            self._waiting.clear()

    async def _apply_one(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            await self._apply(batch)
        except BaseException as e:
            for _, future in batch:
                if future.done():
                    continue
                if isinstance(e, Exception):
                    future.set_exception(e)
                else:
                    future.cancel()
            if not isinstance(e, Exception):
                raise
        for _, future in batch:  # `apply` broke its contract: its callers must not wait forever
            if not future.done():
                future.set_exception(RuntimeError("group commit: a request was left unanswered"))
