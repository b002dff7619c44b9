"""One leader among several daemons on one PostgreSQL store: a lease row with a term, and fencing.

Exactly one daemon follows the chains and delivers callbacks (the leader); the others serve the merchant
API and the status port and stand by. The database is the only coordinator, and its clock (`now()`) the
only clock the lease is measured by.

Why a lease row and not a session advisory lock: a lock lives as long as its session, and a SIGSTOPped
(or swapped-out, or half-partitioned) leader keeps its TCP session open, so it would keep the lock and
stop everyone forever. A lease runs out on the database's clock whatever the holder's state.

The row (`leadership`: name, term, holder, expires_at) is taken by one compare-and-set UPDATE that moves
`term` up by one, only where the lease has lapsed (`expires_at < now()`) or is still at the term this
very instance held; it is renewed every lease_s / 3 by an UPDATE that matches the holder's term and a
live lease (no row: another took it, or it lapsed). Terms only grow, and one term belongs to one holder
for one stretch of leadership: a leader that lost its lease and takes it again gets a new term.

The leader also stops on its own clock (CLOCK_BOOTTIME, which, unlike CLOCK_MONOTONIC, counts through a
suspend): a successful renewal sent at time `t` lets it act until `t + lease_s - margin_s`, which is
before the database's expiry (`now()` there is later than `t`); from then on `leading_term()` is None
and nothing more may be sent, renewal or not. A standby takes over only after the database's expiry, so
the two never both believe they lead, as long as their clocks run at about the same rate (the margin, a
tenth of the lease, covers that and a late event loop).

Fencing makes that belief irrelevant for the store: every leader write transaction first runs `fence`,
`SELECT term ... FOR KEY SHARE` on the lease row, and rolls back (raising `Deposed`) unless the term is
its own. A take-over locks the row `FOR UPDATE` before it moves the term, which waits for every fenced
transaction in flight, and the term no longer matches after it, so a deposed leader that wakes up cannot
commit anything. The lock modes are chosen so that a renewal (an UPDATE of non-key columns: FOR NO KEY
UPDATE) conflicts with neither: a leader's renewals never queue behind its own store transactions, which
with plain FOR SHARE they would, and overlapping writes could then starve the renewals until the lease
lapsed. A leader frozen in the middle of a transaction would hold its lock for ever, so the fence also
sets that transaction's idle-in-transaction timeout to half a lease (`set_config(..., true)`, SET LOCAL):
the server ends such a session and the take-over goes on within its bound (`store_session_settings`
gives the same to a whole connection, for what a frozen process holds before its fence). HTTP sends
cannot be fenced by the database: leader work asks `still_leading()` before each one, and a send begun
just before the deadline may be repeated by the next leader with the same bytes (callbacks are
at-least-once already).

Which writes are fenced: those of leader work, and only those. `run_while_leader` starts the leader-only
components for a term in a context that carries that term (`work_term()`), inherited by every task they
start; the store's per-transaction hook (`Leadership.before_write`) fences a transaction with the term of
the work that runs it, so a straggler of a past term is refused even after this daemon is elected again,
while the merchant API's writes, which every daemon makes, pass unfenced.

`Leadership` is the asyncio side: one connection of its own (never the store's: a renewal must not wait
behind a big write), every query bounded by a timeout and by the leader's deadline, reconnection with a
backoff capped at the poll interval. `run_while_leader` runs the leader-only components for as long as a
term lasts and cancels them when it ends: they keep their state in the store, as after any restart, so the
API and status port stay up through a deposition, and systemd need not restart the process.

Wiring it into the daemon (watcher/daemon.py, only with a PostgreSQL store):
- `lead = Leadership(url, config.leadership)` and `tg.create_task(lead.run())`; cancelling `run()` gives
  the lease up, so a standby takes over within one poll.
- `supervise("leader", lambda: run_while_leader(lead, leader_work), health)`, `leader_work(term)` running
  the followers, the dispatcher, the payment sweep (what moves cursors, changes deposits or records
  deliveries) in a TaskGroup: cancelled when the term ends, started again at the next election. The
  supervisor should take `Deposed` as a quiet stop, not a crash.
- `store.before_write = lambda tx: lead.before_write(<the transaction's asyncpg connection>)`: leader work
  is fenced by the term it carries (`work_term`, a context variable), every other write (the merchant
  API on any daemon) passes. A GroupCommit batch started by an API request carries no term: leader-only
  writes must not go through one.
- The store's connections should be opened with `server_settings=store_session_settings(config)`, or a
  process frozen while holding the store's write lock blocks every daemon's writes, the new leader's too.
- The dispatcher checks `lead.still_leading()` before each HTTP send.
- Status: `StatusServer(..., leadership=lead)`, `Metrics(health, store, leadership=lead.status)`, and the
  sd_notify line `systemd_status(lead.status(), health.summary())`.
- asyncpg raises InternalClientError ("cannot switch to state ...") on the next query after the server
  ended an idle session: count it as a lost connection (`_lost` here does).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import asyncpg

from watcher.config import LeadershipConfig
from watcher.errors import Deposed
from watcher.logs import ErrorThrottle, get_logger

log = get_logger(component="leadership")

LEADER = "leader"  # the lease row's name: one leadership per database
LEADER_ROLE, STANDBY_ROLE, DISCONNECTED_ROLE = "leader", "standby", "disconnected"
_FIRST_BACKOFF_S = 0.1
_SCHEMA_LOCK = 0x6465706F73697400  # "deposit\0"

# Several statements in one simple query run as one implicit transaction, which holds the advisory lock
# to its end (concurrent CREATE TABLE IF NOT EXISTS can fail with a unique violation in pg_type). One
# round trip and no explicit transaction: nothing to roll back over a connection that stalled.
# The row exists from the start, so taking it is always an UPDATE: an INSERT ... ON CONFLICT DO UPDATE
# would lock the row (waiting for every leader transaction's fence) even when the lease is live.
SCHEMA = f"""
SELECT pg_advisory_xact_lock({_SCHEMA_LOCK});
CREATE TABLE IF NOT EXISTS leadership (
    name TEXT PRIMARY KEY,
    term BIGINT NOT NULL,
    holder TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    acquired_at TIMESTAMPTZ
);
INSERT INTO leadership (name, term, holder, expires_at) VALUES ('{LEADER}', 0, '', 'epoch')
ON CONFLICT (name) DO NOTHING;
"""
_LOOK = "SELECT term, holder, extract(epoch FROM expires_at - now())::float8 AS left_s FROM leadership "
_LOOK += "WHERE name = $1"
# Taking the lease, in one statement (no transaction left open on a stalled connection): the CTE's FOR
# UPDATE waits for the fenced transactions in flight (their KEY SHARE locks) and then re-checks its
# condition on the newest version of the row (READ COMMITTED); only then does the term move on. A
# compare-and-set on the term read just before, so of two standbys only one wins.
_TAKE = """
WITH claim AS (
    SELECT name FROM leadership
    WHERE name = $1 AND term = $2 AND (expires_at < now() OR holder = $3)
    FOR UPDATE
)
UPDATE leadership SET term = leadership.term + 1, holder = $3,
    expires_at = now() + make_interval(secs => $4), acquired_at = now()
FROM claim WHERE leadership.name = claim.name
RETURNING leadership.term, leadership.holder,
    extract(epoch FROM leadership.expires_at - now())::float8 AS left_s
"""
# Never a lapsed lease: a renewal held up in the network and delivered after the leader gave up on it
# (and after the expiry) must not make the lease live again for a term nobody acts on.
_RENEW = """
UPDATE leadership SET expires_at = now() + make_interval(secs => $3)
WHERE name = $1 AND term = $2 AND expires_at > now()
RETURNING term, holder, extract(epoch FROM expires_at - now())::float8 AS left_s
"""
# Lapse at once so a standby need not wait out the lease; the next holder moves the term on.
_RESIGN = "UPDATE leadership SET expires_at = now() WHERE name = $1 AND term = $2"
_FENCE = "SELECT term FROM leadership WHERE name = $1 FOR KEY SHARE"
_FENCE_BOUNDED = """
SELECT term, set_config('idle_in_transaction_session_timeout', $2, true)
FROM leadership WHERE name = $1 FOR KEY SHARE
"""

# InternalClientError: a server that ends an idle session sends its FATAL message to a connection with no
# query in flight, which leaves asyncpg's protocol in an error state; the next query on it raises this
# ("cannot switch to state 12; another operation (2) is in progress"). It is a lost connection too.
# The term the running task works for as leader: set by run_while_leader for the task tree of `work(term)`
# (tasks inherit their creator's context, a store write's worker thread too), unset anywhere else.
_WORK_TERM: contextvars.ContextVar[int | None] = contextvars.ContextVar("leader_work_term", default=None)

_CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


def boot_clock() -> float:
    """Seconds on a clock that keeps counting while the machine is suspended (Linux's CLOCK_BOOTTIME;
    CLOCK_MONOTONIC stops then): a leader resumed after a suspend must see its lease as run out, as the
    database does."""
    return time.clock_gettime(_BOOT_CLOCK)


_BOOT_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def work_term() -> int | None:
    """The term the current task works for as leader (run_while_leader's work and the tasks it started),
    None outside leader work (the merchant API, the status port, the election itself)."""
    return _WORK_TERM.get()


def default_node_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def idle_timeout_s(config: LeadershipConfig) -> float:
    """How long a fenced transaction may sit idle (its client frozen or cut off) before the server ends
    its session: half a lease, so its lock on the lease row never holds a take-over beyond the lease."""
    return config.lease_s / 2


def store_session_settings(config: LeadershipConfig) -> dict[str, str]:
    """Server settings for the store's connections: the fence bounds its own transaction's idle time,
    but a process frozen earlier in a transaction (after taking the store's cross-process write lock,
    before its fence) would block every other daemon's writes, the new leader's included."""
    return {"idle_in_transaction_session_timeout": _millis(idle_timeout_s(config))}


def _millis(seconds: float) -> str:
    return str(max(1, int(seconds * 1000)))


async def ensure_schema(conn: Any) -> None:
    """Create the lease table and its row if missing; safe to run from several daemons at once."""
    await conn.execute(SCHEMA)


async def fence(conn: Any, term: int, *, idle_s: float | None = None, name: str = LEADER) -> None:
    """Run first inside a leader's write transaction: raise `Deposed` (the caller's transaction then rolls
    back) unless the lease is still at `term`; otherwise hold a KEY SHARE lock on the lease row to the end
    of the transaction, so no take-over commits before this transaction has (renewals do not wait).
    `idle_s`: the server ends the session if the transaction then sits idle that long (see module doc)."""
    if not conn.is_in_transaction():
        raise RuntimeError("fence outside a transaction protects nothing")
    if idle_s is None:
        current = await conn.fetchval(_FENCE, name)
    else:
        current = await conn.fetchval(_FENCE_BOUNDED, name, _millis(idle_s))
    if current != term:
        raise Deposed(term, current, "the lease was taken by another daemon")


@dataclass(frozen=True, slots=True)
class LeadershipStatus:
    """What /status, /metrics and systemd's STATUS= show of the leadership, as this daemon sees it."""

    node: str  # this daemon's name
    role: str  # leader | standby | disconnected
    term: int | None  # this daemon's term when leader, else the leader's term as last seen
    holder: str | None  # the lease's holder as last seen ('' when the lease was never taken)
    lease_expires_in_s: float | None  # negative: lapsed, nobody took it yet
    takeover_s: float
    error: str | None = None  # why disconnected

    @property
    def is_leader(self) -> bool:
        return self.role == LEADER_ROLE

    def as_json(self) -> dict[str, Any]:
        left = self.lease_expires_in_s
        return {
            "node": self.node,
            "role": self.role,
            "term": self.term,
            "holder": self.holder or None,
            "lease_expires_in_s": None if left is None else round(left, 1),
            "takeover_s": self.takeover_s,
            "error": self.error,
        }

    def line(self) -> str:
        """One line for systemd's STATUS= (no newline: that would start another assignment)."""
        if self.role == LEADER_ROLE:
            return f"leader (term {self.term})"
        if self.role == STANDBY_ROLE:
            if self.holder and self.lease_expires_in_s is not None and self.lease_expires_in_s >= 0:
                return f"standby (leader {self.holder}, term {self.term})"
            return "standby (no leader: taking over)"
        reason = " ".join((self.error or "not connected yet").splitlines())
        return f"leadership unknown: database unreachable: {reason}"

    def problem(self) -> str | None:
        """Why /readyz says not ready on account of the leadership: only when the database cannot be
        reached. A standby is ready: it serves the merchant API and the status port."""
        return None if self.role != DISCONNECTED_ROLE else self.line()


def systemd_status(status: LeadershipStatus, health_summary: str) -> str:
    """The STATUS= line of a daemon that takes part in an election: its role first; the chains' heights
    only for the leader (a standby follows nothing, its chain health says nothing)."""
    if status.is_leader:
        return f"{status.line()}; {health_summary}"
    return status.line()


@dataclass(frozen=True, slots=True)
class _Seen:
    """The lease row as last read, and when (by the node's clock)."""

    term: int
    holder: str
    left_s: float
    at: float


class Leadership:
    """Takes part in the election for the lease row `LEADER` of the database at `dsn`.

    `run()` is the election loop (put it in the daemon's task group); `leading_term()` is the term while
    this daemon may act as leader, else None; `wait_elected()` / `wait_deposed(term)` wait for a change;
    `before_write(conn)` is the store's per-transaction hook (fences leader work); `still_leading()` is
    what leader work asks before an HTTP send; `status()` is what the status port shows. `on_change`, if
    given, is called (synchronously) with the new status whenever the role changes.
    """

    def __init__(
        self,
        dsn: str,
        config: LeadershipConfig,
        *,
        on_change: Callable[[LeadershipStatus], None] | None = None,
        clock: Callable[[], float] = boot_clock,
        password: str | None = None,
    ) -> None:
        self.dsn = dsn
        self._password = password  # database.password_file's, as the store's; never shown
        self.config = config
        self.node = config.name or default_node_name()
        self._on_change = on_change
        self._clock = clock
        self._conn: Any = None
        self._term: int | None = None  # held, while _deadline has not passed
        self._last_term: int | None = None  # the last term this instance held
        self._deadline = 0.0
        self._seen: _Seen | None = None
        self._error: str | None = "not connected yet"
        self._changed = asyncio.Event()
        self._role = DISCONNECTED_ROLE
        self._throttle = ErrorThrottle(log, interval_s=60.0)

    # ------------------------------------------------------------------------------------ the view

    def leading_term(self) -> int | None:
        """The term this daemon leads in, or None: checked against the deadline now, not when the loop
        last ran, so a caller about to send something gets the truth even from a late event loop."""
        if self._term is not None and self._clock() < self._deadline:
            return self._term
        return None

    @property
    def role(self) -> str:
        if self.leading_term() is not None:
            return LEADER_ROLE
        return DISCONNECTED_ROLE if self._conn is None else STANDBY_ROLE

    def status(self) -> LeadershipStatus:
        term = self.leading_term()
        seen = self._seen
        left = None if seen is None else seen.left_s - (self._clock() - seen.at)
        return LeadershipStatus(
            node=self.node,
            role=self.role,
            term=term if term is not None else (None if seen is None else seen.term),
            holder=None if seen is None else seen.holder,
            lease_expires_in_s=left,
            takeover_s=self.config.takeover_s,
            error=self._error if self.role == DISCONNECTED_ROLE else None,
        )

    async def wait_elected(self) -> int:
        """Wait until this daemon leads; its term."""
        while (term := self.leading_term()) is None:
            await self._wait_change(None)
        return term

    async def wait_deposed(self, term: int) -> None:
        """Wait until `term` is over for this daemon (taken, lapsed, resigned or fenced off)."""
        while self.leading_term() == term:
            await self._wait_change(self._deadline - self._clock())

    def still_leading(self) -> bool:
        """For leader work about to do what the database cannot fence (send an HTTP callback): whether
        the term it was started for is still this daemon's, by its own clock, now."""
        term = work_term()
        return term is not None and self.leading_term() == term

    async def fence(self, conn: Any, term: int | None = None) -> None:
        """`fence` on `conn` (in a transaction) with `term`, by default the one this daemon leads in;
        refused at once when that is not (or no longer) its term. A refusal from the database deposes
        this daemon: the lease is not its own any more."""
        held = self.leading_term()
        term = held if term is None else term
        if term is None or held != term:
            raise Deposed(term, held, "that term is over for this daemon (lapsed, taken or resigned)")
        try:
            await fence(conn, term, idle_s=idle_timeout_s(self.config))
        except Deposed:
            self._depose(term, "fenced")
            raise

    async def before_write(self, conn: Any) -> None:
        """The store's hook, run first in every write transaction: a transaction of leader work is
        fenced with the term that work was started for, so a straggler of a past term is refused even
        once this daemon leads again; any other write (the merchant API, on every daemon) is not the
        leader's to guard and goes through."""
        term = work_term()
        if term is not None:
            await self.fence(conn, term)

    # ------------------------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """The election loop, until cancelled; on the way out a leader resigns (its lease lapses at
        once, so a standby takes over without waiting it out)."""
        backoff = _FIRST_BACKOFF_S
        try:
            while True:
                try:
                    await self._step()
                except _CONNECTION_ERRORS as exc:
                    self._lost(exc)
                    await self._pause(backoff)
                    backoff = min(backoff * 2, self.config.poll_interval_s)
                    continue
                backoff = _FIRST_BACKOFF_S
                self._throttle.recovered("leadership_connection_restored", node=self.node)
                await self._pause(self.config.renew_interval_s if self._term else self.config.poll_interval_s)
        finally:
            await self._shutdown()

    async def resign(self) -> None:
        """Stop leading now and let the lease lapse in the database (best effort: if the database
        cannot be reached, the lease runs out by itself)."""
        term = self._term
        if term is None:
            return
        self._depose(term, "resigned")
        if self._conn is not None:
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await self._query(self._conn.execute(_RESIGN, LEADER, term))

    async def _step(self) -> None:
        if self._conn is None:
            await self._connect()
        if self._term is not None:
            await self._renew(self._term)
        else:
            await self._try_take()

    async def _connect(self) -> None:
        settings = {
            "application_name": f"deposit-watcher leadership {self.node}"[:63],
            # Server-side bounds as well: a client-side timeout alone would leave a query waiting on a
            # row lock in the server after this side has given up on it.
            "statement_timeout": str(int(self.config.query_timeout_s * 1000)),
            # Shorter than the statement's: a take-over held off by a fenced transaction says so.
            "lock_timeout": str(int(self.config.query_timeout_s * 500)),
        }
        timeout = max(0.01, self._timeout())  # asyncpg refuses a zero timeout; _bounded keeps the deadline
        conn = await self._bounded(
            asyncpg.connect(self.dsn, password=self._password, timeout=timeout, server_settings=settings)
        )
        try:
            await self._bounded(ensure_schema(conn))
        except BaseException:
            conn.terminate()
            raise
        self._conn, self._error = conn, None
        self._notify()

    async def _try_take(self) -> None:
        row = await self._query(self._conn.fetchrow(_LOOK, LEADER))
        if row is None:  # the row was deleted by hand: put it back
            await self._query(ensure_schema(self._conn))
            return
        self._saw(row)
        # This instance may take back at once a live lease still at the term it held itself (it lapsed
        # on its own clock, say across a database restart); anyone else waits for the lease to run out,
        # even a restarted daemon of the same configured name, whose predecessor may still be acting.
        own = row["holder"] == self.node and row["term"] == self._last_term
        if row["left_s"] >= 0 and not own:
            return
        sent = self._clock()
        try:
            taken = await self._query(
                self._conn.fetchrow(_TAKE, LEADER, row["term"], self.node, self.config.lease_s)
            )
        except (asyncpg.LockNotAvailableError, asyncpg.QueryCanceledError):
            # A transaction fenced with the lapsed term is still open (lock_timeout): its holder may yet
            # commit it, before this take-over. The next poll tries again; the connection is fine.
            log.info("leadership_take_waits", node=self.node, term=row["term"])
            return
        if taken is None:
            return  # another standby was quicker, or the leader renewed in between
        self._saw(taken)
        self._term, self._deadline = int(taken["term"]), sent + self.config.lease_s - self.config.margin_s
        self._last_term = self._term
        previous = None if row["holder"] == "" else row["holder"]
        log.info("leadership_taken", node=self.node, term=self._term, previous=previous)
        self._notify()

    async def _renew(self, term: int) -> None:
        sent = self._clock()
        renewed = await self._query(self._conn.fetchrow(_RENEW, LEADER, term, self.config.lease_s))
        self._check_deadline()  # answered just after the deadline: the term is over all the same
        if self._term != term:
            return
        if renewed is None:
            self._depose(term, "taken or lapsed")
            return
        self._saw(renewed)
        self._deadline = sent + self.config.lease_s - self.config.margin_s

    # ------------------------------------------------------------------------------------ internals

    def _timeout(self) -> float:
        """A query's time limit: the query timeout, and for a leader no later than its deadline."""
        if self._term is None:
            return self.config.query_timeout_s
        return max(0.0, min(self.config.query_timeout_s, self._deadline - self._clock()))

    async def _bounded(self, awaitable: Awaitable[Any]) -> Any:
        try:
            return await asyncio.wait_for(awaitable, self._timeout())
        except TimeoutError:
            self._check_deadline()
            raise

    async def _query(self, awaitable: Awaitable[Any]) -> Any:
        """A query on the connection; on a failure other than the server's answer the connection is
        dropped (a timed-out query may still be in the server, and asyncpg's state after a cancel is not
        worth trusting)."""
        try:
            return await self._bounded(awaitable)
        except asyncpg.PostgresError:
            raise
        except BaseException:
            self._drop()
            raise

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at a leader's deadline to stop leading on time."""
        if self._term is not None:
            seconds = min(seconds, max(0.0, self._deadline - self._clock()))
        await asyncio.sleep(seconds)
        self._check_deadline()

    def _check_deadline(self) -> None:
        if self._term is not None and self._clock() >= self._deadline:
            self._depose(self._term, "lapsed")

    def _saw(self, row: Any) -> None:
        self._seen = _Seen(int(row["term"]), str(row["holder"]), float(row["left_s"]), self._clock())

    def _depose(self, term: int, reason: str) -> None:
        if self._term != term:
            return
        self._term = None
        # Resigning is a clean stop; any other end of a term is worth an operator's look.
        (log.info if reason == "resigned" else log.warning)(
            "leadership_lost", node=self.node, term=term, reason=reason
        )
        self._notify()

    def _lost(self, exc: BaseException) -> None:
        self._drop()
        text = f"{type(exc).__name__}: {exc}" if str(exc) else f"{type(exc).__name__} (no answer in time)"
        self._error = " ".join(text.splitlines())
        self._check_deadline()
        self._throttle.failed("leadership_connection_failed", node=self.node, error=self._error)

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
            self._notify()

    def _notify(self) -> None:
        role = self.role
        changed, self._role = role != self._role, role
        self._changed.set()
        self._changed = asyncio.Event()
        if changed and self._on_change is not None:
            self._on_change(self.status())

    async def _wait_change(self, within_s: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), within_s)

    async def _shutdown(self) -> None:
        with contextlib.suppress(*_CONNECTION_ERRORS):
            await self.resign()
        if self._conn is not None:
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await asyncio.wait_for(self._conn.close(), self.config.query_timeout_s)
            self._drop()


async def run_while_leader(leadership: Leadership, work: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """Run `work(term)` for each term this daemon leads, cancelled as the term ends; forever. `work` and
    every task it starts see `work_term()` == term, which `Leadership.before_write` fences their writes
    with. An error raised by `work` is raised here (the daemon's supervisor restarts it); `work`
    returning early leaves the rest of the term idle."""
    while True:
        term = await leadership.wait_elected()
        context = contextvars.copy_context()
        context.run(_WORK_TERM.set, term)
        job = asyncio.create_task(work(term), name=f"leader:{term}", context=context)
        ended = asyncio.create_task(leadership.wait_deposed(term))
        try:
            await asyncio.wait({job, ended}, return_when=asyncio.FIRST_COMPLETED)
            if job.done() and job.exception() is not None:
                raise job.exception()  # type: ignore[misc]
            await ended
        finally:
            for task in (job, ended):
                task.cancel()
            await asyncio.gather(job, ended, return_exceptions=True)
        log.info("leader_work_stopped", node=leadership.node, term=term)
