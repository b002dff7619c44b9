"""The callback dispatcher: delivers committed outbox entries to the merchant and logs every attempt.

It reads due entries a page at a time through the store's reader (committed data only), posts each body
exactly as stored with the signature headers of its integration's format (coinspaid or coinskro), and
records the outcomes in batches (one transaction per batch keeps throughput high). Delivery is
at-least-once: a crash between the merchant's 2xx and the commit of that result sends the same body
again after restart, which receivers deduplicate by id+status.

Order per deposit: at most one request per deposit is in flight, and the store supersedes undelivered
older statuses when a newer one is queued, so a receiver never gets not_confirmed after confirmed.
Order per payment: at most one request per payment is in flight too, and the store holds a payment's
webhook back while an earlier one of it is pending (its events are never superseded: each is delivered).

A planned stop (`stop()`, on SIGTERM) sends nothing twice: no new request starts, the requests in flight
run to their answer (each is bounded by the merchant's timeout, and the wait by `STOP_DRAIN_MAX_S`),
their results are recorded, and only then does `run` return. Entries queued but never sent stay pending
in the store for the next start. Only a request cut at the bound can be sent again (at least once).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

import aiohttp

from watcher import coinskro
from watcher.callbacks import excerpt, next_attempt_at
from watcher.callbacks import headers as coinspaid_headers
from watcher.config import DEFAULT_INTEGRATION_ID, MerchantConfig
from watcher.logs import get_logger
from watcher.model import AttemptResult, OutboxEntry
from watcher.store import Store

PAGE_SIZE = 500
FLUSH_INTERVAL_S = 0.05
FLUSH_BATCH = 500
# Only this much of an answer is read: a merchant answering with megabytes must not cost memory.
EXCERPT_READ_BYTES = 4096
# On a planned stop, requests in flight get at most this long to be answered (less when the merchant's
# timeout is shorter). The unit's TimeoutStopSec (30 s) leaves 10 s beyond it to record the results
# and close: raise both together.
STOP_DRAIN_MAX_S = 20.0


class Dispatcher:
    def __init__(
        self,
        store: Store,
        merchant: MerchantConfig,
        wake: asyncio.Event,
        clock: Callable[[], float] = time.time,
        beats: Callable[[str, float], None] | None = None,
        observe: Callable[[str, float | None], None] | None = None,
        callbacks: Mapping[str, MerchantConfig] | None = None,
        may_send: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store
        self.merchant = merchant  # sizes the worker pool; the `merchant:` integration's settings
        # Each integration's callback settings, by id (replaced on reload). An entry is only ever sent with
        # its own integration's URL, key and secret: never another's, whatever the config became.
        self.callbacks: Mapping[str, MerchantConfig] = callbacks or {DEFAULT_INTEGRATION_ID: merchant}
        self.wake = wake
        # Asked before each send (a leader's `still_leading`: an HTTP request cannot be fenced by the
        # database); False: the entry is left to the next leader, unsent.
        self._may_send = may_send or (lambda: True)
        self._clock = clock
        self._beats = beats
        self._observe = observe
        self.log = get_logger(component="dispatcher")
        self._queue: asyncio.Queue[OutboxEntry] = asyncio.Queue(maxsize=merchant.concurrency * 2)
        self._busy_outbox: set[int] = set()  # in flight, or result not yet committed
        # Deposits and payments with a request in flight (OutboxEntry.subject): one each, to keep order.
        self._busy_subjects: set[tuple[str, int]] = set()
        self._results: list[tuple[AttemptResult, float | None]] = []
        self._entries: dict[int, OutboxEntry] = {}
        self._stopping = asyncio.Event()
        self._sending: set[asyncio.Task[None]] = set()  # workers with a request in flight
        self.delivered = 0
        self.failed_attempts = 0
        self.last_alive = self._clock()

    async def run(self) -> None:
        """Deliver until `stop()`; then finish the requests in flight, record them and return."""
        self._forget_unfinished()
        timeout = aiohttp.ClientTimeout(total=self.merchant.timeout_s)
        connector = aiohttp.TCPConnector(limit=self.merchant.concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            async with asyncio.TaskGroup() as group:
                workers = [group.create_task(self._worker(session)) for _ in range(self.merchant.concurrency)]
                flusher = group.create_task(self._flusher())
                feeder = group.create_task(self._feeder())
                await self._stopping.wait()
                feeder.cancel()
                await self._drain(workers)
                await flusher  # it ends by itself once stopping (cancelled, a commit could land twice)
        await self._flush()  # what the drain answered: recorded before the daemon exits

    def stop(self) -> None:
        """A planned stop: start nothing new; `run` returns once the requests in flight are recorded."""
        self._stopping.set()

    async def _drain(self, workers: list[asyncio.Task[None]]) -> None:
        """Let the requests in flight get their answers; free what was queued but never sent."""
        returned = 0
        while not self._queue.empty():
            self._release(self._queue.get_nowait())
            returned += 1
        for worker in workers:
            if worker not in self._sending:
                worker.cancel()  # idle, waiting for the queue
        in_flight = [w for w in workers if w in self._sending]
        bound_s = min(self.merchant.timeout_s + 1.0, STOP_DRAIN_MAX_S)
        self.log.info(
            "callbacks_draining", in_flight=len(in_flight), returned_to_store=returned, bound_s=bound_s
        )
        cut = 0
        if in_flight:
            _, late = await asyncio.wait(in_flight, timeout=bound_s)
            for worker in late:
                worker.cancel()  # its request was cut: no result, so it is sent again after the restart
            cut = len(late)
        self.log.info("callbacks_drained", answered=len(in_flight) - cut, cut=cut, returned_to_store=returned)

    def _release(self, entry: OutboxEntry) -> None:
        """An entry taken from a page but not sent: free again (still pending in the store)."""
        self._busy_outbox.discard(entry.id)
        self._busy_subjects.discard(entry.subject)
        self._entries.pop(entry.id, None)

    def _forget_unfinished(self) -> None:
        """Before a run: free what an earlier run left unfinished, so it is sent again (at least once).

        The supervisor runs the dispatcher again after a crash, typically a result flush the store could
        not write. Requests in flight then were cancelled without a result and entries still queued were
        never sent: both stayed busy, so they were never sent again. Entries whose result is kept stay
        busy until the result is recorded (a 2xx kept is not sent twice).
        """
        kept = {result.outbox_id for result, _ in self._results}
        while not self._queue.empty():
            self._queue.get_nowait()
        self._busy_outbox.intersection_update(kept)
        self._busy_subjects.clear()
        self._entries = {outbox_id: e for outbox_id, e in self._entries.items() if outbox_id in kept}

    # ------------------------------------------------------------------------------------- feeding

    async def _feeder(self) -> None:
        while True:
            self._beat()
            # Cleared before reading, so a commit that lands during the read still wakes the next wait.
            self.wake.clear()
            fed = await self._feed_page()
            if not fed:
                await self._sleep_until_due()

    async def _feed_page(self) -> int:
        if not self._may_send():
            return 0  # this daemon's term is over: its work is about to be cancelled
        fed = 0
        # An entry in flight when the page is read can be delivered (or rescheduled) and freed while this
        # loop waits on the queue, yet the page still shows it pending: without this it was sent twice
        # (4-16% duplicates under load, found by the callback benchmark), or retried ahead of schedule.
        busy_before = set(self._busy_outbox)
        for entry in await self.store.due_callbacks(self._clock(), PAGE_SIZE):
            busy = entry.id in busy_before or entry.id in self._busy_outbox
            if busy or entry.subject in self._busy_subjects:
                continue
            self._busy_outbox.add(entry.id)
            self._busy_subjects.add(entry.subject)
            self._entries[entry.id] = entry
            # Beat per put, not per page: with a merchant that lets every request time out, a page of
            # 500 waits for 500 / concurrency timeouts (250 s with the defaults) and the watchdog would
            # take the dispatcher for wedged.
            self._beat()
            await self._queue.put(entry)
            fed += 1
        return fed

    def _beat(self) -> None:
        self.last_alive = self._clock()
        if self._beats is not None:
            # What comes next: a page read, or a queue put that waits for a worker whose request ends
            # by the timeout (then perhaps a flush of results).
            self._beats("dispatcher", 60 + 3 * self.merchant.timeout_s)

    async def _sleep_until_due(self) -> None:
        next_due = await self.store.next_due_at()
        wait_s = 1.0 if next_due is None else min(1.0, max(0.01, next_due - self._clock()))
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that arrives
        # just as the event is set, and the daemon then ignores SIGTERM (seen in CI).
        try:
            async with asyncio.timeout(wait_s):
                await self.wake.wait()
        except TimeoutError:
            pass

    # ------------------------------------------------------------------------------------- sending

    async def _worker(self, session: aiohttp.ClientSession) -> None:
        task = asyncio.current_task()
        assert task is not None
        while not self._stopping.is_set():
            entry = await self._queue.get()
            if not self._may_send():
                self._release(entry)
                continue
            # Busy until the result is kept (or flushed): a stop cancels only idle workers, never one
            # in the middle of a flush, whose commit could then land and be recorded a second time.
            self._sending.add(task)
            try:
                try:
                    result = await self._attempt(session, entry)
                finally:
                    self._busy_subjects.discard(entry.subject)
                self._results.append((result, self._next_attempt(entry, result)))
                if len(self._results) >= FLUSH_BATCH and not self._stopping.is_set():
                    await self._flush()
            finally:
                self._sending.discard(task)

    async def _attempt(self, session: aiohttp.ClientSession, entry: OutboxEntry) -> AttemptResult:
        started = self._clock()
        t0 = time.monotonic()
        status: int | None = None
        error = ""
        answer = b""
        to = self.callbacks.get(entry.integration_id)
        if to is None:  # its integration left the config: kept, retried on schedule, never sent elsewhere
            return AttemptResult(
                entry.id, started, 0.0, None, f"integration {entry.integration_id} is not configured", ""
            )
        try:
            async with session.post(
                to.callback_url,
                data=entry.body,
                headers=_headers(entry.body, to),
                # Per request, so a reloaded config's timeout applies at once.
                timeout=aiohttp.ClientTimeout(total=to.timeout_s),
                allow_redirects=False,  # a redirect is a failed attempt, never followed
            ) as response:
                status = response.status
                answer = await response.content.read(EXCERPT_READ_BYTES)
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
        except TimeoutError:
            error = f"timeout after {to.timeout_s:g} s"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}"
        return AttemptResult(
            outbox_id=entry.id,
            attempted_at=started,
            duration_ms=round((time.monotonic() - t0) * 1000, 3),
            http_status=status,
            error=error,
            response_excerpt=excerpt(answer),
        )

    def _next_attempt(self, entry: OutboxEntry, result: AttemptResult) -> float | None:
        if result.ok:
            return None
        first = entry.first_attempt_at if entry.first_attempt_at is not None else result.attempted_at
        schedule = self.callbacks.get(entry.integration_id, self.merchant).retry_schedule_min
        return next_attempt_at(first, entry.attempts + 1, schedule)

    # ------------------------------------------------------------------------------------- results

    async def _flusher(self) -> None:
        while not self._stopping.is_set():
            await asyncio.sleep(FLUSH_INTERVAL_S)
            await self._flush()

    async def _flush(self) -> None:
        results, self._results = self._results, []
        if not results:
            return
        try:
            await self.store.record_attempts(results)
        except BaseException:
            self._results = results + self._results  # keep them for the next flush
            raise
        for result, next_at in results:
            entry = self._entries.pop(result.outbox_id)
            self._busy_outbox.discard(result.outbox_id)
            self._log_result(entry, result, next_at)
        self.wake.set()  # entries freed: look for more work at once

    def _log_result(self, entry: OutboxEntry, result: AttemptResult, next_at: float | None) -> None:
        kind, subject_id = entry.subject
        fields = {f"{kind}_id": subject_id, "status": str(entry.status), "attempt": entry.attempts + 1}
        if self._observe is not None:
            outcome = "delivered" if result.ok else ("failed" if next_at is not None else "gave_up")
            self._observe(outcome, entry.created_at)
        if result.ok:
            self.delivered += 1
            self.log.info("callback_delivered", http_status=result.http_status, **fields)
            return
        self.failed_attempts += 1
        if next_at is None:
            self.log.error("callback_failed_for_good", error=result.error, **fields)
        else:
            self.log.warning(
                "callback_failed",
                error=result.error,
                retry_in_s=round(max(0.0, next_at - self._clock()), 1),
                **fields,
            )


def _headers(body: bytes, to: MerchantConfig) -> dict[str, str]:
    """The signature headers of the integration's format, chosen at each attempt: the format belongs to
    the integration (and may change on reload), the stored bytes are sent unchanged either way."""
    if to.format == "coinskro":
        return coinskro.headers(body, to.secret)
    return coinspaid_headers(body, to.key, to.secret)
