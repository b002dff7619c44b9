"""A running follower's watch set grows without a reload: addresses another process adds (an import, a
CLI take) are watched from the next step, addresses watched again too, a deleted address makes no new
deposit, and a registered address's past is scanned once. The scripted chain stands in for a node (the real
nodes: tests/test_api_e2e.py)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.scripted_chain import ScriptedChain, ScriptedChainState
from tests.test_follower import ALICE, follower_for, pay, sync
from watcher import follower as follower_module
from watcher.model import AddressSource
from watcher.store import NewAddress, Store

CAROL, DAVE = b"carol", b"dave"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(str(tmp_path / "watcher.sqlite3"))
    await s.sync_addresses("test", [NewAddress("test", "ETH", ALICE, "alice", "customer-1")])
    yield s
    await s.close()


@pytest.fixture
def chain() -> ScriptedChain:
    ScriptedChain.shared = ScriptedChainState()
    return ScriptedChain()


def new(key: bytes, foreign_id: str) -> NewAddress:
    return NewAddress("test", "ETH", key, key.decode(), foreign_id, source=AddressSource.IMPORT)


async def deposits_to(store: Store, address: str) -> list[str]:
    return [d.txid for d in await store.deposits(address=address)]


async def test_an_address_imported_by_another_process_is_watched_from_the_next_step(
    store: Store, chain: ScriptedChain
) -> None:
    f = await follower_for(store, chain)
    await sync(f)
    assert await store.import_addresses([new(CAROL, "carol-1")], time.time()) == (1, 0)
    chain.mine(pay("tx-carol", key=CAROL))
    await sync(f)
    assert await deposits_to(store, "carol") == ["tx-carol"]


async def test_a_deleted_address_makes_no_deposit_and_counts_again_once_watched_again(
    store: Store, chain: ScriptedChain
) -> None:
    f = await follower_for(store, chain)
    await store.import_addresses([new(CAROL, "carol-1")], time.time())
    await sync(f)
    [carol] = [
        a
        for a in await store.issued_addresses("00000000-0000-0000-0000-000000000000")
        if a.address == "carol"
    ]
    async with store.transaction() as tx:
        await tx.set_address(carol.id, foreign_id="carol-1", active=False, scan_from=None)
    chain.mine(pay("tx-while-deleted", key=CAROL))
    await sync(f)
    assert await deposits_to(store, "carol") == []
    # Watched again by an import in another process: same id, so only the change log tells the follower.
    assert await store.import_addresses([new(CAROL, "carol-1")], time.time()) == (0, 1)
    chain.mine(pay("tx-after", key=CAROL))
    await sync(f)
    assert await deposits_to(store, "carol") == ["tx-after"]


async def test_the_past_of_a_registered_address_is_scanned_once(store: Store, chain: ScriptedChain) -> None:
    chain.mine(pay("tx-old", key=DAVE, amount=5))
    for _ in range(4):
        chain.mine()
    f = await follower_for(store, chain)
    await sync(f)
    async with store.transaction() as tx:
        await tx.insert_address(new(DAVE, "dave-1"), time.time(), 0, scan_from=0)
    for _ in range(3):
        await sync(f)
        await f.step()  # at the tip: the history scan runs here, one chunk a poll
    [d] = await store.deposits(address="dave")
    assert (d.txid, d.status) == ("tx-old", "confirmed")
    assert await store.pending_scans("test") == []
    assert [e.status for e in await store.outbox_entries(deposit_id=d.id)] == ["confirmed"]


async def test_many_new_addresses_rebuild_the_watch_set(
    store: Store, chain: ScriptedChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(follower_module, "REBUILD_ABOVE", 2)
    f = await follower_for(store, chain)
    await sync(f)
    before = f.watch.by_currency["ETH"]
    rows = [new(bytes([n]) * 20, f"c{n}") for n in range(5)]
    await store.import_addresses(rows, time.time())
    chain.mine(pay("tx-many", key=rows[3].watch_key))
    await sync(f)
    assert f.watch.by_currency["ETH"] is not before
    assert [d.txid for d in await store.deposits() if d.foreign_id == "c3"] == ["tx-many"]


async def test_watch_address_reaches_a_scan_already_holding_the_watch_set(
    store: Store, chain: ScriptedChain
) -> None:
    f = await follower_for(store, chain)
    await sync(f)
    held = f.watch  # what a scan under way holds
    address_id = 10_000
    async with store.transaction() as tx:
        address_id = (await tx.insert_address(new(CAROL, "carol-9"), time.time(), 0)).id
    f.watch_address("ETH", CAROL, address_id, maybe_paid=False)
    assert held.keys_for("ETH").get(CAROL) == address_id and f.watch is held
    f.watch_address("ETH", DAVE, address_id + 1, maybe_paid=True)  # registered: the mempool is matched again
    assert f.watch is not held and f.watch.keys_for("ETH").get(DAVE) == address_id + 1
    # The store's pull finds what the API already added: nothing changes (the mempool is not refetched).
    now_held = f.watch
    f.watch_address("ETH", DAVE, address_id + 1, maybe_paid=True)
    assert f.watch is now_held
