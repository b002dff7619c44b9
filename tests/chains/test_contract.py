"""The adapter contract (chains.base.ChainAdapter), stated once and run against every adapter: the
scripted chain of the follower tests, bitcoin-core and esplora over a real bcoin, evm over a real anvil.

Each test takes a `driver` (tests/chains/drivers.py) and is generated for every adapter whose driver
has the features it needs (`@pytest.mark.needs`); the tests without that mark are the core scenarios,
and test_every_adapter_runs_the_core_scenarios checks that each adapter got them all.
"""

from __future__ import annotations

import inspect
import itertools
import sys
from collections.abc import Awaitable, Callable

import pytest

from chains.base import (
    AddressError,
    BaseAdapter,
    ChainAdapter,
    ChainDataError,
    ChainError,
    MempoolScan,
    NodeUnavailable,
    Transfer,
    TxState,
    WatchList,
    WrongChain,
)
from chains.registry import adapter_class
from tests.chains.conftest import DRIVERS, GENERATED
from tests.chains.drivers import MEMPOOL, REPLACE, ChainDriver
from tests.chains.helpers import mined_scan, pay_a_new_address

NOTHING = WatchList({})


def core_scenarios() -> set[str]:
    """The tests of this module every adapter must run: those taking a driver and needing no feature."""
    module = sys.modules[__name__]
    return {
        name
        for name, function in inspect.getmembers(module, inspect.isfunction)
        if name.startswith("test_")
        and "driver" in inspect.signature(function).parameters
        and not any(mark.name == "needs" for mark in getattr(function, "pytestmark", []))
    }


def test_every_adapter_runs_the_core_scenarios() -> None:
    core = core_scenarios()
    assert len(core) >= 12
    assert set(DRIVERS) == {"scripted", "bitcoin-core", "esplora", "evm"}
    for name in DRIVERS:
        assert core <= GENERATED[name], f"{name} misses {sorted(core - GENERATED[name])}"
    # The optional scenarios run where a chain can produce them, and on more than one adapter.
    assert {"scripted", "bitcoin-core", "esplora"} <= {
        n for n in DRIVERS if "test_mempool_payment_then_mined" in GENERATED[n]
    }
    assert {"scripted", "evm"} <= {
        n for n in DRIVERS if "test_fate_of_a_replaced_transaction" in GENERATED[n]
    }


# ------------------------------------------------------------------------------- class and identity


def test_registered_with_the_declared_class_values(driver: ChainDriver) -> None:
    cls = driver.adapter_class
    if driver.entry_point is not None:
        assert adapter_class(driver.entry_point) is cls
    assert (cls.capabilities, cls.native_decimals, cls.default_min_confirmations) == driver.class_values
    assert issubclass(cls, BaseAdapter)
    assert isinstance(driver.adapter(), ChainAdapter)


def test_watch_keys_and_display_addresses(driver: ChainDriver) -> None:
    cls, spec, network = driver.adapter_class, driver.currency, driver.network
    addresses = [driver.new_address() for _ in range(4)]
    keys = [cls.watch_key(spec, address, network) for address in addresses]
    assert len(set(keys)) == 4
    assert [cls.display_address(spec, key, network) for key in keys] == addresses
    with pytest.raises(AddressError):
        cls.watch_key(spec, driver.bad_address, network)


async def test_open_returns_the_chain_identity(driver: ChainDriver) -> None:
    adapter = driver.adapter()
    identity = await adapter.open()
    assert identity == driver.identity()
    assert await adapter.open() == identity  # the follower opens again after an outage


async def test_open_on_another_chain_is_wrong_chain(driver: ChainDriver) -> None:
    wrong = driver.wrong_chains()
    assert wrong
    for overrides, message in wrong:
        with pytest.raises(WrongChain, match=message):
            await driver.adapter(**overrides).open()


# ---------------------------------------------------------------------------------- blocks and refs


async def test_block_refs(driver: ChainDriver) -> None:
    adapter = driver.adapter()
    driver.mine(2)
    tip = driver.tip()
    head = await adapter.head()
    assert (head.height, head.block_hash) == (tip, driver.block_hash(tip))
    assert await adapter.block_ref(tip) == head
    parent = await adapter.block_ref(tip - 1)
    assert parent is not None and (parent.height, parent.block_hash) == (tip - 1, head.parent_hash)
    assert head.parent_hash == driver.block_hash(tip - 1)
    assert await adapter.block_ref(tip + 1) is None
    genesis = await adapter.block_ref(0)
    assert genesis is not None and (genesis.height, genesis.parent_hash) == (0, driver.genesis_parent)


async def test_scanned_refs_chain_together(driver: ChainDriver) -> None:
    adapter = driver.adapter()
    driver.mine(3)
    tip = driver.tip()
    scans = await adapter.scan(1, tip, NOTHING)
    assert [s.ref.height for s in scans] == list(range(1, tip + 1))
    assert all(b.ref.parent_hash == a.ref.block_hash for a, b in itertools.pairwise(scans))
    assert [await adapter.block_ref(h) for h in (tip - 2, tip - 1, tip)] == [s.ref for s in scans[-3:]]
    assert scans[-1].ref == await adapter.head()
    assert all(s.transfers == () and s.spends == () for s in scans)  # nothing watched, nothing found
    assert await adapter.scan(tip, tip - 1, NOTHING) == []


async def test_scan_past_the_tip_is_chain_data_error(driver: ChainDriver) -> None:
    adapter = driver.adapter()
    tip = driver.tip()
    with pytest.raises(ChainDataError, match=driver.past_tip_error(tip)):
        await adapter.scan(tip, tip + 2, NOTHING)
    with pytest.raises(ChainDataError):
        await adapter.scan(tip + 1, tip + 1, NOTHING)
    assert [s.ref.height for s in await adapter.scan(tip, tip, NOTHING)] == [tip]  # still answering


# ------------------------------------------------------------------------------------------- transfers


async def test_transfers_in_block_order_with_stable_indexes(driver: ChainDriver) -> None:
    adapter = driver.adapter()
    first, second = driver.new_address(), driver.new_address()
    watch = driver.watch([first, second])
    paid = [(first, 1, 10_001), (second, 2, 20_002), (first, 1, 30_003)]
    txids = [driver.pay(address, amount) for address, _, amount in paid]
    scan = await mined_scan(driver, adapter, watch)
    expected = {driver.expected(txid, a, w, amount) for txid, (a, w, amount) in zip(txids, paid, strict=True)}
    assert set(scan.transfers) == expected and len(scan.transfers) == 3
    order = driver.block_txids(scan.ref.height)
    positions = [order.index(t.txid) for t in scan.transfers]
    assert positions == sorted(positions)  # in the order of the block's transactions
    assert len({(t.txid, t.index) for t in scan.transfers}) == 3  # three deposit identities
    # Scanning again, or with more addresses watched, gives the same transfers with the same indexes.
    assert await adapter.scan(scan.ref.height, scan.ref.height, watch) == [scan]
    wider = driver.watch([first, second, driver.new_address()])
    assert await adapter.scan(scan.ref.height, scan.ref.height, wider) == [scan]
    assert await driver.adapter().scan(scan.ref.height, scan.ref.height, watch) == [scan]


async def test_unwatched_payments_are_not_reported(driver: ChainDriver) -> None:
    adapter = driver.adapter()
    watched = driver.new_address()
    driver.pay(driver.new_address(), 5_000)
    scan = await mined_scan(driver, adapter, driver.watch([watched]))
    assert scan.transfers == ()
    assert len(driver.block_txids(scan.ref.height)) >= 1


async def test_pending_then_mined(driver: ChainDriver) -> None:
    """tx_fate: PENDING while the payment waits, MINED (with its height, where the node tells) once in a
    block; and the block's transfer is the exact Transfer the node's data gives."""
    adapter = driver.adapter()
    deposit = pay_a_new_address(driver, 43_210)
    watch, expected = deposit.watch, deposit.expected
    assert (await adapter.tx_fate(expected)).state is TxState.PENDING
    scan = await mined_scan(driver, adapter, watch)
    assert scan.transfers == (expected,)
    await _refresh_mempool(driver, adapter, watch)
    fate = await adapter.tx_fate(expected)
    height = scan.ref.height if driver.mined_fate_has_height else None
    assert (fate.state, fate.block_height) == (TxState.MINED, height), fate


async def test_fate_of_an_unknown_transaction(driver: ChainDriver) -> None:
    adapter = driver.adapter()
    transfer = Transfer(driver.currency.code, 1, driver.new_address(), 1, driver.unknown_txid, -1)
    assert await adapter.tx_fate(transfer) == driver.unknown_fate


# ---------------------------------------------------------------------------------------------- reorgs


async def test_reorg_moves_the_deposit_to_another_block(driver: ChainDriver) -> None:
    adapter = driver.adapter()
    deposit = pay_a_new_address(driver, 88_888)
    watch, txid, expected = deposit.watch, deposit.txid, deposit.expected
    before = await mined_scan(driver, adapter, watch)
    assert before.transfers == (expected,)
    new_height = driver.reorg_moving(txid)
    head = await adapter.head()
    assert head.height == driver.tip() >= new_height
    assert head.block_hash == driver.block_hash(head.height)
    replaced = await adapter.block_ref(before.ref.height)
    assert replaced is not None and replaced.block_hash != before.ref.block_hash
    assert replaced.block_hash == driver.block_hash(before.ref.height)
    assert replaced.parent_hash == before.ref.parent_hash  # the fork is right below the old block
    scans = await adapter.scan(before.ref.height, head.height, watch)
    assert scans[0].ref == replaced
    assert all(b.ref.parent_hash == a.ref.block_hash for a, b in itertools.pairwise(scans))
    # Same txid, index and amount, in the new block.
    assert [(s.ref.height, t) for s in scans for t in s.transfers] == [(new_height, expected)]
    await _refresh_mempool(driver, adapter, watch)
    fate = await adapter.tx_fate(expected)
    height = new_height if driver.mined_fate_has_height else None
    assert (fate.state, fate.block_height) == (TxState.MINED, height), fate


async def test_reorg_dropping_the_deposit(driver: ChainDriver) -> None:
    adapter = driver.adapter()
    deposit = pay_a_new_address(driver, 77_777)
    watch, txid, expected = deposit.watch, deposit.txid, deposit.expected
    before = await mined_scan(driver, adapter, watch)
    driver.reorg_dropping(txid)
    scans = await adapter.scan(before.ref.height, driver.tip(), watch)
    assert scans[0].ref != before.ref and all(s.transfers == () for s in scans)
    if MEMPOOL in driver.features and driver.dropped_state is TxState.PENDING:
        assert (await adapter.mempool_scan(watch)).transfers == (expected,)  # back in the mempool
    assert (await adapter.tx_fate(expected)).state is driver.dropped_state


@pytest.mark.needs(REPLACE)
async def test_fate_of_a_replaced_transaction(driver: ChainDriver) -> None:
    adapter = driver.adapter()
    deposit = pay_a_new_address(driver, 5)
    txid, expected = deposit.txid, deposit.expected
    assert expected.sender is not None and expected.nonce is not None
    assert driver.replace(txid) != txid
    fate = await adapter.tx_fate(expected)
    assert (fate.state, fate.reason) == (TxState.REPLACED, driver.replaced_reason(expected))


# --------------------------------------------------------------------------------------------- mempool


async def test_the_mempool_capability_is_declared(driver: ChainDriver) -> None:
    """`mempool` in capabilities if and only if mempool_scan reports unconfirmed payments."""
    adapter = driver.adapter()
    deposit = pay_a_new_address(driver, 12_345)
    watch = deposit.watch
    if MEMPOOL in driver.features:
        assert "mempool" in adapter.capabilities
        scan = await adapter.mempool_scan(watch)
        assert scan.transfers == (deposit.expected,)
        assert await adapter.mempool_scan(NOTHING) == MempoolScan()
    else:
        assert "mempool" not in adapter.capabilities
        with pytest.raises(NotImplementedError, match="does not declare the 'mempool' capability"):
            await adapter.mempool_scan(watch)
    driver.mine()


@pytest.mark.needs(MEMPOOL)
async def test_mempool_payment_then_mined(driver: ChainDriver) -> None:
    adapter = driver.adapter()
    deposit = pay_a_new_address(driver, 54_321)
    watch, expected = deposit.watch, deposit.expected
    assert (await adapter.mempool_scan(watch)).transfers == (expected,)
    scan = await mined_scan(driver, adapter, watch)
    assert scan.transfers == (expected,)  # the same Transfer as in the mempool
    assert (await adapter.mempool_scan(watch)).transfers == ()  # mined: out of the mempool


# ------------------------------------------------------------------------------- outages and observer


async def test_an_unreachable_node_is_unavailable(driver: ChainDriver) -> None:
    adapter = driver.unreachable_adapter()
    transfer = Transfer(driver.currency.code, 1, driver.new_address(), 1, driver.unknown_txid, -1)
    calls: list[Callable[[], Awaitable[object]]] = [
        adapter.open,
        adapter.head,
        lambda: adapter.block_ref(1),
        lambda: adapter.scan(1, 1, NOTHING),
        lambda: adapter.tx_fate(transfer),
    ]
    if MEMPOOL in driver.features:
        calls.append(lambda: adapter.mempool_scan(driver.watch([driver.new_address()])))
    for call in calls:
        with pytest.raises(NodeUnavailable):
            await call()
    await adapter.close()


async def test_a_node_that_stops_is_unavailable_until_it_is_back(driver: ChainDriver) -> None:
    adapter = driver.adapter()
    await adapter.open()
    await adapter.head()  # a connection to reuse, which the stop cuts
    await driver.stop_node()
    with pytest.raises(NodeUnavailable):
        await adapter.head()
    if MEMPOOL in driver.features:
        with pytest.raises(NodeUnavailable):
            await adapter.mempool_scan(driver.watch([driver.new_address()]))
    await driver.start_node()
    assert (await adapter.head()).height == driver.tip()


async def test_the_observer_is_told_of_every_node_call(driver: ChainDriver) -> None:
    seen: list[tuple[str, str, float]] = []
    adapter = driver.adapter(rpc_observer=lambda method, outcome, s: seen.append((method, outcome, s)))
    before = driver.node_requests()
    await adapter.open()
    head = await adapter.head()
    await adapter.scan(head.height, head.height, driver.watch([driver.new_address()]))
    assert seen and all(outcome == "ok" for _, outcome, _ in seen)
    # A node's "not found" may be a rejected call that the adapter turns into an answer.
    await adapter.tx_fate(Transfer(driver.currency.code, 1, driver.new_address(), 1, driver.unknown_txid, -1))
    outcomes = {"ok"} | {cls.__name__ for cls in _chain_errors()}
    assert all(
        isinstance(method, str) and method and outcome in outcomes and s >= 0 for method, outcome, s in seen
    )
    if before is not None:
        assert len(seen) == driver.node_requests() - before  # one report per request, no more, no less
    await driver.stop_node()
    with pytest.raises(NodeUnavailable):
        await adapter.head()
    assert seen[-1][1] == "NodeUnavailable"
    await driver.start_node()


def _chain_errors() -> set[type[ChainError]]:
    found: set[type[ChainError]] = set()
    pending: list[type[ChainError]] = [ChainError]
    while pending:
        cls = pending.pop()
        found.add(cls)
        pending += cls.__subclasses__()
    return found


async def _refresh_mempool(driver: ChainDriver, adapter: ChainAdapter, watch: WatchList) -> None:
    """A fresh mempool listing, as the follower polls it before asking fates (Bitcoin adapters answer
    tx_fate from a listing up to a second old)."""
    if MEMPOOL in driver.features:
        await adapter.mempool_scan(watch)
