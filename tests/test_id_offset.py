"""`database.id_offset`: new deposit and address ids above a configured offset, on a real store, so a
merchant can keep them in one table with another processor's ids; ids once given never change or repeat."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.scripted_chain import ScriptedChain, ScriptedChainState
from tests.test_follower import ALICE, BOB, follower_for, pay, sync
from watcher.config import load_config, summary
from watcher.reload import live_config, restart_needed
from watcher.store import NewAddress, Store

OFFSET = 1_000_000
ROWS = [
    NewAddress("test", "ETH", ALICE, "alice", "customer-1"),
    NewAddress("test", "ETH", BOB, "bob", "customer-2"),
    NewAddress("test", "TOK", ALICE, "alice", "customer-1"),
]
CAROL = NewAddress("test", "ETH", b"carol", "carol", "customer-3")


@pytest.fixture
def chain() -> ScriptedChain:
    ScriptedChain.shared = ScriptedChainState()
    return ScriptedChain()


async def address_ids(store: Store) -> dict[tuple[str, bytes], int]:
    return {
        (currency, key): address_id
        for currency, keys in (await store.watch_keys("test")).items()
        for key, address_id in keys.items()
    }


async def deposit(
    store: Store, chain: ScriptedChain, txid: str, key: bytes = ALICE
) -> tuple[int, dict[str, object]]:
    """Mine a payment, follow it; the new deposit's id and its first callback body."""
    f = await follower_for(store, chain)
    chain.mine(pay(txid, key=key))
    await sync(f)
    [d] = [d for d in await store.deposits() if d.txid == txid]
    [entry] = await store.outbox_entries(deposit_id=d.id)
    return d.id, json.loads(entry.body)


async def test_a_new_store_gives_ids_above_the_offset_and_callbacks_carry_them(
    store_location: str, chain: ScriptedChain
) -> None:
    store = await Store.open(store_location, id_offset=OFFSET)
    try:
        await store.sync_addresses("test", ROWS)
        ids = await address_ids(store)
        assert sorted(ids.values()) == [OFFSET + 1, OFFSET + 2, OFFSET + 3]
        first, body = await deposit(store, chain, "tx1")
        second, _ = await deposit(store, chain, "tx2", BOB)
        assert (first, second) == (OFFSET + 1, OFFSET + 2)
        # What the merchant receives: the deposit's id and the address's id, both above the offset.
        assert body["id"] == first
        assert body["crypto_address"]["id"] == ids[("ETH", ALICE)]  # type: ignore[index]
        assert body["transactions"][0]["id"] == first  # type: ignore[index]
    finally:
        await store.close()


async def test_an_existing_store_keeps_its_ids_and_continues_above_the_offset(
    store_location: str, chain: ScriptedChain
) -> None:
    path = store_location
    store = await Store.open(path)
    await store.sync_addresses("test", ROWS)
    old_ids = await address_ids(store)
    old_deposit, _ = await deposit(store, chain, "tx1")
    await store.close()
    assert sorted(old_ids.values()) == [1, 2, 3] and old_deposit == 1

    store = await Store.open(path, id_offset=OFFSET)
    try:
        await store.sync_addresses("test", [*ROWS, CAROL])
        ids = await address_ids(store)
        assert {k: v for k, v in ids.items() if k in old_ids} == old_ids  # never renumbered
        assert ids[("ETH", CAROL.watch_key)] == OFFSET + 1
        new_deposit, body = await deposit(store, chain, "tx2", CAROL.watch_key)
        assert new_deposit == OFFSET + 1
        assert (body["id"], body["crypto_address"]["id"]) == (OFFSET + 1, OFFSET + 1)  # type: ignore[index]
        assert [d.id for d in await store.deposits() if d.txid == "tx1"] == [old_deposit]
    finally:
        await store.close()


async def test_raising_the_offset_moves_new_ids_and_lowering_it_never_repeats_one(
    store_location: str, chain: ScriptedChain
) -> None:
    path = store_location
    dave = NewAddress("test", "ETH", b"dave", "dave", "customer-4")
    erin = NewAddress("test", "ETH", b"erin", "erin", "customer-5")
    store = await Store.open(path, id_offset=OFFSET)
    await store.sync_addresses("test", [ROWS[0]])
    first, _ = await deposit(store, chain, "tx1")
    await store.close()

    store = await Store.open(path, id_offset=2 * OFFSET)  # raised: only new ids move
    await store.sync_addresses("test", [ROWS[0], dave])
    raised, _ = await deposit(store, chain, "tx2", dave.watch_key)
    ids = await address_ids(store)
    await store.close()
    assert (first, raised) == (OFFSET + 1, 2 * OFFSET + 1)
    assert (ids[("ETH", ALICE)], ids[("ETH", dave.watch_key)]) == (OFFSET + 1, 2 * OFFSET + 1)

    store = await Store.open(path, id_offset=0)  # lowered (or removed): ids go on from the largest
    try:
        await store.sync_addresses("test", [ROWS[0], dave, erin])
        lowered, _ = await deposit(store, chain, "tx3", erin.watch_key)
        assert lowered == 2 * OFFSET + 2
        assert (await address_ids(store))[("ETH", erin.watch_key)] == 2 * OFFSET + 2
    finally:
        await store.close()


async def test_reopening_with_the_same_offset_changes_nothing(
    store_location: str, chain: ScriptedChain
) -> None:
    path = store_location
    for txid in ("tx1", "tx2"):
        store = await Store.open(path, id_offset=OFFSET)
        try:
            await store.sync_addresses("test", ROWS)
            await deposit(store, chain, txid)
        finally:
            await store.close()
    store = await Store.open(path, id_offset=OFFSET)
    try:
        assert sorted((await address_ids(store)).values()) == [OFFSET + 1, OFFSET + 2, OFFSET + 3]
        assert sorted(d.id for d in await store.deposits()) == [OFFSET + 1, OFFSET + 2]
    finally:
        await store.close()


CONFIG = """\
network: regtest
database: {database}
merchant: {{callback_url: "http://127.0.0.1:8390/callbacks", key: k, secret: s}}
chains:
  ethereum:
    adapter: evm
    rpc_url: http://127.0.0.1:8545
    currencies:
      ETH: {{min_confirmations: 2}}
"""


def test_the_config_takes_a_path_or_a_mapping_with_the_offset(tmp_path: Path) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text(CONFIG.format(database="w.sqlite3"))
    mapped = tmp_path / "mapped.yaml"
    mapped.write_text(CONFIG.format(database="{path: w.sqlite3, id_offset: 5000000}"))
    a, b = load_config(str(plain)), load_config(str(mapped))
    assert (a.database, a.id_offset) == (str(tmp_path / "w.sqlite3"), 0)
    assert (b.database, b.id_offset) == (str(tmp_path / "w.sqlite3"), 5_000_000)
    assert f"database: {b.database}, new ids above 5000000\n" in summary(b)
    assert f"database: {a.database}\n" in summary(a)
    # Fixed for the life of the process: a reload reports it as needing a restart and keeps the old one.
    assert restart_needed(a, b) == ["database"]
    assert live_config(b, a).id_offset == 5_000_000
