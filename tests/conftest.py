"""Shared pytest fixtures, one section per subject. Real local nodes, never mocks of them."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from devnet import btc_tools
from devnet.anvil import AnvilNode
from devnet.bcoin import BcoinNode
from devnet.postgres import PostgresServer
from tests.browser import chromium_path

# ------------------------------------------------------------------------------- anvil (EVM devnet)


@pytest.fixture(scope="module")
def anvil() -> Iterator[AnvilNode]:
    """A real anvil shared by a test module, auto-mining every transaction (chain id 31337).

    Tests sharing it must not rewrite history (reorg, rollback, revert, mining mode): use `fresh_anvil`.
    """
    with AnvilNode() as node:
        yield node


@pytest.fixture
def fresh_anvil() -> Iterator[AnvilNode]:
    """A real anvil of its own for one test, auto-mining; free to reorganise or switch mining off."""
    with AnvilNode() as node:
        yield node


# ------------------------------------------------------------------ bcoin (Bitcoin regtest devnet)


@pytest.fixture(scope="module")
def bcoin() -> Iterator[BcoinNode]:
    """A real bcoin regtest node shared by a test module, funded (`btc_tools.fund`, height 106).

    Its wallet pays from confirmed non-coinbase outputs; `btc_tools.mine` rewards a throwaway address.
    Tests sharing it must not rewrite history (reorg, invalidateblock): use `fresh_bcoin`. Never skipped:
    without node_modules it fails with the `npm ci` hint.
    """
    with BcoinNode() as node:
        btc_tools.fund(node)
        yield node


@pytest.fixture
def fresh_bcoin() -> Iterator[BcoinNode]:
    """A real, funded bcoin regtest node of its own for one test; free to reorganise."""
    with BcoinNode() as node:
        btc_tools.fund(node)
        yield node


# ------------------------------------------------------------- PostgreSQL (the store of several daemons)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server (Debian's package, a cluster in a temp directory) for the whole run:
    tests get a database of their own from `pg_url`. Tests that restart, kill or pause the server use
    `fresh_postgres`. Never skipped: without the package it fails with the install hint."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def pg_url(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    """The URL of a new, empty database on the shared server, named after the test."""
    return postgres.create_database(_database_name(request.node.name))


@pytest.fixture
def fresh_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of its own for one test; free to kill, restart or pause it."""
    with PostgresServer() as server:
        yield server


_databases = itertools.count(1)


def _database_name(test_name: str) -> str:
    # PostgreSQL names are at most 63 bytes; the counter keeps a parametrized test's databases apart.
    slug = "".join(c if c.isalnum() else "_" for c in test_name.lower())[:40]
    return f"t{next(_databases)}_{slug}"


# ------------------------------------------------------------------ the store, on either backend


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store test opens its store (`Store.open`), once per backend: an SQLite file in the test's
    temp directory, then a fresh database on the shared PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "w.sqlite3")
    url: str = request.getfixturevalue("pg_url")
    return url


# ------------------------------------------------------------------------ Chromium (the pages' tests)


@pytest.fixture(scope="module")
def chromium() -> str:
    """The system browser (Debian's chromium), or the module skipped (failed in CI) before any node
    starts: request it first in a browser test module's world fixture."""
    return chromium_path()
