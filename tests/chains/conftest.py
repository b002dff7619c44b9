"""Fixtures of the adapter contract suite: one real node of each kind for the whole session, and a
`driver` per test, parametrized over the adapters whose driver has the features the test needs.

A test asks for features with `@pytest.mark.needs("mempool", ...)`; it is generated only for the drivers
that declare them all, so nothing is skipped: a scenario a chain cannot produce is simply not a test
for that chain. GENERATED records which tests each driver got, for the check that every adapter runs
the core scenarios (test_contract.py).

The nodes are shared by every test of the session, and the suite's tests rewrite their history
(shallow reorgs on the tip): each test pays fresh addresses and looks only at the blocks it made.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from devnet import btc_tools
from devnet.anvil import AnvilNode
from devnet.bcoin import BcoinNode
from tests.chains.drivers import (
    BitcoinCoreDriver,
    ChainDriver,
    EsploraDriver,
    EvmDriver,
    ScriptedDriver,
)

DRIVERS: dict[str, type[ChainDriver]] = {
    d.name: d for d in (ScriptedDriver, BitcoinCoreDriver, EsploraDriver, EvmDriver)
}
# driver name -> names of the test functions generated for it.
GENERATED: defaultdict[str, set[str]] = defaultdict(set)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs(*features): the driver features a contract scenario needs")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "driver_name" not in metafunc.fixturenames:
        return
    needed = {feature for mark in metafunc.definition.iter_markers("needs") for feature in mark.args}
    names = [name for name, cls in DRIVERS.items() if needed <= cls.features]
    for name in names:
        GENERATED[name].add(metafunc.function.__name__)
    metafunc.parametrize("driver_name", names)


@pytest.fixture(scope="session")
def contract_bcoin() -> Iterator[BcoinNode]:
    """One funded bcoin regtest node for the suite (see btc_tools.fund)."""
    with BcoinNode() as node:
        btc_tools.fund(node)
        yield node


@pytest.fixture(scope="session")
def contract_anvil() -> Iterator[AnvilNode]:
    """One anvil for the suite, mining only when a driver says so (payments can wait in its pool)."""
    with AnvilNode(no_mining=True) as node:
        yield node


@pytest.fixture
async def driver(driver_name: str, request: pytest.FixtureRequest) -> AsyncIterator[ChainDriver]:
    """The driver of the adapter under test, set up in the test's event loop and closed after it."""
    make: dict[str, Callable[[], ChainDriver]] = {
        "scripted": ScriptedDriver,
        "bitcoin-core": lambda: BitcoinCoreDriver(request.getfixturevalue("contract_bcoin")),
        "esplora": lambda: EsploraDriver(request.getfixturevalue("contract_bcoin")),
        "evm": lambda: EvmDriver(request.getfixturevalue("contract_anvil")),
    }
    chain_driver = make[driver_name]()
    await chain_driver.start()
    try:
        yield chain_driver
    finally:
        await chain_driver.aclose()
