"""The embedded store (SQLite through aiosqlite): the only module that speaks SQL, with watcher/watchload.py
(the start-up's load of the watch sets, on a connection, and a process, of its own).

It holds the watched addresses, each chain's cursor and recent block refs, the deposits, the callback
outbox and the log of delivery attempts. Two connections: a writer, used only inside `transaction()`
under an asyncio lock so that tasks sharing it never interleave statements of different transactions,
and a reader, which in WAL mode sees only committed data. The dispatcher reads the outbox through the
reader, so a callback is never sent for a state change that was not committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Collection,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Protocol, TypeVar

import aiosqlite

from chains.base import BlockRef, KeyIndex
from chains.watchset import COMPACT_ABOVE
from watcher.database_url import is_database_url
from watcher.errors import RequestRefused, StoreError
from watcher.model import (
    AddressSource,
    AttemptResult,
    Deposit,
    DepositKey,
    DepositStatus,
    Event,
    IssuedAddress,
    LedgerView,
    OutboxEntry,
    OutboxState,
    Payment,
    PaymentStatus,
    Plan,
    QueuedCallback,
    TrackedDeposit,
    WatchedAddress,
)
from watcher.watchload import SPLIT_ABOVE, load_watch_sets

T = TypeVar("T")

# WAL pages (4 KiB) after which a commit checkpoints by itself (SQLite's default is 1,000).
WAL_AUTOCHECKPOINT_PAGES = 20_000

# Each entry upgrades the schema by one version; a new version is appended, never edited.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE chains (
        name TEXT PRIMARY KEY,
        identity TEXT,
        cursor_height INTEGER,
        cursor_hash TEXT,
        halted_reason TEXT,
        updated_at REAL NOT NULL
    );
    CREATE TABLE blocks (
        chain TEXT NOT NULL,
        height INTEGER NOT NULL,
        block_hash TEXT NOT NULL,
        parent_hash TEXT NOT NULL,
        PRIMARY KEY (chain, height)
    ) WITHOUT ROWID;
    CREATE TABLE addresses (
        id INTEGER PRIMARY KEY,
        chain TEXT NOT NULL,
        currency TEXT NOT NULL,
        watch_key BLOB NOT NULL,
        address TEXT NOT NULL,
        foreign_id TEXT NOT NULL,
        active INTEGER NOT NULL DEFAULT 1,
        UNIQUE (currency, watch_key)
    );
    CREATE TABLE deposits (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        chain TEXT NOT NULL,
        currency TEXT NOT NULL,
        address_id INTEGER NOT NULL REFERENCES addresses(id),
        txid TEXT NOT NULL,
        tx_index INTEGER NOT NULL,
        amount TEXT NOT NULL,            -- decimal integer in base units (wei exceeds 64 bits)
        block_height INTEGER,
        block_hash TEXT,
        confirmations INTEGER NOT NULL,
        status TEXT NOT NULL,
        error TEXT NOT NULL DEFAULT '',
        sender TEXT,
        nonce INTEGER,
        inputs TEXT NOT NULL DEFAULT '',  -- space-separated outpoints the transaction spends
        first_seen_at REAL NOT NULL,
        orphaned_at REAL,                -- when it was last seen leaving the chain (or only in mempool)
        updated_at REAL NOT NULL,
        UNIQUE (chain, txid, currency, address_id, tx_index)
    );
    CREATE INDEX deposits_open ON deposits (chain, status) WHERE status = 'not_confirmed';
    CREATE INDEX deposits_block ON deposits (chain, block_height);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        deposit_id INTEGER NOT NULL REFERENCES deposits(id),
        status TEXT NOT NULL,
        body BLOB NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        first_attempt_at REAL,
        next_attempt_at REAL NOT NULL,
        delivered_at REAL
    );
    CREATE INDEX outbox_due ON outbox (next_attempt_at, id) WHERE state = 'pending';
    CREATE INDEX outbox_deposit ON outbox (deposit_id, id);
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        outbox_id INTEGER NOT NULL REFERENCES outbox(id),
        attempted_at REAL NOT NULL,
        duration_ms REAL NOT NULL,
        http_status INTEGER,
        error TEXT NOT NULL,
        response_excerpt TEXT NOT NULL
    );
    CREATE INDEX attempts_outbox ON attempts (outbox_id);
    """,
    # 2: integrations and the merchant API. Rows from before belong to the `merchant:` integration.
    """
    ALTER TABLE addresses ADD COLUMN integration_id TEXT NOT NULL
        DEFAULT '00000000-0000-0000-0000-000000000000';
    ALTER TABLE addresses ADD COLUMN source TEXT NOT NULL DEFAULT 'config';
    ALTER TABLE addresses ADD COLUMN key_id TEXT;
    ALTER TABLE addresses ADD COLUMN key_index INTEGER;
    ALTER TABLE addresses ADD COLUMN derivation_path TEXT;
    ALTER TABLE addresses ADD COLUMN created_at REAL NOT NULL DEFAULT 0;
    ALTER TABLE addresses ADD COLUMN scan_from INTEGER;
    CREATE INDEX addresses_integration ON addresses (integration_id, id);
    CREATE INDEX addresses_foreign ON addresses (integration_id, foreign_id);
    CREATE INDEX addresses_scan ON addresses (chain) WHERE scan_from IS NOT NULL;
    -- What a config reload touches: without it, each start scanned millions of API rows per chain.
    CREATE INDEX addresses_config ON addresses (chain) WHERE source = 'config';
    CREATE TABLE public_keys (
        key_id TEXT PRIMARY KEY,
        integration_id TEXT NOT NULL,
        chain TEXT NOT NULL,
        descriptor TEXT NOT NULL,
        first_used_at REAL NOT NULL
    );
    CREATE TABLE derivations (
        integration_id TEXT NOT NULL,
        chain TEXT NOT NULL,
        foreign_id TEXT NOT NULL,
        key_id TEXT NOT NULL REFERENCES public_keys(key_id),
        key_index INTEGER NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (integration_id, chain, foreign_id)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX derivations_index ON derivations (key_id, key_index);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        integration_id TEXT NOT NULL,
        deposit_id INTEGER NOT NULL REFERENCES deposits(id),
        status TEXT NOT NULL,
        confirmations INTEGER NOT NULL,
        body BLOB NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX events_integration ON events (integration_id, id);
    -- Addresses watched again (deleted, then taken, registered or imported again): a running daemon's
    -- followers pick new rows up by id, and these by sequence.
    CREATE TABLE watch_changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        address_id INTEGER NOT NULL REFERENCES addresses(id)
    );
    """,
    # 3: payments for orders, and their webhooks in the outbox beside the deposits' callbacks. SQLite
    # cannot drop a NOT NULL: the outbox is rebuilt (ids kept, so `attempts` still points at its rows).
    # `_migrate` runs every migration with foreign keys off and checks them all before the commit.
    """
    CREATE TABLE payments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        reference TEXT NOT NULL UNIQUE,
        integration_id TEXT NOT NULL,
        chain TEXT NOT NULL,
        currency TEXT NOT NULL,
        address_id INTEGER NOT NULL REFERENCES addresses(id),
        amount TEXT NOT NULL,            -- decimal integer in base units (wei exceeds 64 bits)
        received TEXT NOT NULL DEFAULT '0',
        status TEXT NOT NULL,
        customer_email TEXT,
        customer_reference TEXT,
        meta_data TEXT,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        ended_at REAL,
        blind_at_link REAL,
        idempotency_key TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        UNIQUE (integration_id, idempotency_key)
    );
    CREATE INDEX payments_integration ON payments (integration_id, id);
    CREATE INDEX payments_open ON payments (chain, expires_at) WHERE status IN ('pending', 'linked');
    CREATE INDEX payments_address ON payments (address_id);
    CREATE TABLE outbox_new (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        deposit_id INTEGER REFERENCES deposits(id),
        payment_id INTEGER REFERENCES payments(id),
        status TEXT NOT NULL,            -- the deposit's status, or the payment's
        body BLOB NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        first_attempt_at REAL,
        next_attempt_at REAL NOT NULL,
        delivered_at REAL,
        CHECK ((deposit_id IS NULL) != (payment_id IS NULL))
    );
    INSERT INTO outbox_new (id, deposit_id, status, body, state, attempts, created_at, first_attempt_at,
        next_attempt_at, delivered_at)
        SELECT id, deposit_id, status, body, state, attempts, created_at, first_attempt_at, next_attempt_at,
        delivered_at FROM outbox ORDER BY id;
    DROP TABLE outbox;
    ALTER TABLE outbox_new RENAME TO outbox;
    CREATE INDEX outbox_due ON outbox (next_attempt_at, id) WHERE state = 'pending';
    CREATE INDEX outbox_deposit ON outbox (deposit_id, id) WHERE deposit_id IS NOT NULL;
    CREATE INDEX outbox_payment ON outbox (payment_id, id) WHERE payment_id IS NOT NULL;
    -- What the daemon has seen of each chain (watcher/payment_tracker.py): the last time it was at the
    -- node's head, and the seconds in all it was not following it. A payment ends only on time seen.
    CREATE TABLE seen_clocks (
        chain TEXT PRIMARY KEY,
        at_head REAL,
        blind_s REAL NOT NULL
    );
    """,
    # 4: what the back office searches by (watcher/ui/records.py) and the deposits of one address (the
    # checkout page, the payments API): without them each was a walk of the whole table.
    """
    CREATE INDEX deposits_address ON deposits (address_id, id);
    CREATE INDEX payments_customer_reference ON payments (customer_reference)
        WHERE customer_reference IS NOT NULL;
    CREATE INDEX payments_customer_email ON payments (customer_email) WHERE customer_email IS NOT NULL;
    """,
)

_DEPOSIT_COLUMNS = (
    "d.id, d.chain, d.currency, d.address_id, a.address, a.foreign_id, d.txid, d.tx_index, d.amount,"
    " d.block_height, d.block_hash, d.confirmations, d.status, d.error, d.first_seen_at, d.updated_at"
)
_DEPOSIT_FROM = "deposits d JOIN addresses a ON a.id = d.address_id"
_TRACKED_COLUMNS = f"{_DEPOSIT_COLUMNS}, d.sender, d.nonce, d.inputs, d.orphaned_at"
_OUTBOX_COLUMNS = (
    "id, deposit_id, status, body, state, attempts, created_at, first_attempt_at, next_attempt_at, payment_id"
)
_PAYMENT_COLUMNS = (
    "p.id, p.reference, p.integration_id, p.chain, p.currency, p.address_id, a.address, p.amount, p.received,"
    " p.status, p.customer_email, p.customer_reference, p.meta_data, p.created_at, p.expires_at, p.ended_at,"
    " p.blind_at_link"
)
_PAYMENT_FROM = "payments p JOIN addresses a ON a.id = p.address_id"


def _filtered(
    equal: Sequence[tuple[str, Any]], after: tuple[str, int], since: tuple[str, float | None]
) -> tuple[list[str], list[Any]]:
    """A listing's WHERE terms and parameters: each (column, value) given a value must equal it, the id
    column is above the cursor, the time column (when given a time) is at or after it."""
    where: list[str] = [f"{after[0]} > ?"]
    params: list[Any] = [after[1]]
    for column, value in equal:
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if since[1] is not None:
        where.append(f"{since[0]} >= ?")
        params.append(since[1])
    return where, params


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _office_terms(
    equal: Sequence[tuple[str, Any]], id_column: str, before: int | None
) -> tuple[list[str], list[Any]]:
    """A back-office listing's WHERE terms: each (column, value) given a value must equal it, and the id
    column is below the page's keyset cursor when there is one."""
    where, params = ["1=1"], []
    for column, value in equal:
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if before is not None:
        where.append(f"{id_column} < ?")
        params.append(before)
    return where, params


@dataclass(frozen=True, slots=True)
class DepositSearch:
    """What one search box's text may be of a deposit (watcher/ui/records.py resolves it): its id, the
    ids of the addresses it names (its foreign_id's or the address itself), its txid in the stored forms.
    A deposit matching any of them is found."""

    deposit_id: int | None = None
    address_ids: tuple[int, ...] = ()
    txids: tuple[str, ...] = ()
    chains: tuple[str, ...] = ()  # the configured ones; those the store has followed are added

    def term(self) -> tuple[str, list[Any]] | None:
        """`d.id = ? OR d.id IN (...)` of one indexed look-up per way (an OR of the columns themselves
        would scan the deposits), or None when nothing can match. Parameters are never bare SELECTed: a
        server-side store must know their types."""
        ways: list[str] = []
        params: list[Any] = []
        if self.address_ids:
            ways.append(f"SELECT id FROM deposits WHERE address_id IN ({_marks(len(self.address_ids))})")
            params += self.address_ids
        if self.txids:
            lookup, values = _by_txid("id", self.txids, self.chains)
            ways.append(lookup)
            params += values
        terms = [f"d.id IN ({' UNION ALL '.join(ways)})"] if ways else []
        if self.deposit_id is not None:
            terms.insert(0, "d.id = ?")
            params.insert(0, self.deposit_id)
        return (f"({' OR '.join(terms)})", params) if terms else None


@dataclass(frozen=True, slots=True)
class PaymentSearch:
    """A payment search: its reference, customer_reference or customer_email is `text`, its address is one
    of `address_ids`, or a transaction to its address has one of `txids` (see DepositSearch)."""

    text: str
    address_ids: tuple[int, ...] = ()
    txids: tuple[str, ...] = ()
    chains: tuple[str, ...] = ()

    def term(self) -> tuple[str, list[Any]]:
        ways = [f"SELECT id FROM payments WHERE {column} = ?" for column in _PAYMENT_SEARCHED]
        params: list[Any] = [self.text] * len(ways)
        if self.address_ids:
            ways.append(f"SELECT id FROM payments WHERE address_id IN ({_marks(len(self.address_ids))})")
            params += self.address_ids
        if self.txids:
            lookup, values = _by_txid("address_id", self.txids, self.chains)
            ways.append(f"SELECT id FROM payments WHERE address_id IN ({lookup})")
            params += values
        return f"p.id IN ({' UNION ALL '.join(ways)})", params


_PAYMENT_SEARCHED = ("reference", "customer_reference", "customer_email")


def _by_txid(column: str, txids: Sequence[str], chains: Sequence[str]) -> tuple[str, list[Any]]:
    """`column` of the deposits with one of these txids. The unique key starts (chain, txid): naming the
    chains (those followed, and `chains`, the configured ones) lets a txid alone use it."""
    configured = f" OR chain IN ({_marks(len(chains))})" if chains else ""
    return (
        f"SELECT {column} FROM deposits WHERE (chain IN (SELECT name FROM chains){configured})"
        f" AND txid IN ({_marks(len(txids))})",
        [*chains, *txids],
    )


def _deposit(row: Sequence[Any]) -> Deposit:
    return Deposit(
        id=row[0], chain=row[1], currency=row[2], address_id=row[3], address=row[4], foreign_id=row[5],
        txid=row[6], tx_index=row[7], amount=int(row[8]), block_height=row[9], block_hash=row[10],
        confirmations=row[11], status=DepositStatus(row[12]), error=row[13], first_seen_at=row[14],
        updated_at=row[15],
    )  # fmt: skip


def _tracked(row: Sequence[Any]) -> TrackedDeposit:
    inputs = tuple(row[18].split()) if row[18] else ()
    return TrackedDeposit(_deposit(row), row[16], row[17], inputs, row[19])


def _outbox(row: Sequence[Any]) -> OutboxEntry:
    payment_id = row[9]
    status = DepositStatus(row[2]) if payment_id is None else PaymentStatus(row[2])
    return OutboxEntry(
        id=row[0], deposit_id=row[1], status=status, body=bytes(row[3]),
        state=OutboxState(row[4]), attempts=row[5], created_at=row[6], first_attempt_at=row[7],
        next_attempt_at=row[8], integration_id=row[10] if len(row) > 10 else DEFAULT_INTEGRATION_ID,
        payment_id=payment_id,
    )  # fmt: skip


def _payment(row: Sequence[Any]) -> Payment:
    return Payment(
        id=row[0], reference=row[1], integration_id=row[2], chain=row[3], currency=row[4], address_id=row[5],
        address=row[6], amount=int(row[7]), received=int(row[8]), status=PaymentStatus(row[9]),
        customer_email=row[10], customer_reference=row[11], meta_data=row[12], created_at=row[13],
        expires_at=row[14], ended_at=row[15], blind_at_link=row[16],
    )  # fmt: skip


# Who a callback belongs to: its deposit's address's integration, or its payment's.
_OUTBOX_OWNER = (
    "LEFT JOIN deposits od ON od.id = o.deposit_id LEFT JOIN addresses oa ON oa.id = od.address_id"
    " LEFT JOIN payments op ON op.id = o.payment_id"
)
_OWNER = "coalesce(oa.integration_id, op.integration_id)"


def _owned_by(integration_id: str | None) -> tuple[str, str, tuple[str, ...]]:
    """(joins, condition, parameters) limiting outbox rows `o` to one integration's; none for None (the
    operator's view: no joins to pay for on every row)."""
    if integration_id is None:
        return "", "1 = 1", ()
    return _OUTBOX_OWNER, f"{_OWNER} = ?", (integration_id,)


@dataclass(frozen=True, slots=True)
class FailingCallback:
    """A callback not delivered after at least one attempt, with its last attempt (the back office)."""

    outbox_id: int
    integration_id: str
    deposit_id: int | None
    payment_id: int | None
    status: str  # the deposit's or the payment's status it reports
    state: str  # pending (retrying) or failed (given up)
    attempts: int
    next_attempt_at: float
    last_attempt_at: float | None
    last_http_status: int | None
    last_error: str | None
    payment_reference: str | None  # a payment's: its back-office page is by reference


@dataclass(frozen=True, slots=True)
class ChainState:
    name: str
    identity: str | None
    cursor: BlockRef | None
    halted_reason: str | None


# The `merchant:` integration (watcher.config.DEFAULT_INTEGRATION_ID; the store does not read the config).
DEFAULT_INTEGRATION_ID = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True, slots=True)
class NewAddress:
    chain: str
    currency: str
    watch_key: bytes
    address: str
    foreign_id: str
    integration_id: str = DEFAULT_INTEGRATION_ID
    source: AddressSource = AddressSource.CONFIG


_ISSUED_COLUMNS = (
    "id, integration_id, chain, currency, address, foreign_id, source, created_at, active, key_id, key_index,"
    " derivation_path, scan_from"
)


_ISSUED_COLUMNS_OF_A = ", ".join(f"a.{c.strip()}" for c in _ISSUED_COLUMNS.split(","))  # in joins
_SET_ADDRESS = "UPDATE addresses SET foreign_id = ?, active = ?, scan_from = ? WHERE id = ?"


def _issued(row: Sequence[Any]) -> IssuedAddress:
    return IssuedAddress(
        id=row[0], integration_id=row[1], chain=row[2], currency=row[3], address=row[4], foreign_id=row[5],
        source=AddressSource(row[6]), created_at=row[7], active=bool(row[8]), key_id=row[9],
        key_index=row[10], derivation_path=row[11], scan_from=row[12],
    )  # fmt: skip


def _event(row: Sequence[Any]) -> Event:
    return Event(
        id=row[0], integration_id=row[1], deposit_id=row[2], status=DepositStatus(row[3]),
        confirmations=row[4], created_at=row[5], body=bytes(row[6]),
    )  # fmt: skip


async def _connect(path: str) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)
    await conn.execute("PRAGMA busy_timeout = 10000")
    await conn.execute("PRAGMA foreign_keys = ON")
    return conn


class Store:
    """Open with `await Store.open(path)`; close with `await store.close()`."""

    def __init__(self, path: str, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._lock = asyncio.Lock()
        self._lock_fd: int | None = None
        self._checkpointer: aiosqlite.Connection | None = None  # the daemon's (exclusive) only
        # Why the last write transaction failed (a full disk, a read-only file, an I/O error), until one
        # that writes commits again: what /readyz reports as the store's problem.
        self.write_error: str | None = None
        # New deposit and address ids are above it (set by `open`).
        self.id_offset = 0

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
        """Open (creating and migrating) the database. `exclusive` takes the daemon's lock file.

        `id_offset` (config `database.id_offset`): new deposit and address ids are above it (see
        `_apply_id_offset`); ids already given never change.
        A `postgresql://` URL opens the PostgreSQL backend (watcher/store_pg.py; no lock file there), with
        `password` (config `database.password_file`; an SQLite file has none) and `timeout_s` (config
        `database.timeout_s`: how long a statement may go unanswered; None: PgStore's default).
        """
        if cls is Store and is_database_url(path):
            from watcher.store_pg import PgStore  # asyncpg is loaded only for a PostgreSQL store

            return await PgStore.open(
                path, exclusive=exclusive, id_offset=id_offset, password=password, timeout_s=timeout_s
            )
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        lock_fd = _take_lock(path) if exclusive else None
        store: Store | None = None
        try:
            writer = await _connect(path)
            store = cls(path, writer, writer)
            store._lock_fd = lock_fd
            await writer.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL mode survives process crashes (SIGKILL); only an OS crash may lose the last
            # transactions, and then the cursor goes back with them, so blocks are simply re-scanned.
            await writer.execute("PRAGMA synchronous = NORMAL")
            if exclusive:
                # The daemon checkpoints from its reader in the background (`checkpoint`): an automatic
                # checkpoint runs inside a writer's commit, and its fsync stalled API takes by ~50 ms.
                # This larger threshold is only the safety net should the background ones fall behind.
                await writer.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
                # Opened here, not at the first checkpoint: a connection being opened when the daemon
                # stops would be left open, its thread keeping the process from exiting.
                store._checkpointer = await _connect(path)
            store._reader = await _connect(path)
            await store._migrate()
            await store._apply_id_offset(id_offset)
            return store
        except BaseException:
            if store is not None:
                await store.close()
            elif lock_fd is not None:
                os.close(lock_fd)
            raise

    async def close(self) -> None:
        if self._checkpointer is not None:
            await self._checkpointer.close()
        if self._reader is not self._writer:
            await self._reader.close()
        await self._writer.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _migrate(self) -> None:
        # Foreign keys off while the schema changes (SQLite's procedure for rebuilding a table: dropping
        # the old outbox would otherwise fail for the attempts pointing at its rows, although the new one
        # has them all); the pragma is a no-op inside a transaction, so it is set around it, and every
        # reference is checked before the commit instead.
        await self._writer.execute("PRAGMA foreign_keys = OFF")
        try:
            async with self.transaction() as tx:
                version = await tx.schema_version()
                if version > len(MIGRATIONS):
                    raise StoreError(
                        f"{self.path}: schema version {version} is newer than this program knows "
                        f"({len(MIGRATIONS)}); upgrade deposit-watcher"
                    )
                for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                    for statement in _statements(script):
                        await tx.execute(statement)
                    await tx.execute(f"PRAGMA user_version = {int(number)}")
                if version < len(MIGRATIONS) and (broken := await tx.foreign_key_problems()):
                    raise StoreError(f"{self.path}: the upgrade would break references: {broken}")
        finally:
            await self._writer.execute("PRAGMA foreign_keys = ON")

    async def _apply_id_offset(self, offset: int) -> None:
        """Make the next ids greater than `offset`, never smaller than they would be anyway (no id is
        ever given twice, whatever the offset was before): so a merchant can keep these ids in one table
        with the ids of another processor (`id` and `crypto_address.id` of the callbacks).

        Deposits (AUTOINCREMENT): SQLite gives max(sqlite_sequence.seq, largest id) + 1, so the sequence is
        raised here, never lowered. Addresses (a plain INTEGER PRIMARY KEY, largest id + 1): the first
        one inserted below the offset gets offset + 1 explicitly (`StoreTransaction.upsert_addresses`).
        """
        self.id_offset = offset
        if offset <= 0:
            return
        async with self.transaction() as tx:
            await tx.execute(
                "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'deposits' AND seq < ?1", (offset,)
            )
            await tx.execute(
                "INSERT INTO sqlite_sequence (name, seq) SELECT 'deposits', ?1"
                " WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'deposits')",
                (offset,),
            )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[StoreTransaction]:
        """One write transaction: everything inside commits together or not at all.

        A failed COMMIT is rolled back too: after SQLITE_BUSY or a deferred constraint SQLite keeps the
        transaction open, and every later BEGIN would fail. After a full disk or an I/O error SQLite has
        usually rolled back by itself, so that ROLLBACK fails: the error that ended the transaction is
        the one raised, never the ROLLBACK's.
        """
        async with self._lock:
            changes = self._writer.total_changes
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
                yield StoreTransaction(self._writer)
                await self._writer.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    await self._writer.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    self.write_error = str(exc)
                raise
            # Only a transaction that wrote proves the store writes again: an empty one touches no file.
            if self._writer.total_changes != changes:
                self.write_error = None

    async def probe_write(self) -> None:
        """A write that changes nothing, to show writes work again (clearing `write_error`) where nothing
        else writes: a standby daemon on a shared PostgreSQL store (PgStore). Nothing on SQLite, whose one
        daemon writes all along."""

    async def write(self, work: Callable[[ThreadTransaction], T]) -> T:
        """`work` inside one write transaction (as `transaction`), run whole on the writer connection's
        thread: one round trip to it instead of one a statement. Each round trip waits for that thread to
        be scheduled and to get the GIL, then for the event loop to turn; under load those waits, not
        SQLite, were most of a take's time in its transaction. `work` must not touch the event loop.

        aiosqlite has no public call for "run this on the connection's thread", so its queue
        (`Connection._execute`, there since its first versions) is used; its one thread runs what is
        queued in order, so statements queued after this one (the next transaction) run after its COMMIT
        even if the caller is cancelled meanwhile."""
        async with self._lock:
            changes = self._writer.total_changes
            try:
                result: T = await self._writer._execute(  # type: ignore[no-untyped-call]
                    _write_on_thread, self._writer._conn, work
                )
            except sqlite3.OperationalError as e:
                self.write_error = str(e)
                raise
            if self._writer.total_changes != changes:
                self.write_error = None
            return result

    async def checkpoint(self) -> None:
        """Copy the WAL into the database file as far as no reader needs it (PASSIVE: never waits for, or
        blocks, a writer), on a connection of its own: its fsync keeps out of the writer's commits and
        out of the reads queued on the reader connection (an API take reads there first)."""
        conn = self._checkpointer or self._reader  # a store opened without `exclusive` has no own one
        await conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def backup(self, destination: str) -> None:
        """A consistent copy of the live database (SQLite's online backup), safe while the daemon writes."""
        target = await aiosqlite.connect(destination)
        try:
            await self._reader.backup(target)
        finally:
            await target.close()

    async def integrity_check(self) -> str:
        rows = await self._reader.execute_fetchall("PRAGMA integrity_check")
        return ", ".join(str(r[0]) for r in rows)

    # ----------------------------------------------------------------------------------- reads

    async def _all(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        return list(await self._reader.execute_fetchall(sql, tuple(params)))

    async def chain_state(self, chain: str) -> ChainState:
        rows = await self._all(
            "SELECT identity, cursor_height, cursor_hash, halted_reason FROM chains WHERE name = ?", (chain,)
        )
        if not rows:
            return ChainState(chain, None, None, None)
        identity, height, block_hash, halted = rows[0]
        cursor = None
        if height is not None:
            parent = await self._all(
                "SELECT parent_hash FROM blocks WHERE chain = ? AND height = ?", (chain, height)
            )
            cursor = BlockRef(height, block_hash, parent[0][0] if parent else "")
        return ChainState(chain, identity, cursor, halted)

    async def recent_blocks(self, chain: str, limit: int) -> list[BlockRef]:
        """The newest `limit` stored block refs, newest first."""
        rows = await self._all(
            "SELECT height, block_hash, parent_hash FROM blocks WHERE chain = ? ORDER BY height DESC LIMIT ?",
            (chain, limit),
        )
        return [BlockRef(*r) for r in rows]

    async def seen_clocks(self) -> dict[str, tuple[float | None, float]]:
        """Each chain's (last time at the node's head, seconds not followed in all): see payment_tracker."""
        rows = await self._all("SELECT chain, at_head, blind_s FROM seen_clocks")
        return {chain: (at_head, blind_s) for chain, at_head, blind_s in rows}

    async def watch_keys(self, chain: str, compact_above: int = COMPACT_ABOVE) -> dict[str, KeyIndex]:
        """Active watched addresses of a chain: currency -> (watch key -> address id).

        Per currency a dict up to `compact_above` addresses, beyond it a `CompactKeys` (fingerprints,
        ~24 instead of ~143 B/address; chains/watchset.py says why a fingerprint match is exact enough).
        """
        return (await self.watch_sets([chain], compact_above)).get(chain, {})

    async def watch_sets(
        self, chains: Collection[str], compact_above: int = COMPACT_ABOVE, split_above: int = SPLIT_ABOVE
    ) -> dict[str, dict[str, KeyIndex]]:
        """`watch_keys` of several chains in one pass over the table (at start: one read of a file of
        gigabytes, not one per chain). Built in a worker thread on a connection of its own: SQLite steps
        without the GIL, and the event loop stays free between the builder's batches."""
        # A thread cannot be cancelled: told to stop, it gives up at its next page, so a daemon stopped
        # during its start does not wait for a whole load first.
        stop = threading.Event()
        try:
            return await asyncio.to_thread(
                self._load_watch_sets, tuple(chains), compact_above, stop, split_above
            )
        except asyncio.CancelledError:
            stop.set()
            raise

    def _load_watch_sets(
        self,
        chains: tuple[str, ...],
        compact_above: int,
        stop: threading.Event,
        split_above: int = SPLIT_ABOVE,
    ) -> dict[str, dict[str, KeyIndex]]:
        return load_watch_sets(self.path, chains, compact_above, stop, split_above)

    async def address(self, address_id: int) -> WatchedAddress | None:
        rows = await self._all(
            "SELECT id, chain, currency, address, foreign_id, watch_key FROM addresses WHERE id = ?",
            (address_id,),
        )
        if not rows:
            return None
        r = rows[0]
        return WatchedAddress(
            id=r[0], chain=r[1], currency=r[2], address=r[3], foreign_id=r[4], watch_key=bytes(r[5])
        )

    async def deposit(self, deposit_id: int) -> Deposit | None:
        rows = await self._all(
            f"SELECT {_DEPOSIT_COLUMNS} FROM {_DEPOSIT_FROM} WHERE d.id = ?", (deposit_id,)
        )
        return _deposit(rows[0]) if rows else None

    async def deposits(
        self,
        *,
        status: str | None = None,
        currency: str | None = None,
        address: str | None = None,
        limit: int = 1000,
    ) -> list[Deposit]:
        where: list[str] = ["1=1"]
        params: list[Any] = []
        for column, value in (("d.status", status), ("d.currency", currency), ("a.address", address)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        rows = await self._all(
            f"SELECT {_DEPOSIT_COLUMNS} FROM {_DEPOSIT_FROM} WHERE {' AND '.join(where)}"
            " ORDER BY d.id LIMIT ?",
            [*params, limit],
        )
        return [_deposit(r) for r in rows]

    async def orphans(self, chain: str) -> list[TrackedDeposit]:
        """Open deposits in no block (left the chain, or seen only in the mempool): a read, no write lock,
        since the follower asks for them at every poll at the tip and there are usually none."""
        rows = await self._all(
            f"SELECT {_TRACKED_COLUMNS} FROM {_DEPOSIT_FROM} WHERE d.chain = ? AND d.status = 'not_confirmed'"
            " AND d.block_height IS NULL ORDER BY d.id",
            (chain,),
        )
        return [_tracked(r) for r in rows]

    async def open_outpoints(self, chain: str) -> frozenset[str]:
        """Inputs spent by the chain's open deposits (for double-spend detection)."""
        rows = await self._all(
            "SELECT inputs FROM deposits WHERE chain = ? AND status = 'not_confirmed' AND inputs != ''",
            (chain,),
        )
        return frozenset(o for (inputs,) in rows for o in inputs.split())

    async def deposit_counts_by_currency(self) -> dict[tuple[str, str], int]:
        rows = await self._all("SELECT currency, status, count(*) FROM deposits GROUP BY currency, status")
        return {(currency, status): n for currency, status, n in rows}

    async def deposit_counts(self) -> dict[str, int]:
        rows = await self._all("SELECT status, count(*) FROM deposits GROUP BY status")
        return {status: n for status, n in rows}

    async def due_callbacks(self, now: float, limit: int) -> list[OutboxEntry]:
        """Pending outbox entries whose attempt is due, oldest first, one page, with their integration.

        A payment's webhooks are distinct events, never superseded: one is not due while an earlier one of
        the same payment is still pending, so `linked` reaches the merchant before `completed`."""
        columns = ", ".join(f"o.{c.strip()}" for c in _OUTBOX_COLUMNS.split(","))
        rows = await self._all(
            f"SELECT {columns}, coalesce(a.integration_id, p.integration_id) FROM outbox o"
            " LEFT JOIN deposits d ON d.id = o.deposit_id LEFT JOIN addresses a ON a.id = d.address_id"
            " LEFT JOIN payments p ON p.id = o.payment_id"
            " WHERE o.state = 'pending' AND o.next_attempt_at <= ? AND (o.payment_id IS NULL OR NOT EXISTS"
            " (SELECT 1 FROM outbox e WHERE e.payment_id = o.payment_id AND e.id < o.id"
            " AND e.state = 'pending')) ORDER BY o.next_attempt_at, o.id LIMIT ?",
            (now, limit),
        )
        return [_outbox(r) for r in rows]

    # ------------------------------------------------------------------------ the merchant's views

    async def address_high_water(self) -> tuple[int, int]:
        """(largest address id, last watch change): rows above them are new to a watch set built after."""
        rows = await self._all(
            "SELECT (SELECT coalesce(max(id), 0) FROM addresses),"
            " (SELECT coalesce(max(seq), 0) FROM watch_changes)"
        )
        return int(rows[0][0]), int(rows[0][1])

    async def watched_again(self, chain: str, after_seq: int, up_to: int) -> list[tuple[str, bytes, int]]:
        """Addresses of the chain watched again with change sequence in (after_seq, up_to]."""
        rows = await self._all(
            "SELECT a.currency, a.watch_key, a.id FROM watch_changes w JOIN addresses a"
            " ON a.id = w.address_id"
            " WHERE w.seq > ? AND w.seq <= ? AND a.chain = ? AND a.active = 1 ORDER BY w.seq",
            (after_seq, up_to, chain),
        )
        return [(c, bytes(k), i) for c, k, i in rows]

    async def new_watch_keys(self, chain: str, after_id: int, up_to: int) -> list[tuple[str, bytes, int]]:
        """Active addresses of the chain with ids in (after_id, up_to]: (currency, watch key, id), by id."""
        rows = await self._all(
            "SELECT currency, watch_key, id FROM addresses WHERE id > ? AND id <= ? AND chain = ?"
            " AND active = 1 ORDER BY id",
            (after_id, up_to, chain),
        )
        return [(c, bytes(k), i) for c, k, i in rows]

    async def pending_scans(self, chain: str) -> list[tuple[int, int]]:
        """(address id, from height) of addresses whose past is still to be scanned, lowest height first."""
        rows = await self._all(
            "SELECT id, scan_from FROM addresses WHERE chain = ? AND scan_from IS NOT NULL AND active = 1"
            " ORDER BY scan_from, id",
            (chain,),
        )
        return [(i, h) for i, h in rows]

    async def issued_address(
        self, integration_id: str, currency: str, watch_key: bytes
    ) -> IssuedAddress | None:
        rows = await self._all(
            f"SELECT {_ISSUED_COLUMNS} FROM addresses WHERE currency = ? AND watch_key = ?"
            " AND integration_id = ? AND source != 'payment'",
            (currency, watch_key, integration_id),
        )
        return _issued(rows[0]) if rows else None

    async def issued_addresses(
        self,
        integration_id: str,
        *,
        foreign_id: str | None = None,
        currency: str | None = None,
        after: int = 0,
        limit: int = 100,
        active_only: bool = False,
    ) -> list[IssuedAddress]:
        # A payment's address is no customer's standing address: GET /v1/payments shows it.
        where, params = ["integration_id = ?", "id > ?", "source != 'payment'"], [integration_id, after]
        for column, value in (("foreign_id", foreign_id), ("currency", currency)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if active_only:
            where.append("active = 1")
        rows = await self._all(
            f"SELECT {_ISSUED_COLUMNS} FROM addresses WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
            [*params, limit],
        )
        return [_issued(r) for r in rows]

    async def integration_deposits(
        self,
        integration_id: str,
        *,
        status: str | None = None,
        currency: str | None = None,
        foreign_id: str | None = None,
        since: float | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> list[Deposit]:
        where, params = _filtered(
            [("a.integration_id", integration_id), ("d.status", status), ("d.currency", currency),
             ("a.foreign_id", foreign_id)],
            ("d.id", after), ("d.updated_at", since),
        )  # fmt: skip
        rows = await self._all(
            f"SELECT {_DEPOSIT_COLUMNS} FROM {_DEPOSIT_FROM} WHERE {' AND '.join(where)}"
            " ORDER BY d.id LIMIT ?",
            [*params, limit],
        )
        return [_deposit(r) for r in rows]

    async def integration_deposit(self, integration_id: str, deposit_id: int) -> Deposit | None:
        rows = await self._all(
            f"SELECT {_DEPOSIT_COLUMNS} FROM {_DEPOSIT_FROM} WHERE d.id = ? AND a.integration_id = ?",
            (deposit_id, integration_id),
        )
        return _deposit(rows[0]) if rows else None

    # ------------------------------------------------------------------------ payments for orders

    async def payment(self, integration_id: str, reference: str) -> Payment | None:
        """The integration's payment with this reference; another integration's is None (not found)."""
        rows = await self._all(
            f"SELECT {_PAYMENT_COLUMNS} FROM {_PAYMENT_FROM} WHERE p.reference = ? AND p.integration_id = ?",
            (reference, integration_id),
        )
        return _payment(rows[0]) if rows else None

    async def payment_by_reference(self, reference: str) -> Payment | None:
        """The payment with this reference, whichever integration's: the checkout page's lookup, where the
        unguessable reference itself is the customer's right to see it."""
        rows = await self._all(
            f"SELECT {_PAYMENT_COLUMNS} FROM {_PAYMENT_FROM} WHERE p.reference = ?", (reference,)
        )
        return _payment(rows[0]) if rows else None

    async def integration_payments(
        self,
        integration_id: str,
        *,
        status: str | None = None,
        currency: str | None = None,
        customer_reference: str | None = None,
        since: float | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> list[Payment]:
        """The integration's payments by id (created order), after `after`, filtered."""
        where, params = _filtered(
            [("p.integration_id", integration_id), ("p.status", status), ("p.currency", currency),
             ("p.customer_reference", customer_reference)],
            ("p.id", after), ("p.created_at", since),
        )  # fmt: skip
        rows = await self._all(
            f"SELECT {_PAYMENT_COLUMNS} FROM {_PAYMENT_FROM} WHERE {' AND '.join(where)}"
            " ORDER BY p.id LIMIT ?",
            [*params, limit],
        )
        return [_payment(r) for r in rows]

    async def address_deposits(self, address_id: int) -> list[Deposit]:
        """Every deposit to one address (a payment's transactions), in the order first seen."""
        rows = await self._all(
            f"SELECT {_DEPOSIT_COLUMNS} FROM {_DEPOSIT_FROM} WHERE d.address_id = ? ORDER BY d.id",
            (address_id,),
        )
        return [_deposit(r) for r in rows]

    async def events(self, integration_id: str, after: int = 0, limit: int = 100) -> list[Event]:
        rows = await self._all(
            "SELECT id, integration_id, deposit_id, status, confirmations, created_at, body FROM events"
            " WHERE integration_id = ? AND id > ? ORDER BY id LIMIT ?",
            (integration_id, after, limit),
        )
        return [_event(r) for r in rows]

    async def highest_indexes(self, integration_id: str) -> dict[str, int]:
        """Per public key id, the highest derivation index issued (what a wallet's gap limit must cover)."""
        rows = await self._all(
            "SELECT key_id, max(key_index) FROM derivations WHERE integration_id = ? GROUP BY key_id",
            (integration_id,),
        )
        return {k: int(i) for k, i in rows}

    async def integration_ids(self) -> set[str]:
        """The integrations the stored addresses belong to: one index step per integration (a DISTINCT
        read all ten million entries of the index at start)."""
        found: set[str] = set()
        after = ""
        while rows := await self._all(
            "SELECT integration_id FROM addresses WHERE integration_id > ? ORDER BY integration_id LIMIT 1",
            (after,),
        ):
            after = rows[0][0]
            found.add(after)
        return found

    async def next_due_at(self) -> float | None:
        rows = await self._all("SELECT min(next_attempt_at) FROM outbox WHERE state = 'pending'")
        value: float | None = rows[0][0]
        return value

    async def outbox_counts(self) -> dict[str, int]:
        rows = await self._all("SELECT state, count(*) FROM outbox GROUP BY state")
        return {state: n for state, n in rows}

    # The back office's overview (watcher/ui/office.py): `integration_id` None reads every integration's.

    async def office_outbox_counts(self, integration_id: str | None) -> dict[str, int]:
        """Callbacks by outbox state, and `retrying`: pending ones that have failed at least once."""
        joins, where, params = _owned_by(integration_id)
        rows = await self._all(
            "SELECT o.state, count(*),"
            " sum(CASE WHEN o.state = 'pending' AND o.attempts > 0 THEN 1 ELSE 0 END)"
            f" FROM outbox o {joins} WHERE {where} GROUP BY o.state",
            params,
        )
        counts = {state: int(n) for state, n, _ in rows}
        counts["retrying"] = sum(int(r or 0) for _, _, r in rows)
        return counts

    async def office_failing_callbacks(self, integration_id: str | None, limit: int) -> list[FailingCallback]:
        """The newest callbacks not delivered after at least one attempt (retrying, or given up), each
        with its last attempt's answer."""
        _, where, params = _owned_by(integration_id)
        rows = await self._all(
            f"SELECT o.id, {_OWNER}, o.deposit_id, o.payment_id, o.status, o.state, o.attempts,"
            " o.next_attempt_at, t.attempted_at, t.http_status, t.error, op.reference FROM outbox o"
            f" {_OUTBOX_OWNER} LEFT JOIN attempts t ON t.id ="
            " (SELECT max(id) FROM attempts WHERE outbox_id = o.id)"
            f" WHERE o.state IN ('pending', 'failed') AND o.attempts > 0 AND {where}"
            " ORDER BY o.id DESC LIMIT ?",
            (*params, limit),
        )
        return [FailingCallback(*r) for r in rows]

    async def office_delivery_buckets(
        self, integration_id: str | None, since: int, bucket_s: int
    ) -> dict[int, tuple[int, int]]:
        """Attempts from `since` (whole seconds) on, per bucket of `bucket_s` (0: the first): (delivered,
        failed). Integer arithmetic only, which SQLite and PostgreSQL divide alike (an attempt's time is
        taken to the second)."""
        first = await self._first_attempt_id(since)
        if first is None:
            return {}
        joins, where, params = _owned_by(integration_id)
        ok = "t.http_status BETWEEN 200 AND 299"
        rows = await self._all(
            "SELECT (CAST(t.attempted_at AS INTEGER) - ?) / ? AS bucket,"
            f" sum(CASE WHEN {ok} THEN 1 ELSE 0 END), sum(CASE WHEN {ok} THEN 0 ELSE 1 END)"
            f" FROM attempts t JOIN outbox o ON o.id = t.outbox_id {joins}"
            f" WHERE t.id >= ? AND t.attempted_at >= ? AND {where} GROUP BY bucket",
            (since, bucket_s, first, since, *params),
        )
        return {int(bucket): (int(good), int(bad)) for bucket, good, bad in rows}

    async def _first_attempt_id(self, since: int) -> int | None:
        """About the first attempt at or after `since`, found by bisecting the ids (attempts are logged in
        time order, give or take a batch: the margin covers it), so no index on the time is needed."""
        since -= 300
        rows = await self._all("SELECT min(id), max(id) FROM attempts")
        low, high = rows[0]
        if low is None:
            return None
        high += 1
        while low < high:
            middle = (low + high) // 2
            found = await self._all(
                "SELECT id, attempted_at FROM attempts WHERE id >= ? ORDER BY id LIMIT 1", (middle,)
            )
            if found and found[0][1] < since:
                low = found[0][0] + 1
            else:
                high = middle
        return int(low)

    async def outbox_entries(
        self,
        *,
        deposit_id: int | None = None,
        payment_id: int | None = None,
        state: str | None = None,
        limit: int = 1000,
    ) -> list[OutboxEntry]:
        where: list[str] = ["1=1"]
        params: list[Any] = []
        for column, value in (("deposit_id", deposit_id), ("payment_id", payment_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if state is not None:
            where.append("state = ?")
            params.append(state)
        rows = await self._all(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
            [*params, limit],
        )
        return [_outbox(r) for r in rows]

    async def attempts(self, outbox_id: int) -> list[AttemptResult]:
        rows = await self._all(
            "SELECT outbox_id, attempted_at, duration_ms, http_status, error, response_excerpt"
            " FROM attempts WHERE outbox_id = ? ORDER BY id",
            (outbox_id,),
        )
        return [AttemptResult(*r) for r in rows]

    # ------------------------------------------------------------------------ the back office's views
    # watcher/ui/records.py. `owner` scopes a read to one integration; None is the operator, who sees all.
    # Lists are newest first, paged by keyset (`before` an id): a row added meanwhile moves no page.

    async def office_deposits(
        self,
        owner: str | None,
        *,
        search: DepositSearch | None = None,
        status: str | None = None,
        currency: str | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> list[tuple[str, Deposit]]:
        """(integration id, deposit), newest first. With `search`, only deposits it matches."""
        where, params = _office_terms(
            [("a.integration_id", owner), ("d.status", status), ("d.currency", currency)], "d.id", before
        )
        if search is not None:
            found = search.term()
            if found is None:
                return []
            where.append(found[0])
            params += found[1]
        rows = await self._all(
            f"SELECT {_DEPOSIT_COLUMNS}, a.integration_id FROM {_DEPOSIT_FROM} WHERE {' AND '.join(where)}"
            " ORDER BY d.id DESC LIMIT ?",
            [*params, limit],
        )
        return [(r[16], _deposit(r)) for r in rows]

    async def office_deposit(self, deposit_id: int) -> tuple[str, Deposit] | None:
        """The deposit with its integration's id (the caller checks the viewer may see it)."""
        rows = await self._all(
            f"SELECT {_DEPOSIT_COLUMNS}, a.integration_id FROM {_DEPOSIT_FROM} WHERE d.id = ?", (deposit_id,)
        )
        return (rows[0][16], _deposit(rows[0])) if rows else None

    async def office_payments(
        self,
        owner: str | None,
        *,
        search: PaymentSearch | None = None,
        status: str | None = None,
        currency: str | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> list[Payment]:
        """Payments newest first. With `search`, only payments it matches."""
        where, params = _office_terms(
            [("p.integration_id", owner), ("p.status", status), ("p.currency", currency)], "p.id", before
        )
        if search is not None:
            term, values = search.term()
            where.append(term)
            params += values
        rows = await self._all(
            f"SELECT {_PAYMENT_COLUMNS} FROM {_PAYMENT_FROM} WHERE {' AND '.join(where)}"
            " ORDER BY p.id DESC LIMIT ?",
            [*params, limit],
        )
        return [_payment(r) for r in rows]

    async def office_addresses(
        self, owner: str | None, *, before: int | None = None, limit: int = 50
    ) -> list[IssuedAddress]:
        """Addresses newest first, of every source (a payment's address shows as `payment`)."""
        where, params = _office_terms([("integration_id", owner)], "id", before)
        rows = await self._all(
            f"SELECT {_ISSUED_COLUMNS} FROM addresses WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
            [*params, limit],
        )
        return [_issued(r) for r in rows]

    async def addresses_of_customer(self, owners: Collection[str], foreign_id: str) -> list[IssuedAddress]:
        """The addresses of these integrations with this foreign_id (any source, active or not). The
        owners are named even for the operator: the index is (integration_id, foreign_id)."""
        if not owners:
            return []
        rows = await self._all(
            f"SELECT {_ISSUED_COLUMNS} FROM addresses WHERE integration_id IN ({_marks(len(owners))})"
            " AND foreign_id = ? ORDER BY id",
            [*owners, foreign_id],
        )
        return [_issued(r) for r in rows]

    async def addresses_by_watch_keys(self, keys: Collection[tuple[str, bytes]]) -> list[IssuedAddress]:
        """The addresses with these (currency, watch key) pairs, whoever's (the caller scopes them)."""
        if not keys:
            return []
        terms = " OR ".join(["(currency = ? AND watch_key = ?)"] * len(keys))
        rows = await self._all(
            f"SELECT {_ISSUED_COLUMNS} FROM addresses WHERE {terms} ORDER BY id", [v for k in keys for v in k]
        )
        return [_issued(r) for r in rows]

    async def deposit_counts_by_address(self, address_ids: Collection[int]) -> dict[int, int]:
        """Deposits per address id (a page's worth). Reads the deposits' unique index whole until
        deposits.address_id has an index of its own (as address_deposits does)."""
        if not address_ids:
            return {}
        rows = await self._all(
            f"SELECT address_id, count(*) FROM deposits WHERE address_id IN ({_marks(len(address_ids))})"
            " GROUP BY address_id",
            list(address_ids),
        )
        return {address_id: n for address_id, n in rows}

    # ----------------------------------------------------------------------------------- writes

    async def sync_addresses(self, chain: str, entries: Iterable[NewAddress]) -> None:
        """Make the chain's active addresses exactly `entries`: insert new ones, keep ids of known ones.

        Addresses no longer configured are deactivated, never deleted: their deposits keep their
        `crypto_address.id`, and the id comes back if the address is configured again. Only rows that came
        from the config are touched: addresses taken or registered through the API or imported stay.
        """
        now = time.time()
        async with self.transaction() as tx:
            await tx.execute(
                "UPDATE addresses SET active = 0 WHERE chain = ? AND source = 'config'", (chain,)
            )
            batch: list[tuple[Any, ...]] = []
            for e in entries:
                batch.append(
                    (e.chain, e.currency, e.watch_key, e.address, e.foreign_id, e.integration_id, now)
                )
                if len(batch) >= 10_000:
                    await tx.upsert_addresses(batch, self.id_offset)
                    batch = []
            await tx.upsert_addresses(batch, self.id_offset)

    async def import_addresses(self, rows: Iterable[NewAddress], now: float) -> tuple[int, int]:
        """`import_batches` of NewAddress rows (held in memory), all of one integration and of source
        IMPORT (ValueError otherwise): the form small callers and tests have at hand."""
        rows = list(rows)
        owners = {r.integration_id for r in rows}
        if len(owners) > 1 or any(r.source is not AddressSource.IMPORT for r in rows):
            raise ValueError("an import adds rows of one integration, each of source import")

        async def batches() -> AsyncIterator[ImportBatch]:
            for batch in _batches(rows, IMPORT_BATCH):
                yield ImportBatch.of(
                    [(r.chain, r.currency, r.watch_key, r.address, r.foreign_id) for r in batch]
                )

        return await self.import_batches(owners.pop() if owners else "", batches(), now)

    async def import_batches(
        self, integration_id: str, batches: AsyncIterable[ImportBatch], now: float
    ) -> tuple[int, int]:
        """Add many addresses for one integration in one transaction: (added, already there). An address
        watched for another integration or for another foreign_id, or given twice, refuses the whole
        import (ImportConflict naming its position in the rows given); so does any error `batches` raises
        (the caller checks its rows batch by batch, while the batches before are staged).

        The rows are staged in a temporary table first, a batch at a time, without the database's write
        lock (a temporary table is the connection's own), so neither a long file nor its checks hold up
        the daemon; then one transaction moves them (`StoreTransaction.import_staged`). A batch is staged
        by one statement that SQLite reads from JSON (`ImportBatch`), not by executemany: aiosqlite's
        thread stages it while this thread checks the next batch, and executemany would need the GIL back
        for every row (a busy checking thread slowed its staging fivefold).
        """
        async with self._lock:
            await self._writer.execute("DROP TABLE IF EXISTS temp.import_rows")
            await self._writer.execute(_IMPORT_TABLE)
        count = 0
        staging: asyncio.Task[None] | None = None
        try:
            async for batch in batches:  # the next batch is checked while this one is staged
                if staging is not None:
                    await staging
                staging = asyncio.ensure_future(self._stage(count, batch))
                await asyncio.sleep(0)  # it hands the statement to aiosqlite's thread before checking goes on
                count += batch.size
            if staging is not None:
                await staging
            staging = None
            async with self._lock:
                size = next(iter(await self._writer.execute_fetchall("PRAGMA cache_size")))[0]
                # Index pages of millions of rows: a larger cache for this one transaction (64 MB).
                await self._writer.execute("PRAGMA cache_size = -65536")
            try:
                async with self.transaction() as tx:
                    return await tx.import_staged(integration_id, now, self.id_offset, count)
            finally:
                async with self._lock:
                    await self._writer.execute(f"PRAGMA cache_size = {int(size)}")
        finally:
            if staging is not None:  # a bad row stopped the batches: the batch being staged finishes first
                with contextlib.suppress(sqlite3.Error):
                    await staging
            async with self._lock:
                await self._writer.execute("DROP TABLE IF EXISTS temp.import_rows")

    async def _stage(self, first: int, batch: ImportBatch) -> None:
        async with self._lock:
            await self._writer.execute(_STAGE_ROWS, (first, batch.keys, batch.rows))

    async def export_addresses(
        self, integration_id: str, currency: str | None = None, page: int = 10_000
    ) -> AsyncIterator[IssuedAddress]:
        """Every address of the integration by id, read a page at a time (never all in memory)."""
        after = 0
        while batch := await self.issued_addresses(
            integration_id, currency=currency, after=after, limit=page
        ):
            for address in batch:
                yield address
            after = batch[-1].id

    async def record_attempts(self, results: Sequence[tuple[AttemptResult, float | None]]) -> None:
        """Log attempts and move their outbox entries on, in one transaction.

        Each result comes with the time of the next attempt (None: the schedule is exhausted). An entry
        superseded while its attempt was in flight keeps state superseded; only the attempt is logged.
        """
        if not results:
            return
        async with self.transaction() as tx:
            await tx.executemany(
                "INSERT INTO attempts (outbox_id, attempted_at, duration_ms, http_status, error,"
                " response_excerpt) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (r.outbox_id, r.attempted_at, r.duration_ms, r.http_status, r.error, r.response_excerpt)
                    for r, _ in results
                ],
            )
            delivered = [(r.attempted_at, r.outbox_id) for r, _ in results if r.ok]
            await tx.executemany(
                "UPDATE outbox SET attempts = attempts + 1, first_attempt_at = coalesce(first_attempt_at,"
                " ?1), state = CASE state WHEN 'pending' THEN 'delivered' ELSE state END, delivered_at = ?1"
                " WHERE id = ?2",
                delivered,
            )
            retry = [
                (r.attempted_at, nxt if nxt is not None else r.attempted_at, nxt is None, r.outbox_id)
                for r, nxt in results
                if not r.ok
            ]
            await tx.executemany(
                "UPDATE outbox SET attempts = attempts + 1, first_attempt_at = coalesce(first_attempt_at,"
                " ?1), next_attempt_at = ?2, state = CASE WHEN state = 'pending' AND ?3 THEN 'failed'"
                " ELSE state END WHERE id = ?4",
                retry,
            )

    async def resend(self, deposit_id: int, now: float | None = None) -> OutboxEntry | None:
        """Queue the deposit's latest callback again, with the same body; None if it has none."""
        async with self.transaction() as tx:
            return await tx.requeue_latest(deposit_id, time.time() if now is None else now)


@dataclass(frozen=True, slots=True)
class NewPayment:
    """A payment as created (pending, nothing received), with what makes its creation idempotent."""

    reference: str
    integration_id: str
    chain: str
    currency: str
    address_id: int
    amount: int
    customer_email: str | None
    customer_reference: str | None
    meta_data: str | None
    created_at: float
    expires_at: float
    idempotency_key: str
    request_hash: str


class ImportConflict(RequestRefused):
    """An import row that cannot be added; `index` is its position in the rows given (`first`: where the
    same address came first, for a duplicate)."""

    def __init__(
        self, index: int, status: int, code: str, message: str, field: str, first: int | None = None
    ) -> None:
        super().__init__(status, code, message, field)
        self.index = index
        self.first = first


# Staging table of `Store.import_batches` (a connection's own: no lock on the database file).
_IMPORT_TABLE = (
    "CREATE TEMP TABLE import_rows (n INTEGER PRIMARY KEY, chain TEXT, currency TEXT, watch_key BLOB,"
    " address TEXT, foreign_id TEXT)"
)
# The staged rows added in file order, when none is in the store yet (StoreTransaction.import_staged).
_IMPORT_NEW = (
    "INSERT INTO addresses (id, chain, currency, watch_key, address, foreign_id, integration_id,"
    " source, created_at, active) SELECT ?1 + i.n + 1, i.chain, i.currency, i.watch_key,"
    " i.address, i.foreign_id, ?2, 'import', ?3, 1 FROM temp.import_rows i ORDER BY i.n"
)
IMPORT_BATCH = 20_000
# (chain, currency, watch_key, address, foreign_id) of an imported address.
ImportRow = tuple[str, str, bytes, str, str]
# json_extract, not ->> (SQLite 3.38): as fast, and in the SQLite of older systems too.
_STAGE_ROWS = (
    "INSERT INTO temp.import_rows SELECT ?1 + j.key, json_extract(j.value, '$[0]'),"
    " json_extract(j.value, '$[1]'), substr(?2, json_extract(j.value, '$[2]') + 1,"
    " json_extract(j.value, '$[3]')), json_extract(j.value, '$[4]'), json_extract(j.value, '$[5]')"
    " FROM json_each(?3) j"
)


@dataclass(frozen=True, slots=True)
class ImportBatch:
    """Import rows packed for staging: one JSON array of [chain, currency, key offset, key length, address,
    foreign_id] and the watch keys end to end in one BLOB (JSON has no bytes, and this SQLite has no
    unhex()). SQLite parses and inserts a whole batch without coming back to Python, and a batch packed
    in a worker process crosses to the store as two objects, not as a tuple a row."""

    size: int
    keys: bytes
    rows: str

    @classmethod
    def of(cls, rows: Sequence[ImportRow]) -> ImportBatch:
        """Column by column (zip, map, accumulate): no Python step a row."""
        if not rows:
            return cls(0, b"", "[]")
        chains, currencies, keys, addresses, foreign_ids = zip(*rows, strict=True)
        sizes = list(map(len, keys))
        offsets = accumulate(sizes, initial=0)  # one longer than the rest: strict=False
        packed = list(zip(chains, currencies, offsets, sizes, addresses, foreign_ids, strict=False))
        return cls(len(rows), b"".join(keys), json.dumps(packed, ensure_ascii=False, separators=(",", ":")))


def _batches(rows: Iterable[NewAddress], size: int) -> Iterator[list[NewAddress]]:
    batch: list[NewAddress] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Cursor(Protocol):
    """What a statement's cursor is read for: aiosqlite's, or sqlite3's on the writer thread."""

    @property
    def lastrowid(self) -> int | None: ...


class StoreTransaction:
    """Statements inside one write transaction (see Store.transaction)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> _Cursor:
        return await self._conn.execute(sql, tuple(params))

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        rows = [tuple(r) for r in rows]
        if rows:
            await self._conn.executemany(sql, rows)

    async def _all(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        return list(await self._conn.execute_fetchall(sql, tuple(params)))

    def _total_changes(self) -> int:
        return self._conn.total_changes

    async def schema_version(self) -> int:
        rows = await self._all("PRAGMA user_version")
        return int(rows[0][0])

    async def foreign_key_problems(self) -> str:
        """The first few rows whose reference points nowhere (`PRAGMA foreign_key_check`), as text."""
        rows = await self._all("PRAGMA foreign_key_check")
        return "; ".join(f"{r[0]} row {r[1]} -> {r[2]}" for r in rows[:5])

    async def upsert_addresses(self, rows: Sequence[tuple[Any, ...]], id_offset: int = 0) -> None:
        """Insert (chain, currency, watch_key, address, foreign_id, integration_id, created_at) config rows,
        or reactivate them with their id (the config then owns the row). A new address gets an id above
        `id_offset`: offset + 1 while every id is below it (NULL lets SQLite choose the largest id + 1).

        A payment's address listed in the config stays the payment's: the config taking it over would
        give it away, and unwatch it (the payment's deposits unseen) once the config dropped it again."""
        await self.executemany(
            "INSERT INTO addresses (id, chain, currency, watch_key, address, foreign_id, integration_id,"
            " created_at, active) VALUES ((SELECT CASE WHEN coalesce(max(id), 0) < ?1 THEN ?1 + 1 END"
            " FROM addresses), ?2, ?3, ?4, ?5, ?6, ?7, ?8, 1) ON CONFLICT (currency, watch_key) DO UPDATE SET"
            " chain = excluded.chain, foreign_id = excluded.foreign_id,"
            " integration_id = excluded.integration_id, source = 'config', active = 1"
            " WHERE addresses.source != 'payment'",
            [(id_offset, *row) for row in rows],
        )

    async def import_staged(
        self, integration_id: str, now: float, id_offset: int, count: int
    ) -> tuple[int, int]:
        """See Store.import_batches: the staged rows added. The common case, addresses new to the store and
        listed once, is one INSERT with ids in file order; any (currency, watch_key) already present
        fails it on the unique index (SQLite undoes that statement alone), and the rows are then checked
        and added by `_import_known`."""
        first_id = await self._all("SELECT max(coalesce(max(id), 0), ?) FROM addresses", (id_offset,))
        try:
            await self.execute(_IMPORT_NEW, (first_id[0][0], integration_id, now))
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" not in str(exc):
                raise
            return await self._import_known(integration_id, now, first_id[0][0], count)
        return count, 0

    async def _import_known(
        self, integration_id: str, now: float, first_id: int, count: int
    ) -> tuple[int, int]:
        """The staged rows of which some are in the store already (or listed twice): checked, then added
        or watched again, in a few set statements."""
        twice = await self._all(
            "SELECT min(n), max(n) FROM temp.import_rows GROUP BY currency, watch_key HAVING count(*) > 1"
            " ORDER BY 2 LIMIT 1"
        )
        if twice:
            first, second = twice[0]
            raise ImportConflict(second, 422, "duplicate", "this address is listed twice", "address", first)
        clash = await self._all(
            "SELECT i.n FROM temp.import_rows i JOIN addresses a ON a.currency = i.currency"
            " AND a.watch_key = i.watch_key WHERE a.integration_id != ?"
            " OR (a.foreign_id != i.foreign_id AND a.active = 1) ORDER BY i.n LIMIT 1",
            (integration_id,),
        )
        if clash:
            message = "this address is already watched for another foreign_id or integration"
            raise ImportConflict(clash[0][0], 409, "conflict", message, "address")
        await self.execute(
            "INSERT INTO watch_changes (address_id) SELECT a.id FROM addresses a JOIN temp.import_rows i"
            " ON a.currency = i.currency AND a.watch_key = i.watch_key WHERE a.active = 0 ORDER BY i.n"
        )
        await self.execute(
            "UPDATE addresses SET active = 1, foreign_id = i.foreign_id FROM temp.import_rows i WHERE"
            " addresses.currency = i.currency AND addresses.watch_key = i.watch_key AND addresses.active = 0"
        )
        changes = self._total_changes()
        await self.execute(
            "INSERT INTO addresses (id, chain, currency, watch_key, address, foreign_id, integration_id,"
            " source, created_at, active) SELECT ?1 + row_number() OVER (ORDER BY i.n), i.chain, i.currency,"
            " i.watch_key, i.address, i.foreign_id, ?2, 'import', ?3, 1 FROM temp.import_rows i"
            " WHERE NOT EXISTS (SELECT 1 FROM addresses a WHERE a.currency = i.currency"
            " AND a.watch_key = i.watch_key) ORDER BY i.n",
            (first_id, integration_id, now),
        )
        added = self._total_changes() - changes
        return added, count - added

    async def next_key_index(self, key_id: str, first_index: int) -> int:
        """The next free index of one key (a payment's address; takes use `next_key_indexes` in a batch)."""
        rows = await self._all("SELECT max(key_index) FROM derivations WHERE key_id = ?", (key_id,))
        highest = rows[0][0]
        return first_index if highest is None else max(first_index, highest + 1)

    async def add_derivation(
        self, integration_id: str, chain: str, foreign_id: str, key: tuple[str, str], index: int, now: float
    ) -> None:
        """Give (integration, chain, foreign_id) index `index` of the public key `key` (id, descriptor),
        recording the key first if it is new (a payment's address; takes record theirs in a batch)."""
        key_id, descriptor = key
        await self.execute(
            "INSERT INTO public_keys (key_id, integration_id, chain, descriptor, first_used_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (key_id) DO NOTHING",
            (key_id, integration_id, chain, descriptor, now),
        )
        await self.execute(
            "INSERT INTO derivations (integration_id, chain, foreign_id, key_id, key_index, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (integration_id, chain, foreign_id, key_id, index, now),
        )

    async def insert_address(
        self, a: NewAddress, now: float, id_offset: int, **derived: Any
    ) -> IssuedAddress:
        """A new watched address (API or import), as stored; `derived` may give key_id, key_index,
        derivation_path, scan_from. The caller has checked that (currency, watch_key) is not in the table."""
        rows = await self._all(
            "INSERT INTO addresses (id, chain, currency, watch_key, address, foreign_id, integration_id,"
            " source, created_at, key_id, key_index, derivation_path, scan_from, active) VALUES ((SELECT CASE"
            " WHEN coalesce(max(id), 0) < ?1 THEN ?1 + 1 END FROM addresses), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
            f" ?, ?, 1) RETURNING {_ISSUED_COLUMNS}",
            (id_offset, a.chain, a.currency, a.watch_key, a.address, a.foreign_id, a.integration_id,
             str(a.source), now, derived.get("key_id"), derived.get("key_index"),
             derived.get("derivation_path"), derived.get("scan_from")),
        )  # fmt: skip
        return _issued(rows[0])

    # ------------------------------------------------------------------------------- payments

    async def insert_payment(self, p: NewPayment) -> Payment:
        cursor = await self.execute(
            "INSERT INTO payments (reference, integration_id, chain, currency, address_id, amount, received,"
            " status, customer_email, customer_reference, meta_data, created_at, expires_at,"
            " idempotency_key, request_hash) VALUES (?, ?, ?, ?, ?, ?, '0', 'pending', ?, ?, ?, ?, ?, ?, ?)",
            (p.reference, p.integration_id, p.chain, p.currency, p.address_id, str(p.amount),
             p.customer_email, p.customer_reference, p.meta_data, p.created_at, p.expires_at,
             p.idempotency_key, p.request_hash),
        )  # fmt: skip
        assert cursor.lastrowid is not None
        return (await self._payments("p.id = ?", (cursor.lastrowid,)))[0]

    async def payment_by_idempotency_key(self, integration_id: str, key: str) -> tuple[Payment, str] | None:
        """(payment, request hash) created with this Idempotency-Key, if any."""
        rows = await self._all(
            f"SELECT {_PAYMENT_COLUMNS}, p.request_hash FROM {_PAYMENT_FROM}"
            " WHERE p.integration_id = ? AND p.idempotency_key = ?",
            (integration_id, key),
        )
        return (_payment(rows[0]), str(rows[0][17])) if rows else None

    async def payment(self, integration_id: str, reference: str) -> Payment | None:
        found = await self._payments("p.reference = ? AND p.integration_id = ?", (reference, integration_id))
        return found[0] if found else None

    async def payments_for_addresses(self, address_ids: Iterable[int]) -> list[Payment]:
        """The payments (open and ended) of these addresses: what a deposit to one of them moves, or, once
        the payment ended, reports as a late payment."""
        ids = json.dumps(sorted(set(address_ids)))
        return await self._payments("p.address_id IN (SELECT value FROM json_each(?))", (ids,))

    async def open_payments(self, chain: str, expired_by: float | None = None) -> list[Payment]:
        """The chain's pending and linked payments, soonest expiry first (what the expiry sweep reads);
        with `expired_by`, only those that expired by then."""
        expired = "" if expired_by is None else " AND p.expires_at <= ?"
        params = (chain,) if expired_by is None else (chain, expired_by)
        return await self._payments(
            f"p.chain = ? AND p.status IN ('pending', 'linked'){expired}", params, order="p.expires_at, p.id"
        )

    async def save_seen_clock(self, chain: str, at_head: float | None, blind_s: float) -> None:
        await self.execute(
            "INSERT INTO seen_clocks (chain, at_head, blind_s) VALUES (?, ?, ?)"
            " ON CONFLICT (chain) DO UPDATE SET at_head = excluded.at_head, blind_s = excluded.blind_s",
            (chain, at_head, blind_s),
        )

    async def _payments(self, where: str, params: Iterable[Any], order: str = "p.id") -> list[Payment]:
        rows = await self._all(
            f"SELECT {_PAYMENT_COLUMNS} FROM {_PAYMENT_FROM} WHERE {where} ORDER BY {order}", params
        )
        return [_payment(r) for r in rows]

    async def update_payment(self, payment: Payment) -> None:
        """Write what a payment's life changes: its status, what was received, when it ended, and the
        chain's blind seconds when it was linked."""
        await self.execute(
            "UPDATE payments SET status = ?, received = ?, ended_at = ?, blind_at_link = ? WHERE id = ?",
            (str(payment.status), str(payment.received), payment.ended_at, payment.blind_at_link, payment.id),
        )

    async def payment_deposits(self, payment: Payment) -> list[Deposit]:
        """The deposits to the payment's address (any status), in the order first seen."""
        rows = await self._all(
            f"SELECT {_DEPOSIT_COLUMNS} FROM {_DEPOSIT_FROM} WHERE d.address_id = ?"
            " ORDER BY d.first_seen_at, d.id",
            (payment.address_id,),
        )
        return [_deposit(r) for r in rows]

    async def queue_payment_webhook(
        self, payment_id: int, status: PaymentStatus, body: bytes, now: float
    ) -> int:
        """Queue a payment's webhook. Nothing is superseded: each is a distinct event, delivered in the order
        queued (Store.due_callbacks holds a later one back while an earlier one is pending)."""
        cursor = await self.execute(
            "INSERT INTO outbox (payment_id, status, body, state, created_at, next_attempt_at)"
            " VALUES (?, ?, ?, 'pending', ?, ?)",
            (payment_id, str(status), body, now, now),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    async def requeue_latest_payment_webhook(self, payment_id: int, now: float) -> OutboxEntry | None:
        """The payment's latest webhook queued again with the same bytes; None if it has none."""
        rows = await self._all(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE payment_id = ? ORDER BY id DESC LIMIT 1",
            (payment_id,),
        )
        if not rows:
            return None
        latest = _outbox(rows[0])
        new_id = await self.queue_payment_webhook(payment_id, PaymentStatus(latest.status), latest.body, now)
        rows = await self._all(f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE id = ?", (new_id,))
        return _outbox(rows[0])

    async def address_by_key(self, currency: str, watch_key: bytes) -> IssuedAddress | None:
        rows = await self._all(
            f"SELECT {_ISSUED_COLUMNS} FROM addresses WHERE currency = ? AND watch_key = ?",
            (currency, watch_key),
        )
        return _issued(rows[0]) if rows else None

    async def address_by_id(self, address_id: int) -> IssuedAddress:
        rows = await self._all(f"SELECT {_ISSUED_COLUMNS} FROM addresses WHERE id = ?", (address_id,))
        return _issued(rows[0])

    async def set_address(
        self, address_id: int, *, foreign_id: str, active: bool, scan_from: int | None
    ) -> None:
        await self.execute(_SET_ADDRESS, (foreign_id, int(active), scan_from, address_id))

    async def advance_scans(
        self, chain: str, address_ids: Sequence[int], scanned_to: int, done: bool
    ) -> None:
        """The past of these addresses is scanned up to `scanned_to`: go on above it, or (`done`) stop. An
        address asked again for a lower height meanwhile (scan_from above scanned_to) keeps its request."""
        await self.executemany(
            "UPDATE addresses SET scan_from = CASE WHEN ?1 THEN NULL ELSE ?2 + 1 END"
            " WHERE id = ?3 AND chain = ?4 AND scan_from <= ?2",
            [(done, scanned_to, i, chain) for i in address_ids],
        )

    # ------------------------------------------------------------------------------- chain cursor

    async def pin_identity(self, chain: str, identity: str) -> str | None:
        """Record the chain's identity on first use; return the stored one if it differs."""
        rows = await self._all("SELECT identity FROM chains WHERE name = ?", (chain,))
        if rows and rows[0][0] not in (None, identity):
            stored: str = rows[0][0]
            return stored
        await self.execute(
            "INSERT INTO chains (name, identity, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET identity = excluded.identity",
            (chain, identity, time.time()),
        )
        return None

    async def set_cursor(self, chain: str, ref: BlockRef) -> None:
        await self.execute(
            "INSERT INTO chains (name, cursor_height, cursor_hash, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET cursor_height = excluded.cursor_height,"
            " cursor_hash = excluded.cursor_hash, updated_at = excluded.updated_at",
            (chain, ref.height, ref.block_hash, time.time()),
        )

    async def set_halted(self, chain: str, reason: str | None) -> None:
        await self.execute(
            "INSERT INTO chains (name, halted_reason, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET halted_reason = excluded.halted_reason,"
            " updated_at = excluded.updated_at",
            (chain, reason, time.time()),
        )

    async def add_blocks(self, chain: str, refs: Sequence[BlockRef], keep: int) -> None:
        """Store refs (replacing any at the same heights) and drop refs older than `keep` blocks."""
        await self.executemany(
            "INSERT INTO blocks (chain, height, block_hash, parent_hash) VALUES (?, ?, ?, ?) ON CONFLICT"
            " (chain, height) DO UPDATE SET block_hash = excluded.block_hash,"
            " parent_hash = excluded.parent_hash",
            [(chain, r.height, r.block_hash, r.parent_hash) for r in refs],
        )
        if refs:
            await self.execute(
                "DELETE FROM blocks WHERE chain = ? AND height <= ?", (chain, refs[-1].height - keep)
            )

    async def cursor_height(self, chain: str) -> int | None:
        rows = await self._all("SELECT cursor_height FROM chains WHERE name = ?", (chain,))
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    async def block_hashes(self, chain: str, first: int, last: int) -> dict[int, str]:
        """The kept block refs' hashes from `first` to `last`, by height (older ones are not kept)."""
        rows = await self._all(
            "SELECT height, block_hash FROM blocks WHERE chain = ? AND height BETWEEN ? AND ?",
            (chain, first, last),
        )
        return {int(h): str(b) for h, b in rows}

    async def delete_blocks_above(self, chain: str, height: int) -> None:
        await self.execute("DELETE FROM blocks WHERE chain = ? AND height > ?", (chain, height))

    # ------------------------------------------------------------------------------- deposits

    async def find_deposit(
        self, chain: str, txid: str, currency: str, address_id: int, index: int
    ) -> int | None:
        rows = await self._all(
            "SELECT id FROM deposits WHERE chain = ? AND txid = ? AND currency = ? AND address_id = ?"
            " AND tx_index = ?",
            (chain, txid, currency, address_id, index),
        )
        return int(rows[0][0]) if rows else None

    async def insert_deposit(
        self,
        *,
        chain: str,
        currency: str,
        address_id: int,
        txid: str,
        tx_index: int,
        amount: int,
        sender: str | None,
        nonce: int | None,
        inputs: Sequence[str],
        now: float,
    ) -> int:
        cursor = await self.execute(
            "INSERT INTO deposits (chain, currency, address_id, txid, tx_index, amount, confirmations,"
            " status, sender, nonce, inputs, first_seen_at, orphaned_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, 0, 'not_confirmed', ?, ?, ?, ?, ?, ?)",
            (chain, currency, address_id, txid, tx_index, str(amount), sender, nonce, " ".join(inputs),
             now, now, now),
        )  # fmt: skip
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    # ------------------------------------------------------------------------------- the ledger

    async def load(
        self, chain: str, keys: Iterable[DepositKey] = (), address_ids: Iterable[int] = ()
    ) -> LedgerView:
        """What one ledger plan needs, in a few statements whatever the number of transfers: the chain's
        open deposits, the deposits with these keys (any status), the addresses new deposits would get,
        and the next deposit id. Lists go in as one JSON parameter, so the statement count stays fixed."""
        wanted = set(keys)
        open_rows = await self._all(
            f"SELECT {_TRACKED_COLUMNS} FROM {_DEPOSIT_FROM} WHERE d.chain = ? AND d.status = 'not_confirmed'"
            " ORDER BY d.id",
            (chain,),
        )
        matched: dict[DepositKey, TrackedDeposit] = {}
        if wanted:
            txids = json.dumps(sorted({k[0] for k in wanted}))
            rows = await self._all(
                f"SELECT {_TRACKED_COLUMNS} FROM {_DEPOSIT_FROM} WHERE d.chain = ?"
                " AND d.txid IN (SELECT value FROM json_each(?))",
                (chain, txids),
            )
            for tracked in map(_tracked, rows):
                if tracked.key in wanted:
                    matched[tracked.key] = tracked
        addresses: dict[int, tuple[str, str]] = {}
        ids = sorted(set(address_ids))
        if ids:
            rows = await self._all(
                "SELECT id, address, foreign_id FROM addresses WHERE active = 1"
                " AND id IN (SELECT value FROM json_each(?))",
                (json.dumps(ids),),
            )
            addresses = {r[0]: (r[1], r[2]) for r in rows}
        return LedgerView(tuple(map(_tracked, open_rows)), matched, addresses, await self.next_deposit_id())

    async def next_deposit_id(self) -> int:
        """The id the next deposit gets: AUTOINCREMENT's counter, not max(id): ids are never reused, and
        the counter may start higher."""
        rows = await self._all(
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'deposits'), 0),"
            " coalesce((SELECT max(id) FROM deposits), 0))"
        )
        return int(rows[0][0]) + 1

    async def deposits_above(self, chain: str, height: int) -> list[TrackedDeposit]:
        """The chain's deposits (any status) in blocks above `height`: what a reorg to there touches."""
        rows = await self._all(
            f"SELECT {_TRACKED_COLUMNS} FROM {_DEPOSIT_FROM} WHERE d.chain = ? AND d.block_height > ?"
            " ORDER BY d.id",
            (chain, height),
        )
        return [_tracked(r) for r in rows]

    async def apply(self, plan: Plan, no_callbacks: Collection[str] = ()) -> None:
        """Write a ledger plan: at most four statements, each one batch, whatever its size.
        `no_callbacks`: integrations whose deposits get no CoinsPaid callback (their format is another)."""
        await self.executemany(
            "INSERT INTO deposits (id, chain, currency, address_id, txid, tx_index, amount, block_height,"
            " block_hash, confirmations, status, error, sender, nonce, inputs, first_seen_at, orphaned_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (d.id, d.chain, d.currency, d.address_id, d.txid, d.tx_index, str(d.amount), d.block_height,
                 d.block_hash, d.confirmations, str(d.status), d.error, t.sender, t.nonce, " ".join(t.inputs),
                 d.first_seen_at, t.orphaned_at, d.updated_at)
                for t in plan.inserts
                for d in (t.deposit,)
            ],
        )  # fmt: skip
        await self.executemany(
            "UPDATE deposits SET block_height = ?, block_hash = ?, confirmations = ?, status = ?, error = ?,"
            " orphaned_at = ?, updated_at = ? WHERE id = ?",
            [
                (d.block_height, d.block_hash, d.confirmations, str(d.status), d.error, t.orphaned_at,
                 d.updated_at, d.id)
                for t in plan.updates
                for d in (t.deposit,)
            ],
        )  # fmt: skip
        await self._queue(plan.callbacks, no_callbacks)

    async def _queue(self, callbacks: Sequence[QueuedCallback], no_callbacks: Collection[str] = ()) -> None:
        """Queue callbacks; each supersedes the undelivered callbacks of its deposit queued before it.

        This is what keeps the order per deposit: a receiver never gets not_confirmed after confirmed.
        """
        if not callbacks:
            return
        quiet = json.dumps(sorted(no_callbacks))
        await self.executemany(
            "UPDATE outbox SET state = 'superseded' WHERE deposit_id = ? AND state IN ('pending', 'failed')",
            [(i,) for i in dict.fromkeys(c.deposit_id for c in callbacks)],
        )
        latest = {c.deposit_id: n for n, c in enumerate(callbacks)}
        states = ["pending" if latest[c.deposit_id] == n else "superseded" for n, c in enumerate(callbacks)]
        # Deposits to a payment's address are told by the payment's webhooks, and an integration that
        # takes Coinskro webhooks gets no CoinsPaid callback: both stay recorded, in the event feed below.
        await self.executemany(
            "INSERT INTO outbox (deposit_id, status, body, state, created_at, next_attempt_at)"
            " SELECT d.id, ?, ?, ?, ?, ? FROM deposits d JOIN addresses a ON a.id = d.address_id"
            " WHERE d.id = ? AND a.source != 'payment'"
            " AND a.integration_id NOT IN (SELECT value FROM json_each(?))",
            [
                (str(c.status), c.body, state, c.queued_at, c.queued_at, c.deposit_id, quiet)
                for c, state in zip(callbacks, states, strict=True)
            ],
        )
        # The event feed: every status change, superseded or not, in the order planned.
        await self.executemany(
            "INSERT INTO events (integration_id, deposit_id, status, confirmations, body, created_at)"
            " SELECT a.integration_id, d.id, ?, ?, ?, ? FROM deposits d"
            " JOIN addresses a ON a.id = d.address_id WHERE d.id = ?",
            [(str(c.status), c.confirmations, c.body, c.queued_at, c.deposit_id) for c in callbacks],
        )

    # ------------------------------------------------------------------------------- outbox

    async def enqueue_callback(self, deposit_id: int, status: DepositStatus, body: bytes, now: float) -> int:
        """Queue a callback; earlier undelivered callbacks of the deposit are superseded by it.

        This is what keeps the order per deposit: a receiver never gets not_confirmed after confirmed.
        """
        await self.execute(
            "UPDATE outbox SET state = 'superseded' WHERE deposit_id = ? AND state IN ('pending', 'failed')",
            (deposit_id,),
        )
        cursor = await self.execute(
            "INSERT INTO outbox (deposit_id, status, body, state, created_at, next_attempt_at)"
            " VALUES (?, ?, ?, 'pending', ?, ?)",
            (deposit_id, str(status), body, now, now),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    async def requeue_latest(self, deposit_id: int, now: float) -> OutboxEntry | None:
        rows = await self._all(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE deposit_id = ? ORDER BY id DESC LIMIT 1",
            (deposit_id,),
        )
        if not rows:
            return None
        latest = _outbox(rows[0])
        new_id = await self.enqueue_callback(deposit_id, DepositStatus(latest.status), latest.body, now)
        rows = await self._all(f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE id = ?", (new_id,))
        return _outbox(rows[0])


class ThreadTransaction(StoreTransaction):
    """A write transaction run whole on the writer's own thread (`Store.write`), over its sqlite3
    connection: every statement runs at once. StoreTransaction's methods work unchanged, their coroutines
    never suspending: `run` drives one to its end (a ledger plan's load and apply, say). The takes'
    statements are plain methods (each one statement whatever the batch's size)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        # Not StoreTransaction's (aiosqlite) connection: every statement below goes to this one.
        self._direct = conn

    def _total_changes(self) -> int:
        return self._direct.total_changes

    @staticmethod
    def run(step: Coroutine[Any, Any, T]) -> T:
        """The result of a StoreTransaction method on this transaction."""
        try:
            step.send(None)
        except StopIteration as done:
            result: T = done.value
            return result
        step.close()
        raise RuntimeError("a store statement waited on the writer thread")

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> _Cursor:
        return self._direct.execute(sql, tuple(params))

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        self._executemany(sql, rows)

    async def _all(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        return self._sync_all(sql, params)

    def _sync_all(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        return self._direct.execute(sql, tuple(params)).fetchall()

    def _executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        listed = [tuple(r) for r in rows]
        if listed:
            self._direct.executemany(sql, listed)

    def derived_for(
        self, requests: Sequence[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], IssuedAddress]:
        """The active derived addresses of (integration, currency, foreign_id) triples that have one: the
        customers asking again, answered without deriving anything."""
        if not requests:
            return {}
        rows = self._sync_all(
            f"SELECT {_ISSUED_COLUMNS_OF_A} FROM ({_values(len(requests), 3)}) v CROSS JOIN addresses a"
            " ON a.integration_id = v.column1 AND a.currency = v.column2 AND a.foreign_id = v.column3"
            " AND a.key_id IS NOT NULL AND a.active = 1 AND a.source != 'payment'",
            [field for request in requests for field in request],
        )
        found = (_issued(r) for r in rows)
        return {(a.integration_id, a.currency, a.foreign_id): a for a in found}

    def derivations(
        self, customers: Sequence[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], tuple[str, int]]:
        """(key id, index) given to each (integration, chain, foreign_id) that has one, in one statement.
        CROSS JOIN keeps the given rows the outer loop: one primary key search each, never a table scan."""
        if not customers:
            return {}
        rows = self._sync_all(
            "SELECT d.integration_id, d.chain, d.foreign_id, d.key_id, d.key_index FROM"
            f" ({_values(len(customers), 3)}) v CROSS JOIN derivations d ON d.integration_id = v.column1"
            " AND d.chain = v.column2 AND d.foreign_id = v.column3",
            [field for customer in customers for field in customer],
        )
        return {(r[0], r[1], r[2]): (r[3], r[4]) for r in rows}

    def next_key_indexes(self, first_indexes: Mapping[str, int]) -> dict[str, int]:
        """The next free index of each key (key id -> its first index): above the highest recorded, never
        below the first. A correlated max() per key: one index step each (a GROUP BY would read them all)."""
        if not first_indexes:
            return {}
        keys = list(first_indexes)
        rows = self._sync_all(
            f"SELECT v.column1, (SELECT max(key_index) FROM derivations WHERE key_id = v.column1)"
            f" FROM ({_values(len(keys), 1)}) v",
            keys,
        )
        highest = {r[0]: r[1] for r in rows}
        return {
            key: first if highest[key] is None else max(first, highest[key] + 1)
            for key, first in first_indexes.items()
        }

    def add_derivations(
        self,
        rows: Sequence[tuple[str, str, str, str, int]],
        keys: Sequence[tuple[str, str, str, str]],
        now: float,
    ) -> None:
        """Record (integration, chain, foreign_id, key id, index) rows, after the public keys they use that
        are not recorded yet: (key id, integration, chain, descriptor)."""
        self._executemany(
            "INSERT INTO public_keys (key_id, integration_id, chain, descriptor, first_used_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (key_id) DO NOTHING",
            [(*key, now) for key in keys],
        )
        self._executemany(
            "INSERT INTO derivations (integration_id, chain, foreign_id, key_id, key_index, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(*row, now) for row in rows],
        )

    def addresses_by_keys(self, keys: Sequence[tuple[str, bytes]]) -> dict[tuple[str, bytes], IssuedAddress]:
        """The stored addresses among (currency, watch_key) pairs, in one statement (one unique index
        search each)."""
        if not keys:
            return {}
        rows = self._sync_all(
            f"SELECT a.watch_key, {_ISSUED_COLUMNS_OF_A} FROM ({_values(len(keys), 2)}) v"
            " CROSS JOIN addresses a ON a.currency = v.column1 AND a.watch_key = v.column2",
            [field for key in keys for field in key],
        )
        return {(r[4], r[0]): _issued(r[1:]) for r in rows}

    def insert_derived(
        self, rows: Sequence[tuple[NewAddress, str, int, str]], now: float, id_offset: int
    ) -> list[IssuedAddress]:
        """New derived addresses, (address, key id, index, derivation path) each, in one statement: as
        stored, in the order given. Ids follow the largest (or `id_offset`), as `insert_address` gives
        them; they are explicit so that each returned row is known by its id."""
        if not rows:
            return []
        params: list[Any] = []
        for n, (a, key_id, index, path) in enumerate(rows, start=1):
            params += (n, a.chain, a.currency, a.watch_key, a.address, a.foreign_id, a.integration_id,
                       str(a.source), key_id, index, path)  # fmt: skip
        stored = self._sync_all(
            "INSERT INTO addresses (id, chain, currency, watch_key, address, foreign_id, integration_id,"
            " source, key_id, key_index, derivation_path, created_at, active) SELECT m.above + v.column1,"
            " v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, v.column8, v.column9,"
            f" v.column10, v.column11, ?, 1 FROM ({_values(len(rows), 11)}) v,"
            " (SELECT max(coalesce(max(id), 0), ?) AS above FROM addresses) m ORDER BY v.column1"
            f" RETURNING {_ISSUED_COLUMNS}",
            [now, *params, id_offset],
        )
        by_id = {row[0]: _issued(row) for row in stored}
        first = min(by_id)
        return [by_id[first + n] for n in range(len(rows))]

    def key_descriptor(self, key_id: str) -> str | None:
        rows = self._sync_all("SELECT descriptor FROM public_keys WHERE key_id = ?", (key_id,))
        return rows[0][0] if rows else None

    def reactivate(self, address_id: int, foreign_id: str, scan_from: int | None) -> None:
        self._direct.execute(_SET_ADDRESS, (foreign_id, 1, scan_from, address_id))


def _write_on_thread(conn: sqlite3.Connection, work: Callable[[ThreadTransaction], T]) -> T:
    """Store.write's transaction, on the writer's thread; rolled back as `Store.transaction` rolls back."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(ThreadTransaction(conn))
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return result


def _values(rows: int, columns: int) -> str:
    """A VALUES list of `rows` rows of `columns` parameters (named column1, column2, ... by SQLite)."""
    row = "(" + ", ".join("?" * columns) + ")"
    return "VALUES " + ", ".join([row] * rows)


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _take_lock(path: str) -> int:
    """An exclusive lock beside the database: a second daemon on the same store refuses to start."""
    lock_path = path + ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"{path} is in use by another deposit-watcher (lock {lock_path} is held)") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
