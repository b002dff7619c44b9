"""The PostgreSQL store (asyncpg): `Store`'s interface over a database that several processes share.

Selected by `database.url: postgresql://...` (Store.open dispatches on the URL). The queries are
watcher/store.py's, translated mechanically (watcher/pg_dialect.py); what is not mechanical is a method of
its own here (the schema version, the deposit id counter, the import's staging, the watch-set load).

- Writes: one connection, used only under an asyncio lock, so transactions stay serial within the process
  as the ledger assumes. Each begins with a transaction-scoped advisory lock (pg_schema.WRITE_LOCK_KEY):
  writes of several processes (the daemon, the CLI) run one at a time, as SQLite's BEGIN IMMEDIATE makes
  them, so statements such as "largest id + 1" mean the same on both backends. BEGIN and the lock are
  one round trip; a batch of rows is one pipelined executemany, whatever its size.
- A block batch (the follower's load, plan, block refs and cursor) is three round trips whatever its
  size: BEGIN and the lock; the ledger's load as one statement; the plan's writes, the refs and the
  cursor deferred and sent with the COMMIT as one call of a server-side function (PgTransaction.commit,
  pg_schema.APPLY_FUNCTION, created again at every open).
- `PgStore.before_write`, when set, runs first thing in every write transaction, after the advisory lock
  (`_begin`): the place for a check that must hold for the transaction to commit (a leader's term).
  `PgStore.begin_check` is the same without a round trip of its own: its statements go with BEGIN and
  the lock, and the error they raise when the check fails becomes the caller's (BeginCheck).
- `write(work)`: `work` is synchronous (Store.write's contract); it runs in a worker thread, and its
  transaction's statements are sent to the event loop, to the writer connection (PgTransaction.run).
- Reads: a small pool; READ COMMITTED sees committed data only, like SQLite's WAL readers.
- Errors of the connection or the server come out as StoreError, with the URL shown without secrets;
  those that stop writes (connection lost, disk full, read-only) set `write_error` for /readyz.
- Every statement has `timeout_s` (config `database.timeout_s`) to be answered: a network that drops
  packets silently closes nothing, and would hold the writer (and every write after it) for ever. The
  writer connection is then dropped (the server rolls its transaction back) and made again by the next
  transaction. Loading every address and an import's move are bounded by LONG_TIMEOUT_S instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Iterable,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import orjson

from chains.base import BlockRef, KeyIndex
from chains.watchset import COMPACT_ABOVE, IndexBuilder
from watcher.database_url import DATABASE_TIMEOUT_S, safe_database_url
from watcher.errors import StoreError
from watcher.model import DepositKey, LedgerView, Payment, Plan, QueuedCallback, TrackedDeposit
from watcher.pg_dialect import translate
from watcher.pg_schema import APPLY_FUNCTION, PG_MIGRATIONS, VERSION_TABLE, WRITE_LOCK_KEY
from watcher.store import (
    _DEPOSIT_FROM,
    _IMPORT_NEW,
    _PAYMENT_COLUMNS,
    _PAYMENT_FROM,
    _SET_ADDRESS,
    _TRACKED_COLUMNS,
    ImportBatch,
    Store,
    StoreTransaction,
    ThreadTransaction,
    _payment,
    _tracked,
)
from watcher.watchload import SPLIT_ABOVE

T = TypeVar("T")

# Read connections: the dispatcher, the status server and the API read at once; more wait their turn.
POOL_SIZE = 4
# Statements that read or move every address (10,000,000 of them, see watchload) may take minutes.
LONG_TIMEOUT_S = 3600.0
# A close says goodbye to the server and waits for it: bounded, then the sockets are simply dropped (a
# network that swallows packets must not keep a stopping daemon from exiting).
CLOSE_TIMEOUT_S = 5.0
# Tables whose single-row INSERT reports the new row's id (what SQLite's cursor.lastrowid gives).
_ID_TABLES = frozenset({"addresses", "deposits", "outbox", "attempts", "payments", "events"})
# SQLSTATE classes after which writes cannot go on until the server or its disk is fixed: connection
# exceptions, insufficient resources (disk full), operator intervention (shutdown), system errors.
_WRITE_STOPPING = ("08", "53", "57", "58")
_READ_ONLY = "25006"
# The tables the deferred writes change (PgTransaction.apply, add_blocks, set_cursor): a statement whose
# text names one of them runs after those writes (`_flush`); any other (the payments of a plan's
# addresses, say) runs at once, as it reads and writes nothing they touch.
_DEFERRED_TABLES = re.compile(r"\b(deposits|outbox|events|blocks|chains)", re.I)
# What the payments `PgTransaction.load` read depend on: a statement that names one forgets them.
_PAYMENT_TABLES = re.compile(r"\b(payments|addresses)\b", re.I)

BeforeWrite = Callable[["PgTransaction"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class BeginCheck:
    """A condition a write transaction must hold to commit (a leader's term: the fence), checked in
    BEGIN's round trip. `statements()` gives SQL without parameters (sent as a simple query: what it
    inlines is its owner's to quote) that raises an error of SQLSTATE `sqlstate` when the check fails
    (and may raise itself, before anything is sent, to refuse at once); `refused` turns that error into
    the one the caller gets, instead of a StoreError. Locks it takes are held to the transaction's end."""

    statements: Callable[[], str]
    sqlstate: str
    refused: Callable[[asyncpg.PostgresError], BaseException]


@dataclass(frozen=True, slots=True)
class PgCursor:
    """What a statement's cursor is read for (store._Cursor): the id of the row an INSERT added."""

    lastrowid: int | None


# A lost connection: the socket's errors, asyncpg's own, and its InternalClientError ("cannot switch to
# state ..."), raised by the next query after the server ended the session (a restart, a terminated
# backend) while the connection was idle.
_CONNECTION_LOST = (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError)


class PgTransaction(ThreadTransaction):
    """Statements inside one write transaction on the writer connection. Async methods run on the event
    loop (Store.transaction); in Store.write, `work` runs in a worker thread and the synchronous methods
    (`run`, the takes' statements) hand each statement to the loop and wait for it."""

    def __init__(
        self, conn: asyncpg.Connection, loop: asyncio.AbstractEventLoop, timeout_s: float = DATABASE_TIMEOUT_S
    ) -> None:
        self._pg = conn
        self._loop = loop
        self.changes = 0  # rows written so far (SQLite's total_changes, for this transaction)
        # Writes made but not yet sent (pg_schema.APPLY_FUNCTION's operations), with their row count.
        self._deferred: list[dict[str, Any]] = []
        self._deferred_rows = 0
        # The payments `load` read, with the addresses it read them for; forgotten by any statement that
        # names payments or addresses.
        self._loaded_payments: tuple[frozenset[int], list[Payment]] | None = None
        self.timeout_s = timeout_s  # for each statement (see the module docstring)

    # ------------------------------------------------------------------------------ statements

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> PgCursor:
        statement = translate(sql)
        args = statement.args(params)
        text = statement.sql_for(args)
        wants_id = _inserts_one_row_with_id(text)
        if wants_id:
            text += " RETURNING id"
        rows = await self._run(text, args)
        return PgCursor(int(rows[-1][0]) if wants_id and rows else None)

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        listed = [tuple(r) for r in rows]
        if not listed:
            return
        statement = translate(sql)
        batch = [statement.args(r) for r in listed]
        text = statement.sql_for(batch[0])
        await self._flush_for(text)
        self._forget_payments(text)
        # asyncpg pipelines the rows: one round trip for the batch, not one a row.
        await self._pg.executemany(text, batch, timeout=self.timeout_s)
        self.changes += len(batch)

    async def _all(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        statement = translate(sql)
        args = statement.args(params)
        return [tuple(r) for r in await self._run(statement.sql_for(args), args)]

    async def _run(self, text: str, args: list[Any]) -> list[Any]:
        await self._flush_for(text)
        self._forget_payments(text)
        # Connection._execute is asyncpg's one call that returns both the rows and the command status
        # (the count of rows written); public fetch() drops the status, execute() the rows.
        rows, status, _ = await self._pg._execute(text, args, 0, self.timeout_s, return_status=True)
        self.changes += _rows_written(status)
        return list(rows)

    def _total_changes(self) -> int:
        return self.changes + self._deferred_rows

    # ------------------------------------------------------------------------ the block batch
    #
    # A block batch (Follower._commit_blocks) is BEGIN and the lock, `load`, then the plan's writes, the
    # block refs and the cursor: here the load is one statement, and the writes are deferred and sent with
    # the COMMIT as one statement (pg_schema.APPLY_FUNCTION): three round trips whatever the number of
    # blocks and deposits. A statement that touches what a deferred write changes sends them first
    # (`_flush_for`), so every statement sees the transaction's writes, in the order they were made.

    async def load(
        self, chain: str, keys: Iterable[DepositKey] = (), address_ids: Iterable[int] = ()
    ) -> LedgerView:
        """StoreTransaction.load in one statement (one row of arrays). It also reads the payments of every
        address the plan may touch (the addresses asked for, and those of the deposits loaded: a plan
        changes no other deposit), which the payment tracker asks for after the plan is applied
        (`payments_for_addresses`): that read then costs no round trip."""
        wanted = set(keys)
        txids = sorted({k[0] for k in wanted})
        ids = sorted(set(address_ids))
        [(last_id, open_rows, txid_rows, address_rows, payment_rows)] = await self._all(
            _LOAD, (chain, txids, ids)
        )
        matched = {t.key: t for t in map(_tracked, txid_rows) if t.key in wanted}
        covered = {*ids, *(r[3] for r in open_rows), *(r[3] for r in txid_rows)}
        self._loaded_payments = (frozenset(covered), [_payment(r) for r in payment_rows])
        return LedgerView(
            tuple(map(_tracked, open_rows)),
            matched,
            {r[0]: (r[1], r[2]) for r in address_rows},
            int(last_id) + 1,
        )

    async def payments_for_addresses(self, address_ids: Iterable[int]) -> list[Payment]:
        """StoreTransaction.payments_for_addresses, from what `load` read when it covers these addresses
        and no statement since touched payments or addresses (`_run` forgets it then)."""
        wanted = set(address_ids)
        if self._loaded_payments is not None and wanted <= self._loaded_payments[0]:
            return [p for p in self._loaded_payments[1] if p.address_id in wanted]
        return await super().payments_for_addresses(wanted)

    async def apply(self, plan: Plan, no_callbacks: Collection[str] = ()) -> None:
        """StoreTransaction.apply, deferred (sent with the next statement that needs it, or the COMMIT)."""
        inserts = [_deposit_row(t) for t in plan.inserts]
        if inserts:
            top = max(t.deposit.id for t in plan.inserts)
            self._defer({"op": "insert_deposits", "rows": inserts, "max_id": top}, len(inserts))
        # Whole rows: when one deposit came twice, the last is the one sequential UPDATEs would leave.
        updates = list({t.deposit.id: _deposit_row(t) for t in plan.updates}.values())
        if updates:
            self._defer({"op": "update_deposits", "rows": updates}, len(updates))
        if plan.callbacks:
            self._defer(_queue_op(plan.callbacks, no_callbacks), 2 * len(plan.callbacks))

    async def add_blocks(self, chain: str, refs: Sequence[BlockRef], keep: int) -> None:
        """StoreTransaction.add_blocks, deferred."""
        if not refs:
            return
        rows = {r.height: {"height": r.height, "block_hash": r.block_hash, "parent_hash": r.parent_hash}
                for r in refs}  # fmt: skip
        self._defer(
            {"op": "blocks", "chain": chain, "rows": list(rows.values()), "below": refs[-1].height - keep},
            len(rows),
        )

    async def set_cursor(self, chain: str, ref: BlockRef) -> None:
        """StoreTransaction.set_cursor, deferred."""
        op = {"op": "cursor", "chain": chain, "height": ref.height, "block_hash": ref.block_hash}
        self._defer({**op, "at": time.time()}, 1)

    def _forget_payments(self, text: str) -> None:
        if self._loaded_payments is not None and _PAYMENT_TABLES.search(text):
            self._loaded_payments = None

    def _defer(self, op: dict[str, Any], rows: int) -> None:
        self._deferred.append(op)
        self._deferred_rows += rows

    async def _flush_for(self, text: str) -> None:
        """The deferred writes sent first when the statement `text` may touch what they change."""
        if self._deferred and _DEFERRED_TABLES.search(text):
            await self._flush()

    async def _flush(self) -> None:
        ops, self._deferred, self._deferred_rows = self._deferred, [], 0
        if ops:
            document = orjson.dumps(ops).decode()
            self.changes += int(await self._pg.fetchval("SELECT dw_apply($1::jsonb)", document))

    async def commit(self) -> None:
        """COMMIT, with the deferred writes in the same round trip: one simple query holding them as one
        dollar-quoted JSON literal (a parameter would need a round trip of its own: asyncpg sends one
        statement per round trip, and COMMIT cannot run inside a parameterised one)."""
        if not self._deferred:
            await self._pg.execute("COMMIT")
            return
        document = orjson.dumps(self._deferred).decode()  # floats: the shortest text of the same double
        self.changes += self._deferred_rows
        self._deferred, self._deferred_rows = [], 0
        quote = _dollar_quote(document)
        await self._pg.execute(f"SELECT dw_apply({quote}{document}{quote}::jsonb); COMMIT")

    # ------------------------------------------------------------------------ the thread's bridge

    def run(self, step: Coroutine[Any, Any, T]) -> T:  # type: ignore[override]
        """The result of a StoreTransaction method, from `write`'s worker thread: run on the event loop."""
        if _on_loop(self._loop):
            step.close()
            raise RuntimeError("PgTransaction.run is for Store.write's thread, not the event loop")
        return asyncio.run_coroutine_threadsafe(step, self._loop).result()

    def _sync_all(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        return self.run(self._all(sql, params))

    def _executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        self.run(self.executemany(sql, rows))

    def reactivate(self, address_id: int, foreign_id: str, scan_from: int | None) -> None:
        self.run(self.execute(_SET_ADDRESS, (foreign_id, 1, scan_from, address_id)))

    # --------------------------------------------------------------------- PostgreSQL's own versions

    async def schema_version(self) -> int:
        rows = await self._pg.fetch("SELECT version FROM schema_version")
        return int(rows[0][0]) if rows else 0

    async def set_schema_version(self, version: int) -> None:
        await self._pg.execute("DELETE FROM schema_version")
        await self._pg.execute("INSERT INTO schema_version (version) VALUES ($1)", version)

    async def foreign_key_problems(self) -> str:
        """Nothing: PostgreSQL checks every reference as it is written, migrations included."""
        return ""

    async def next_deposit_id(self) -> int:
        """The deposits sequence (raised by explicit ids, pg_schema's autoincrement_id) or the largest id,
        + 1: ids are never given twice."""
        rows = await self._all(
            "SELECT greatest(coalesce(pg_sequence_last_value('deposits_id_seq'), 0),"
            " coalesce((SELECT max(id) FROM deposits), 0))"
        )
        return int(rows[0][0]) + 1

    async def import_staged(
        self, integration_id: str, now: float, id_offset: int, count: int
    ) -> tuple[int, int]:
        """StoreTransaction.import_staged: an INSERT that fails on a known address is undone alone (a
        savepoint: PostgreSQL would abort the whole transaction), then the rows are checked."""
        await self._flush()
        first_id = (await self._all("SELECT max(coalesce(max(id), 0), ?) FROM addresses", (id_offset,)))[0][0]
        self.timeout_s = max(self.timeout_s, LONG_TIMEOUT_S)  # the move of every staged row
        await self._pg.execute("SAVEPOINT import_new")
        try:
            await self.execute(_IMPORT_NEW, (first_id, integration_id, now))
        except asyncpg.UniqueViolationError:
            await self._pg.execute("ROLLBACK TO SAVEPOINT import_new")
            return await self._import_known(integration_id, now, first_id, count)
        await self._pg.execute("RELEASE SAVEPOINT import_new")
        return count, 0


class PgStore(Store):
    """Open with `await Store.open("postgresql://...")`; close with `await store.close()`."""

    def __init__(
        self,
        url: str,
        password: str | None,
        writer: asyncpg.Connection,
        pool: asyncpg.Pool,
        timeout_s: float = DATABASE_TIMEOUT_S,
    ) -> None:
        # Not Store.__init__: no SQLite connections. `path` names the database in messages, without secrets.
        self.path = safe_database_url(url)
        self._url = url
        self._password = password
        self._pg_writer: asyncpg.Connection = writer
        self._pool = pool
        self._timeout_s = timeout_s
        self._lock = asyncio.Lock()
        self.write_error: str | None = None
        self.id_offset = 0
        # Runs first thing in every write transaction (see the module docstring); None: nothing.
        self.before_write: BeforeWrite | None = None
        # Checked in BEGIN's own round trip (see BeginCheck); None: nothing.
        self.begin_check: BeginCheck | None = None

    # ----------------------------------------------------------------------------------- lifecycle

    @classmethod
    async def open(
        cls,
        path: str,
        *,
        exclusive: bool = False,
        id_offset: int = 0,
        password: str | None = None,
        timeout_s: float | None = None,
    ) -> Store:
        """Connect, create or migrate the schema, apply the id offset. `exclusive` takes no lock: several
        daemons may open one database (leadership is decided elsewhere). `timeout_s`: see the module
        docstring (None: DATABASE_TIMEOUT_S)."""
        shown = safe_database_url(path)
        timeout_s = DATABASE_TIMEOUT_S if timeout_s is None else timeout_s
        try:
            writer = await asyncpg.connect(
                path, password=password, timeout=timeout_s, command_timeout=timeout_s
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
            raise StoreError(f"{shown}: cannot connect: {_reason(e)}") from None
        try:
            # min_size 0: connections are made when a read needs one, never by the pool in the background
            # (whose failures, while the server is down, asyncpg prints as unstructured tracebacks).
            pool = await asyncpg.create_pool(
                path,
                password=password,
                min_size=0,
                max_size=POOL_SIZE,
                timeout=timeout_s,
                command_timeout=timeout_s,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
            await writer.close()
            raise StoreError(f"{shown}: cannot connect: {_reason(e)}") from None
        store = cls(path, password, writer, pool, timeout_s)
        try:
            await store._migrate()
            await store._apply_id_offset(id_offset)
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        with contextlib.suppress(OSError, asyncpg.InterfaceError, asyncpg.PostgresError, TimeoutError):
            await asyncio.wait_for(self._pool.close(), CLOSE_TIMEOUT_S)
        self._pool.terminate()  # what a bounded close left open, if anything
        with contextlib.suppress(OSError, asyncpg.InterfaceError, asyncpg.PostgresError, TimeoutError):
            await self._pg_writer.close(timeout=CLOSE_TIMEOUT_S)
        self._pg_writer.terminate()

    async def _migrate(self) -> None:
        async with self._lock, self._transaction() as tx:  # one process migrates, the others wait
            await self._pg_writer.execute(VERSION_TABLE)
            version = await tx.schema_version()
            if version > len(PG_MIGRATIONS):
                raise StoreError(
                    f"{self.path}: schema version {version} is newer than this program knows "
                    f"({len(PG_MIGRATIONS)}); upgrade deposit-watcher"
                )
            for number, script in enumerate(PG_MIGRATIONS[version:], start=version + 1):
                # no parameters: one round trip, many statements; a migration may rewrite a large table
                await self._pg_writer.execute(script, timeout=max(self._timeout_s, LONG_TIMEOUT_S))
                await tx.set_schema_version(number)
            await self._pg_writer.execute(APPLY_FUNCTION)  # this program's own, whatever the last one's

    async def _apply_id_offset(self, offset: int) -> None:
        """Store._apply_id_offset: the deposits sequence raised to `offset`, never lowered; addresses get
        offset + 1 explicitly while every id is below it (the same statements as SQLite)."""
        self.id_offset = offset
        if offset <= 0:
            return
        async with self.transaction():
            await self._pg_writer.execute(
                "SELECT setval('deposits_id_seq', $1)"
                " WHERE coalesce(pg_sequence_last_value('deposits_id_seq'), 0) < $1",
                offset,
            )

    async def _writer_conn(self) -> asyncpg.Connection:
        """The writer connection, connected again if the last one was lost (a server restart)."""
        if self._pg_writer.is_closed():
            try:
                self._pg_writer = await asyncpg.connect(
                    self._url,
                    password=self._password,
                    timeout=self._timeout_s,
                    command_timeout=self._timeout_s,
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                self.write_error = self._no_answer() if isinstance(e, TimeoutError) else _reason(e)
                raise StoreError(f"{self.path}: cannot connect: {self.write_error}") from None
        return self._pg_writer

    # ------------------------------------------------------------------------------- transactions

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[StoreTransaction]:
        async with self._lock, self._transaction() as tx:
            yield tx

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[PgTransaction]:
        """One write transaction on the writer connection; the caller holds `_lock`."""
        conn = await self._writer_conn()
        tx = PgTransaction(conn, asyncio.get_running_loop(), self._timeout_s)
        try:
            await self._begin(tx)
            yield tx
            await tx.commit()
        except BaseException as exc:
            if isinstance(exc, TimeoutError):
                conn.terminate()  # no answer: a ROLLBACK would wait as long; the server rolls back alone
            if not conn.is_closed():
                try:
                    await conn.execute("ROLLBACK")
                except (*_CONNECTION_LOST, asyncpg.PostgresError):
                    conn.terminate()  # in a state nobody knows: the next transaction connects afresh
            failed = self._store_error(exc)
            if failed is exc:
                raise
            raise failed from exc
        if tx.changes:  # only a transaction that wrote proves the store writes again
            self.write_error = None

    async def _begin(self, tx: PgTransaction) -> None:
        """BEGIN, the cross-process write lock and the begin check in one round trip, then the
        per-transaction hook."""
        check = "" if self.begin_check is None else f"; {self.begin_check.statements()}"
        await tx._pg.execute(f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY}){check}")
        if self.before_write is not None:
            await self.before_write(tx)

    async def write(self, work: Callable[[ThreadTransaction], T]) -> T:
        """Store.write: `work` in one transaction, run in a worker thread whose statements go to the loop.
        A thread cannot be cancelled: a cancelled caller still waits, holding the lock, until the
        transaction has ended (committed or rolled back), so the next one never overlaps it."""
        async with self._lock:
            task = asyncio.ensure_future(self._write(work))
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                await asyncio.wait([task])
                if not task.cancelled():
                    task.exception()  # retrieved: the caller has gone, the transaction ended either way
                raise

    async def _write(self, work: Callable[[ThreadTransaction], T]) -> T:
        async with self._transaction() as tx:
            return await asyncio.to_thread(work, tx)

    def _store_error(self, exc: BaseException) -> BaseException:
        """The error a failed transaction raises: the server's and the connection's as StoreError (and,
        for those that stop writes, recorded in `write_error`); the caller's own errors unchanged."""
        if isinstance(exc, asyncpg.PostgresError):
            state = str(getattr(exc, "sqlstate", "") or "")
            if self.begin_check is not None and state == self.begin_check.sqlstate:
                return self.begin_check.refused(exc)
            if state[:2] in _WRITE_STOPPING or state == _READ_ONLY:
                self.write_error = _reason(exc)
            return StoreError(f"{self.path}: {_reason(exc)}")
        if isinstance(exc, TimeoutError):  # an OSError too: first
            self.write_error = self._no_answer()
            return StoreError(f"{self.path}: {self.write_error}")
        if isinstance(exc, _CONNECTION_LOST):
            self.write_error = _reason(exc)
            return StoreError(f"{self.path}: {_reason(exc)}")
        return exc

    def _no_answer(self) -> str:
        return f"no answer from the server within {self._timeout_s:g} s (database.timeout_s)"

    # ------------------------------------------------------------------------- SQLite-only matters

    async def checkpoint(self) -> None:
        """Nothing: PostgreSQL checkpoints by itself (there is no WAL file of ours to copy back)."""

    async def probe_write(self) -> None:
        """Store.probe_write: the schema version's row updated to itself (one row written: it counts)."""
        async with self.transaction() as tx:
            await tx.execute("UPDATE schema_version SET version = version")

    async def backup(self, destination: str) -> None:
        raise StoreError(f"{self.path}: back a PostgreSQL store up with pg_dump, not `backup`")

    async def integrity_check(self) -> str:
        """'ok' when the schema is at this program's version (PostgreSQL checks references and constraints
        as rows are written; a page-level check is the server's, amcheck)."""
        async with self._pool.acquire() as conn:
            version = await conn.fetchval("SELECT version FROM schema_version")
        return (
            "ok" if version == len(PG_MIGRATIONS) else f"schema version {version}, not {len(PG_MIGRATIONS)}"
        )

    # ----------------------------------------------------------------------------------- reads

    async def _all(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        statement = translate(sql)
        args = statement.args(params)
        try:
            rows = await self._pool.fetch(statement.sql_for(args), *args)
        except TimeoutError as e:  # an OSError too: first
            raise StoreError(f"{self.path}: {self._no_answer()}") from e
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            raise StoreError(f"{self.path}: {_reason(e)}") from e
        return [tuple(r) for r in rows]

    async def watch_sets(
        self, chains: Collection[str], compact_above: int = COMPACT_ABOVE, split_above: int = SPLIT_ABOVE
    ) -> dict[str, dict[str, KeyIndex]]:
        """Store.watch_sets in this process, from one query (no helper process: the server does the
        reading; no 10,000,000-address target here yet). As from SQLite: an index per (chain, currency)
        with active addresses, a dict up to `compact_above` keys, else CompactKeys."""
        found: dict[str, dict[str, KeyIndex]] = {chain: {} for chain in chains}
        if not chains:
            return found
        try:
            rows = await self._pool.fetch(
                "SELECT chain, currency, watch_key, id FROM addresses WHERE active = 1 AND chain = ANY($1)"
                " ORDER BY id",
                list(chains),
                timeout=max(self._timeout_s, LONG_TIMEOUT_S),
            )
        except TimeoutError as e:  # an OSError too: first
            raise StoreError(f"{self.path}: no answer within {LONG_TIMEOUT_S:g} s") from e
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            raise StoreError(f"{self.path}: {_reason(e)}") from e
        builders: dict[tuple[str, str], IndexBuilder] = {}
        for chain, currency, key, address_id in rows:
            builder = builders.get((chain, currency))
            if builder is None:
                builder = builders[(chain, currency)] = IndexBuilder(compact_above)
            builder.add(bytes(key), address_id)
        for (chain, currency), builder in builders.items():
            found[chain][currency] = builder.finish()
        return found

    # ----------------------------------------------------------------------------------- import

    async def import_batches(
        self, integration_id: str, batches: AsyncIterable[ImportBatch], now: float
    ) -> tuple[int, int]:
        """Store.import_batches: the rows staged in a temporary table of the writer connection (COPY, a
        batch at a time, outside any transaction), then moved in one transaction."""
        async with self._lock:
            conn = await self._writer_conn()
            await conn.execute("DROP TABLE IF EXISTS pg_temp.import_rows")
            await conn.execute(
                "CREATE TEMP TABLE import_rows (n BIGINT PRIMARY KEY, chain TEXT, currency TEXT,"
                " watch_key BYTEA, address TEXT, foreign_id TEXT)"
            )
        count = 0
        try:
            async for batch in batches:
                async with self._lock:
                    await (await self._writer_conn()).copy_records_to_table(
                        "import_rows",
                        records=_unpacked(count, batch),
                        schema_name="pg_temp",
                        timeout=max(self._timeout_s, LONG_TIMEOUT_S),
                    )
                count += batch.size
            async with self.transaction() as tx:
                return await tx.import_staged(integration_id, now, self.id_offset, count)
        finally:
            async with self._lock:
                if not self._pg_writer.is_closed():
                    with contextlib.suppress(OSError, asyncpg.InterfaceError, asyncpg.PostgresError):
                        await self._pg_writer.execute("DROP TABLE IF EXISTS pg_temp.import_rows")


# StoreTransaction.load's statements as one row: the next deposit id; the open deposits; the deposits with
# the scanned txids; the wanted active addresses; the payments of the addresses the plan may touch (those
# asked for, and those of the deposits loaded). Arrays of rows (asyncpg reads them as tuples, exactly).
_LOAD = (
    "SELECT greatest(coalesce(pg_sequence_last_value('deposits_id_seq'), 0),"
    " coalesce((SELECT max(id) FROM deposits), 0)),"
    f" ARRAY(SELECT ROW({_TRACKED_COLUMNS}) FROM {_DEPOSIT_FROM}"
    " WHERE d.chain = $1 AND d.status = 'not_confirmed' ORDER BY d.id),"
    f" ARRAY(SELECT ROW({_TRACKED_COLUMNS}) FROM {_DEPOSIT_FROM} WHERE d.chain = $1 AND d.txid = ANY($2)),"
    " ARRAY(SELECT ROW(id, address, foreign_id) FROM addresses WHERE active = 1 AND id = ANY($3::bigint[])),"
    f" ARRAY(SELECT ROW({_PAYMENT_COLUMNS}) FROM {_PAYMENT_FROM} WHERE p.address_id = ANY($3::bigint[])"
    " OR p.address_id IN (SELECT address_id FROM deposits"
    " WHERE chain = $1 AND (status = 'not_confirmed' OR txid = ANY($2))) ORDER BY p.id)"
)


def _deposit_row(t: TrackedDeposit) -> dict[str, Any]:
    """A deposit as a row of the `deposits` table, for dw_apply (jsonb_populate_recordset)."""
    d = t.deposit
    return {
        "id": d.id, "chain": d.chain, "currency": d.currency, "address_id": d.address_id, "txid": d.txid,
        "tx_index": d.tx_index, "amount": str(d.amount), "block_height": d.block_height,
        "block_hash": d.block_hash, "confirmations": d.confirmations, "status": str(d.status),
        "error": d.error, "sender": t.sender, "nonce": t.nonce, "inputs": " ".join(t.inputs),
        "first_seen_at": d.first_seen_at, "orphaned_at": t.orphaned_at, "updated_at": d.updated_at,
    }  # fmt: skip


def _queue_op(callbacks: Sequence[QueuedCallback], no_callbacks: Collection[str]) -> dict[str, Any]:
    """StoreTransaction._queue's rows: each callback pending when it is its deposit's last, else
    superseded at once."""
    latest = {c.deposit_id: n for n, c in enumerate(callbacks)}
    rows = [
        {"deposit_id": c.deposit_id, "status": str(c.status), "body": "\\x" + c.body.hex(),
         "state": "pending" if latest[c.deposit_id] == n else "superseded",
         "confirmations": c.confirmations, "queued_at": c.queued_at}
        for n, c in enumerate(callbacks)
    ]  # fmt: skip
    return {
        "op": "queue",
        "callbacks": rows,
        "deposit_ids": list(latest),
        "quiet": sorted(no_callbacks),
    }


def _dollar_quote(text: str) -> str:
    """A dollar quote that does not occur in `text`, so the literal ends only where it should."""
    while True:
        quote = f"$j{secrets.token_hex(4)}$"
        if quote not in text:
            return quote


def _unpacked(first: int, batch: ImportBatch) -> list[tuple[int, str, str, bytes, str, str]]:
    """An ImportBatch's rows as COPY takes them (see ImportBatch.of for the packing)."""
    rows = json.loads(batch.rows)
    return [
        (first + n, chain, currency, batch.keys[offset : offset + size], address, foreign_id)
        for n, (chain, currency, offset, size, address, foreign_id) in enumerate(rows)
    ]


def _inserts_one_row_with_id(text: str) -> bool:
    head = text.lstrip()[:40].split()
    return (
        len(head) >= 3
        and head[0].upper() == "INSERT"
        and head[2] in _ID_TABLES
        and " VALUES " in text.upper()
        and "RETURNING" not in text.upper()
    )


def _rows_written(status: bytes | str | None) -> int:
    """The row count of a command status ('INSERT 0 3', 'UPDATE 2', 'DELETE 1'); 0 for a SELECT's."""
    text = status.decode() if isinstance(status, bytes) else (status or "")
    verb, _, rest = text.partition(" ")
    if verb not in ("INSERT", "UPDATE", "DELETE", "MERGE"):
        return 0
    last = rest.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
