"""The PostgreSQL launcher the store's tests stand on (devnet/postgres.py): a real server that survives a
SIGKILL and a restart with its data, a paused one that answers again once resumed, and a hot standby that
is read-only until promoted."""

from __future__ import annotations

import asyncio

import asyncpg

from devnet.postgres import PostgresServer


def _query(url: str, sql: str, timeout: float = 10) -> object:
    async def run() -> object:
        conn = await asyncpg.connect(url, timeout=timeout)
        try:
            if ";" in sql:
                return await conn.execute(sql)  # several statements: the simple query protocol
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


def test_databases_of_the_shared_server_are_apart(postgres: PostgresServer, pg_url: str) -> None:
    other = postgres.create_database("other_of_pg_url")
    _query(pg_url, "CREATE TABLE mine (x int)")
    assert _query(other, "SELECT count(*) FROM pg_tables WHERE tablename = 'mine'") == 0
    assert _query(pg_url, "SELECT current_setting('fsync')") == "off"


def test_data_survives_kill_and_restart(fresh_postgres: PostgresServer) -> None:
    url = fresh_postgres.create_database("kept")
    _query(url, "CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
    fresh_postgres.kill()
    fresh_postgres.restart()
    assert _query(url, "SELECT x FROM t") == 42
    fresh_postgres.restart()  # a fast shutdown this time
    assert _query(url, "SELECT x FROM t") == 42


def test_paused_server_answers_once_resumed(fresh_postgres: PostgresServer) -> None:
    url = fresh_postgres.url()
    fresh_postgres.pause()
    try:
        try:
            _query(url, "SELECT 1", timeout=2)
            raise AssertionError("a paused server answered")
        except (TimeoutError, OSError):
            pass
    finally:
        fresh_postgres.resume()
    assert _query(url, "SELECT 1") == 1


def test_a_standby_is_read_only_until_promoted(fresh_postgres: PostgresServer) -> None:
    primary = fresh_postgres
    url = primary.create_database("replicated")
    _query(url, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
    with PostgresServer.standby_of(primary) as standby:
        _query(url, "INSERT INTO t VALUES (2)")
        primary.shutdown()  # a fast shutdown sends the standby all the WAL first
        replica = standby.url("replicated")
        assert _query(replica, "SELECT count(*) FROM t") == 2
        try:
            _query(replica, "INSERT INTO t VALUES (3)")
            raise AssertionError("a standby took a write")
        except asyncpg.ReadOnlySQLTransactionError as exc:
            assert "cannot execute INSERT in a read-only transaction" in str(exc)
        standby.promote()
        _query(replica, "INSERT INTO t VALUES (3)")
        assert _query(replica, "SELECT count(*) FROM t") == 3
