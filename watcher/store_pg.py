"""The PostgreSQL store (asyncpg): `Store`'s interface over a database that several processes share.

Selected by `database.url: postgresql://...` (Store.open dispatches on the URL). The queries are
watcher/store.py's, translated mechanically (watcher/pg_dialect.py); what is not mechanical is a method of
its own here (the schema version, the deposit id counter, the import's staging, the watch-set load).

- Writes: one connection, used only under an asyncio lock, so transactions stay serial within the process
  as the ledger assumes. Each begins with a transaction-scoped advisory lock (pg_schema.WRITE_LOCK_KEY):
  writes of several processes (the daemon, the CLI) run one at a time, as SQLite's BEGIN IMMEDIATE makes
  them, so statements such as "largest id + 1" mean the same on both backends. BEGIN and the lock are
  one round trip; a batch of rows is one pipelined executemany, whatever its size.
- `PgStore.before_write`, when set, runs first thing in every write transaction, after the advisory lock
  (`_begin`): the place for a check that must hold for the transaction to commit (a leader's term).
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
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Collection, Coroutine, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from chains.base import KeyIndex
from chains.watchset import COMPACT_ABOVE, IndexBuilder
from watcher.database_url import DATABASE_TIMEOUT_S, safe_database_url
from watcher.errors import StoreError
from watcher.pg_dialect import translate
from watcher.pg_schema import PG_MIGRATIONS, VERSION_TABLE, WRITE_LOCK_KEY
from watcher.store import (
    _IMPORT_NEW,
    _SET_ADDRESS,
    ImportBatch,
    Store,
    StoreTransaction,
    ThreadTransaction,
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

BeforeWrite = Callable[["PgTransaction"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PgCursor:
    """What a statement's cursor is read for (store._Cursor): the id of the row an INSERT added."""

    lastrowid: int | None


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
        # asyncpg pipelines the rows: one round trip for the batch, not one a row.
        await self._pg.executemany(statement.sql_for(batch[0]), batch, timeout=self.timeout_s)
        self.changes += len(batch)

    async def _all(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        statement = translate(sql)
        args = statement.args(params)
        return [tuple(r) for r in await self._run(statement.sql_for(args), args)]

    async def _run(self, text: str, args: list[Any]) -> list[Any]:
        # Connection._execute is asyncpg's one call that returns both the rows and the command status
        # (the count of rows written); public fetch() drops the status, execute() the rows.
        rows, status, _ = await self._pg._execute(text, args, 0, self.timeout_s, return_status=True)
        self.changes += _rows_written(status)
        return list(rows)

    def _total_changes(self) -> int:
        return self.changes

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
            await conn.execute("COMMIT")
        except BaseException as exc:
            if isinstance(exc, TimeoutError):
                conn.terminate()  # no answer: a ROLLBACK would wait as long; the server rolls back alone
            if not conn.is_closed():
                with contextlib.suppress(OSError, asyncpg.InterfaceError, asyncpg.PostgresError):
                    await conn.execute("ROLLBACK")
            failed = self._store_error(exc)
            if failed is exc:
                raise
            raise failed from exc
        if tx.changes:  # only a transaction that wrote proves the store writes again
            self.write_error = None

    async def _begin(self, tx: PgTransaction) -> None:
        """BEGIN and the cross-process write lock in one round trip, then the per-transaction hook."""
        await tx._pg.execute(f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")
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
            if state[:2] in _WRITE_STOPPING or state == _READ_ONLY:
                self.write_error = _reason(exc)
            return StoreError(f"{self.path}: {_reason(exc)}")
        if isinstance(exc, TimeoutError):  # an OSError too: first
            self.write_error = self._no_answer()
            return StoreError(f"{self.path}: {self.write_error}")
        if isinstance(exc, (OSError, asyncpg.InterfaceError)):
            self.write_error = _reason(exc)
            return StoreError(f"{self.path}: {_reason(exc)}")
        return exc

    def _no_answer(self) -> str:
        return f"no answer from the server within {self._timeout_s:g} s (database.timeout_s)"

    # ------------------------------------------------------------------------- SQLite-only matters

    async def checkpoint(self) -> None:
        """Nothing: PostgreSQL checkpoints by itself (there is no WAL file of ours to copy back)."""

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
