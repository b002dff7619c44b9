"""The PostgreSQL store's own matters, on a real server: its schema versions and the upgrade from each,
the write lock shared by processes, Store.write's thread bridge and its per-transaction hook, a lost
server, and the password (database.password_file) that is never shown. The store's behaviour itself is
tested on both backends by the modules taking `store_location` (test_store.py, test_follower.py, ...)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from devnet.postgres import PostgresServer
from watcher.config import load_config, summary
from watcher.database_url import DATABASE_TIMEOUT_S
from watcher.errors import ConfigError, StoreError
from watcher.model import DepositStatus, OutboxState, Plan
from watcher.pg_schema import PG_MIGRATIONS
from watcher.store import MIGRATIONS, NewAddress, Store, StoreTransaction, ThreadTransaction
from watcher.store_open import open_store
from watcher.store_pg import BeginCheck, PgStore, PgTransaction

ALICE = NewAddress("eth", "ETH", b"\x01" * 20, "0xA", "c-1")


async def _at_version(url: str, version: int, *rows: str) -> None:
    """A database left at `version` (the first `version` migrations), with `rows` inserted after."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for script in PG_MIGRATIONS[:version]:
            await conn.execute(script)
        await conn.execute("INSERT INTO schema_version VALUES ($1)", version)
        for row in rows:
            await conn.execute(row)
    finally:
        await conn.close()


async def _fetch(url: str, sql: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


def test_both_backends_have_the_same_schema_versions() -> None:
    assert len(PG_MIGRATIONS) == len(MIGRATIONS)


async def test_a_new_store_is_at_the_latest_version_and_a_newer_one_is_refused(pg_url: str) -> None:
    store = await Store.open(pg_url)
    assert isinstance(store, PgStore) and await store.integrity_check() == "ok"
    await store.close()
    assert await _fetch(pg_url, "SELECT version FROM schema_version") == [(len(PG_MIGRATIONS),)]
    conn = await asyncpg.connect(pg_url)
    await conn.execute("UPDATE schema_version SET version = $1", len(PG_MIGRATIONS) + 1)
    await conn.close()
    with pytest.raises(StoreError, match="newer than this program"):
        await Store.open(pg_url)


@pytest.mark.parametrize("version", range(len(PG_MIGRATIONS)))
async def test_migrations_from_every_earlier_schema_version(pg_url: str, version: int) -> None:
    await _at_version(pg_url, version)
    store = await Store.open(pg_url)
    try:
        await store.sync_addresses("eth", [ALICE])
        assert await store.watch_keys("eth") == {"ETH": {ALICE.watch_key: 1}}
        assert await store.integrity_check() == "ok"
    finally:
        await store.close()
    assert await _fetch(pg_url, "SELECT version FROM schema_version") == [(len(PG_MIGRATIONS),)]


async def test_a_schema_1_store_keeps_its_rows_as_the_merchant_integrations(pg_url: str) -> None:
    await _at_version(
        pg_url,
        1,
        "INSERT INTO addresses (id, chain, currency, watch_key, address, foreign_id)"
        " VALUES (7, 'eth', 'ETH', '\\x0101010101010101010101010101010101010101', '0xA', 'c-1')",
        "INSERT INTO deposits (id, chain, currency, address_id, txid, tx_index, amount, confirmations,"
        " status, first_seen_at, updated_at)"
        " VALUES (3, 'eth', 'ETH', 7, '0xt', -1, '5', 0, 'not_confirmed', 1, 1)",
        "INSERT INTO outbox (deposit_id, status, body, state, created_at, next_attempt_at)"
        " VALUES (3, 'not_confirmed', '\\x7b7d', 'pending', 1, 1)",
    )
    merchant = "00000000-0000-0000-0000-000000000000"
    store = await Store.open(pg_url)
    try:
        [address] = await store.issued_addresses(merchant)
        assert (address.id, address.source, address.active, address.key_id) == (7, "config", True, None)
        [due] = await store.due_callbacks(now=2, limit=10)
        assert (due.integration_id, due.deposit_id, due.body) == (merchant, 3, b"{}")
        assert (await store.watch_keys("eth"))["ETH"].get(b"\x01" * 20) == 7
        await store.sync_addresses("eth", [ALICE, NewAddress("eth", "ETH", b"\x02" * 20, "0xB", "c-2")])
        assert sorted((await store.watch_keys("eth"))["ETH"].values()) == [7, 8]  # largest id + 1
        async with store.transaction() as tx:  # the deposits' counter was raised by the explicit id 3
            assert await tx.next_deposit_id() == 4
    finally:
        await store.close()


async def test_a_schema_2_store_keeps_its_outbox_and_attempts(pg_url: str) -> None:
    await _at_version(
        pg_url,
        2,
        "INSERT INTO addresses (id, chain, currency, watch_key, address, foreign_id, source)"
        " VALUES (7, 'eth', 'ETH', '\\x01', '0xA', 'c-1', 'api')",
        "INSERT INTO deposits (id, chain, currency, address_id, txid, tx_index, amount, confirmations,"
        " status, first_seen_at, updated_at)"
        " VALUES (3, 'eth', 'ETH', 7, '0xt', -1, '5', 0, 'confirmed', 1, 1)",
        "INSERT INTO outbox (id, deposit_id, status, body, state, attempts, created_at, first_attempt_at,"
        " next_attempt_at, delivered_at)"
        " VALUES (40, 3, 'not_confirmed', '\\x7b7d', 'delivered', 1, 1, 1, 1, 2)",
        "INSERT INTO outbox (id, deposit_id, status, body, state, created_at, next_attempt_at)"
        " VALUES (41, 3, 'confirmed', '\\x5b5d', 'pending', 3, 3)",
        "INSERT INTO attempts (outbox_id, attempted_at, duration_ms, http_status, error, response_excerpt)"
        " VALUES (40, 2, 1.5, 200, '', 'ok')",
    )
    store = await Store.open(pg_url)
    try:
        entries = await store.outbox_entries()
        assert [(e.id, e.deposit_id, e.payment_id, e.status, e.state, e.body) for e in entries] == [
            (40, 3, None, DepositStatus.NOT_CONFIRMED, OutboxState.DELIVERED, b"{}"),
            (41, 3, None, DepositStatus.CONFIRMED, OutboxState.PENDING, b"[]"),
        ]
        [attempt] = await store.attempts(40)
        assert (attempt.http_status, attempt.response_excerpt) == (200, "ok")
        again = await store.resend(3, now=6.0)
        assert again is not None and again.id == 42 and again.body == b"[]"  # ids go on after the old ones
    finally:
        await store.close()
    with pytest.raises(asyncpg.CheckViolationError):  # neither a deposit nor a payment
        await _fetch(
            pg_url,
            "INSERT INTO outbox (status, body, state, created_at, next_attempt_at)"
            " VALUES ('linked', '\\x00', 'pending', 1, 1)",
        )


async def test_daemons_opening_one_new_database_at_once_migrate_it_once(pg_url: str) -> None:
    stores = await asyncio.gather(*(Store.open(pg_url, exclusive=True) for _ in range(3)))
    try:
        assert await _fetch(pg_url, "SELECT version FROM schema_version") == [(len(PG_MIGRATIONS),)]
    finally:
        for store in stores:
            await store.close()


async def test_writes_of_two_stores_on_one_database_run_one_at_a_time(pg_url: str) -> None:
    """Two processes' stores (the daemon's, the CLI's) adding addresses at once: each transaction's
    "largest id + 1" sees the other's committed rows, as with SQLite's single writer."""
    first, second = await Store.open(pg_url), await Store.open(pg_url)
    try:
        rows = [NewAddress("eth", "ETH", bytes([n]) * 20, f"0x{n}", f"c-{n}") for n in range(1, 41)]
        await asyncio.gather(
            *(
                (first if n % 2 else second).sync_addresses(f"chain-{n}", [replace_chain(r, n) for r in rows])
                for n in range(6)
            )
        )
        ids = await first._all("SELECT id FROM addresses ORDER BY id")
        assert [i for (i,) in ids] == list(range(1, 241))
    finally:
        await first.close()
        await second.close()


async def foreign_id(store: Store, address_id: int) -> str:
    address = await store.address(address_id)
    assert address is not None
    return address.foreign_id


def replace_chain(row: NewAddress, n: int) -> NewAddress:
    return NewAddress(f"chain-{n}", f"C{n}", row.watch_key, row.address, row.foreign_id)


async def test_write_runs_work_in_a_thread_one_transaction_and_rolls_back_on_error(pg_url: str) -> None:
    store = await Store.open(pg_url)
    loop_thread = threading.get_ident()
    try:
        await store.sync_addresses("eth", [ALICE])

        def work(tx: ThreadTransaction) -> int:
            assert threading.get_ident() != loop_thread
            tx.reactivate(1, "renamed", None)
            assert tx.key_descriptor("nope") is None
            return tx.run(tx.next_key_index("k", 5))

        assert await store.write(work) == 5
        assert await foreign_id(store, 1) == "renamed"

        def failing(tx: ThreadTransaction) -> None:
            tx.reactivate(1, "lost", None)
            raise ValueError("refused")

        with pytest.raises(ValueError, match="refused"):
            await store.write(failing)
        assert await foreign_id(store, 1) == "renamed"
    finally:
        await store.close()


async def test_a_cancelled_write_holds_the_writer_until_its_transaction_ends(pg_url: str) -> None:
    store = await Store.open(pg_url)
    started, release = threading.Event(), threading.Event()
    try:
        await store.sync_addresses("eth", [ALICE])

        def slow(tx: ThreadTransaction) -> None:
            tx.reactivate(1, "slow", None)
            started.set()
            release.wait(10)

        task = asyncio.ensure_future(store.write(slow))
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        await asyncio.sleep(0.05)
        assert not task.done()  # still waiting for the thread, holding the lock
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await foreign_id(store, 1) == "slow"  # it committed
        await store.sync_addresses("eth", [ALICE])  # and the writer is free again
    finally:
        release.set()
        await store.close()


async def test_before_write_runs_first_in_every_write_transaction(pg_url: str) -> None:
    store = await Store.open(pg_url)
    assert isinstance(store, PgStore)
    seen: list[str] = []

    async def check(tx: PgTransaction) -> None:
        # inside the transaction, before the caller's statements: what it reads is not yet written
        seen.append(str((await tx._all("SELECT count(*) FROM addresses"))[0][0]))
        if len(seen) == 3:
            raise StoreError("not the leader any more")

    try:
        store.before_write = check
        await store.sync_addresses("eth", [ALICE])
        await store.write(lambda tx: tx.reactivate(1, "x", None))
        with pytest.raises(StoreError, match="not the leader"):
            await store.sync_addresses("eth", [NewAddress("eth", "ETH", b"\x02" * 20, "0xB", "c-2")])
        assert seen == ["0", "1", "1"]
        store.before_write = None
        assert len(await store.watch_keys("eth")) == 1 and len((await store.watch_keys("eth"))["ETH"]) == 1
    finally:
        await store.close()


async def test_a_lost_server_is_a_store_error_until_it_is_back(fresh_postgres: PostgresServer) -> None:
    url = fresh_postgres.create_database("lost")
    store = await Store.open(url)
    try:
        await store.sync_addresses("eth", [ALICE])
        fresh_postgres.kill()
        with pytest.raises(StoreError) as failed:
            await store.sync_addresses("eth", [ALICE])
        assert store.write_error is not None and "lost" in str(failed.value)
        with pytest.raises(StoreError):
            await store.deposits()
        fresh_postgres.restart()
        await store.sync_addresses("eth", [ALICE, NewAddress("eth", "ETH", b"\x02" * 20, "0xB", "c-2")])
        assert store.write_error is None
        assert len((await store.watch_keys("eth"))["ETH"]) == 2
    finally:
        await store.close()


# --------------------------------------------------------------------------------- config, password

CONFIG = """\
network: regtest
database: {database}
merchant: {{callback_url: "http://127.0.0.1:8390/callbacks", key: k, secret: s}}
chains:
  ethereum:
    adapter: evm
    rpc_url: http://127.0.0.1:8545
    currencies:
      ETH: {{}}
"""
PASSWORD = "s3cret-Pa55"


def _config_file(tmp_path: Path, database: str) -> str:
    path = tmp_path / "watcher.yaml"
    path.write_text(CONFIG.format(database=database))
    return str(path)


def test_the_config_takes_a_url_with_a_password_file_and_never_shows_the_password(tmp_path: Path) -> None:
    (tmp_path / "pgpass").write_text(PASSWORD + "\n")
    url = "postgresql://watcher@127.0.0.1:5432/deposits"
    config = load_config(_config_file(tmp_path, f"{{url: '{url}', password_file: pgpass, id_offset: 9}}"))
    assert (config.database, config.database_password, config.id_offset) == (url, PASSWORD, 9)
    assert PASSWORD not in repr(config) and PASSWORD not in summary(config)
    assert f"database: {url}, new ids above 9\n" in summary(config)
    plain = load_config(_config_file(tmp_path, f"{{url: '{url}'}}"))
    assert plain.database_password is None
    assert (config.database_timeout_s, plain.database_timeout_s) == (DATABASE_TIMEOUT_S, DATABASE_TIMEOUT_S)
    quick = load_config(_config_file(tmp_path, f"{{url: '{url}', timeout_s: 2.5}}"))
    assert quick.database_timeout_s == 2.5


@pytest.mark.parametrize(
    ("database", "message"),
    [
        ("{url: 'postgresql://watcher:hunter2@db/deposits'}", "holds a password"),
        ("{url: 'mysql://watcher@db/deposits'}", "not a postgresql:// URL"),
        ("{url: 'postgresql://watcher@db'}", "needs a host and a database"),
        ("{url: 'postgresql://watcher@db/x', path: w.sqlite3}", "give only one of path, url"),
        ("{path: w.sqlite3, password_file: pgpass}", "for a PostgreSQL `url`"),
        ("{path: w.sqlite3, timeout_s: 5}", "timeout_s is for a PostgreSQL `url`"),
        ("{url: 'postgresql://watcher@db/x', timeout_s: 0}", "must be a positive number"),
        ("{url: 'postgresql://watcher@db/x', password_file: missing}", "cannot read"),
        ("{id_offset: 3}", "one of path, url is required"),
    ],
)
def test_bad_database_settings_are_refused_naming_the_field(
    tmp_path: Path, database: str, message: str
) -> None:
    (tmp_path / "pgpass").write_text(PASSWORD)
    with pytest.raises(ConfigError, match=message) as refused:
        load_config(_config_file(tmp_path, database))
    assert refused.value.key.startswith("database") and "hunter2" not in str(refused.value)


async def test_the_password_file_logs_in_and_a_wrong_one_is_refused_unshown(
    fresh_postgres: PostgresServer, tmp_path: Path
) -> None:
    """A server that asks the role `watcher` for its password (scram-sha-256): the password file's opens
    the store; a wrong one fails with an error that names the database but shows no password."""
    fresh_postgres.psql(f"CREATE ROLE watcher LOGIN PASSWORD '{PASSWORD}'")
    fresh_postgres.psql("CREATE DATABASE deposits OWNER watcher")
    hba = fresh_postgres.data_dir / "pg_hba.conf"
    hba.write_text(
        "host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\nlocal all all trust\n"
    )
    fresh_postgres.psql("SELECT pg_reload_conf()")
    url = f"postgresql://watcher@127.0.0.1:{fresh_postgres.port}/deposits"
    (tmp_path / "pgpass").write_text(PASSWORD)
    config = load_config(_config_file(tmp_path, f"{{url: '{url}', password_file: pgpass}}"))
    store = await open_store(config, exclusive=True)
    try:
        await store.sync_addresses("eth", [ALICE])
        assert store.path == url
    finally:
        await store.close()
    (tmp_path / "wrong").write_text("not-" + PASSWORD)
    wrong = load_config(_config_file(tmp_path, f"{{url: '{url}', password_file: wrong}}"))
    with pytest.raises(StoreError, match="cannot connect") as refused:
        await open_store(wrong)
    assert PASSWORD not in str(refused.value) and url in str(refused.value)
    with pytest.raises(StoreError, match="password"):  # none given where one is asked for
        await Store.open(url)


# --------------------------------------------------------------------------------- batching


class RoundTrips:
    """A TCP proxy in front of the server that counts the round trips of each connection (by the client's
    port): a send from the client that follows an answer from the server, or opens the connection, starts
    one; more sends before an answer belong to it (pipelined). What goes over the wire, whatever the
    client library does."""

    def __init__(self, url: str) -> None:
        self.target = urlsplit(url)
        self.counts: collections.Counter[int] = collections.Counter()
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return self.target._replace(netloc=f"{self.target.username}@127.0.0.1:{port}").geturl()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("peername")[1]
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target.port)
        answered = [True]

        async def to_server() -> None:
            while data := await reader.read(1 << 16):
                if answered[0]:
                    self.counts[client] += 1
                    answered[0] = False
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def to_client() -> None:
            while data := await up_reader.read(1 << 16):
                answered[0] = True
                writer.write(data)
                await writer.drain()
            writer.close()

        with contextlib.suppress(OSError):
            await asyncio.gather(to_server(), to_client())


class Fenced(Exception):
    """What the test's begin check raises in the caller for the server's refusal."""


def lease_check(term: list[int]) -> BeginCheck:
    """A fence as a begin check: the transaction goes on only while the lease row is at `term[0]`, and
    holds a KEY SHARE lock on it to the end (a take-over's FOR UPDATE waits for it)."""
    return BeginCheck(
        lambda: (
            "DO $$ BEGIN IF (SELECT term FROM lease WHERE name = 'leader' FOR KEY SHARE)"
            f" IS DISTINCT FROM {int(term[0])} THEN RAISE EXCEPTION 'lease taken' USING ERRCODE = 'DW001';"
            " END IF; END $$"
        ),
        "DW001",
        lambda e: Fenced(str(e)),
    )


async def test_a_block_batch_is_three_round_trips_whatever_its_number_of_deposits(pg_url: str) -> None:
    """The follower's batch of blocks costs the writer connection three round trips, counted on the wire:
    BEGIN, the write lock and the fence (a begin check); the ledger's load; the plan's writes, the block
    refs and the cursor sent with the COMMIT. The payments of the plan's addresses, which the payment
    tracker reads after the plan, come with the load. A fence that fails refuses the batch whole."""
    from tests.scripted_chain import ScriptedChain, ScriptedChainState
    from tests.test_follower import ALICE as ALICE_KEY
    from tests.test_follower import BOB, follower_for, pay, sync

    ScriptedChain.shared = ScriptedChainState()
    chain = ScriptedChain()
    proxy = RoundTrips(pg_url)
    store = await Store.open(await proxy.start())
    assert isinstance(store, PgStore)
    writer = store._pg_writer._transport.get_extra_info("sockname")[1]
    await _fetch(pg_url, "CREATE TABLE lease (name TEXT PRIMARY KEY, term BIGINT)")
    await _fetch(pg_url, "INSERT INTO lease VALUES ('leader', 7)")
    store.begin_check = lease_check([7])
    try:
        rows = [
            NewAddress("test", "ETH", ALICE_KEY, "alice", "c-1"),
            NewAddress("test", "ETH", BOB, "bob", "c-2"),
        ]
        await store.sync_addresses("test", rows)
        f = await follower_for(store, chain)
        chain.mine(pay("tx0"))
        await sync(f)  # the chain's first steps (its identity, the first cursor)
        counts = []
        for size in (1, 40, 200):
            chain.mine(*(pay(f"tx-{size}-{n}", key=(ALICE_KEY, BOB)[n % 2]) for n in range(size)))
            proxy.counts.clear()
            await sync(f)
            counts.append(proxy.counts[writer])
        assert counts == [3, 3, 3]

        async def payments_read(tx: StoreTransaction, chain: str, plan: Plan, now: float) -> bool:
            assert await tx.payments_for_addresses({t.deposit.address_id for t in plan.inserts}) == []
            return False

        f.after_apply = payments_read
        chain.mine(*(pay(f"tx-p-{n}") for n in range(5)))
        proxy.counts.clear()
        await sync(f)
        assert proxy.counts[writer] == 3
        deposits = await store.deposits()
        assert len(deposits) == 247 and {d.status for d in deposits} == {"confirmed", "not_confirmed"}
        cursor = (await store.chain_state("test")).cursor
        await _fetch(pg_url, "UPDATE lease SET term = 8")  # another daemon took over
        chain.mine(pay("tx-late"))
        with pytest.raises(Fenced, match="lease taken"):
            await sync(f)
        assert (await store.chain_state("test")).cursor == cursor and len(await store.deposits()) == 247
    finally:
        await store.close()
        await proxy.stop()


def test_the_cli_works_on_a_postgresql_store_and_refuses_a_file_backup(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from watcher.cli import main

    path = _config_file(tmp_path, f"{{url: '{pg_url}'}}")
    assert main(["check-config", "--config", path]) == 0
    assert f"database: {pg_url}\n" in capsys.readouterr().out
    assert main(["deposits", "--config", path]) == 0
    assert main(["callbacks", "--config", path]) == 0
    capsys.readouterr()
    code = main(["backup", str(tmp_path / "copy.sqlite3"), "--config", path])
    assert code != 0 and "pg_dump" in capsys.readouterr().err


@pytest.mark.parametrize("compact_above", [0, 3, 1000])
async def test_watch_sets_are_those_of_sqlite(pg_url: str, tmp_path: Path, compact_above: int) -> None:
    """The same rows give the same watch sets on both backends: dicts up to `compact_above` keys, compact
    fingerprint sets beyond, an empty index for a currency the chain has none of, no inactive address."""
    rows = {
        "eth": [
            NewAddress("eth", cur, bytes([n, i]) * 10, f"0x{n}", f"c-{n}")
            for i, cur in enumerate(("ETH", "USDT"))
            for n in range(1, 6)
        ],
        "btc": [NewAddress("btc", "BTC", bytes([n]) * 22, f"bc{n}", f"c-{n}") for n in range(1, 3)],
    }
    sets = []
    for location in (str(tmp_path / "w.sqlite3"), pg_url):
        store = await Store.open(location)
        try:
            for chain, entries in rows.items():
                await store.sync_addresses(chain, entries)
            await store.sync_addresses("eth", rows["eth"][1:])  # the first one no longer watched
            sets.append(await store.watch_sets(["eth", "btc", "none"], compact_above))
        finally:
            await store.close()
    sqlite, postgresql = sets
    assert {c: sorted(s) for c, s in sqlite.items()} == {c: sorted(s) for c, s in postgresql.items()}
    every = [a.watch_key for entries in rows.values() for a in entries] + [b"\xff" * 20]
    for chain, indexes in sqlite.items():
        for currency, index in indexes.items():
            other = postgresql[chain][currency]
            assert (type(index), len(index)) == (type(other), len(other))
            assert [index.get(k) for k in every] == [other.get(k) for k in every]
    assert postgresql["eth"]["ETH"].get(rows["eth"][0].watch_key) is None
