"""AddressBook against a real SQLite store and a config loaded from YAML: issuing, registering, scoping by
integration, events. (Payments and the daemon: tests/test_api_e2e.py.)"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from chains.registry import adapter_class
from tests.test_derivation import account
from watcher.address_book import AddressBook
from watcher.config import Config, IntegrationConfig, PublicKeyConfig, load_config
from watcher.errors import RequestRefused
from watcher.model import AddressSource, DepositStatus, IssuedAddress, QueuedCallback
from watcher.store import ImportConflict, NewAddress, Store
from watcher.take_plan import Ask

USDT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
SHOP_A = "0b7a6c3e-5d1f-4e8a-9c2b-1a2b3c4d5e6f"
SHOP_B = "1c8b7d4f-6e2a-4f9b-8d3c-2b3c4d5e6f70"
EVM_ACCOUNT = account("m/44h/60h/0h")
# m/44'/60'/0'/0/0 of "abandon x11 about" (the issue's vector)
FIRST_EVM = "0x9858EfFD232B4033E47d90003D41EC34EcaEda94"

CONFIG = f"""
network: regtest
database: watcher.sqlite3
merchant: {{callback_url: "http://127.0.0.1:1/cb", key: k, secret: s}}
chains:
  ethereum:
    adapter: evm
    rpc_url: http://127.0.0.1:1
    chain_id: 31337
    currencies:
      ETH: {{}}
      USDT: {{contract: "{USDT}", decimals: 6}}
  bitcoin:
    adapter: bitcoin-core
    rpc_url: http://127.0.0.1:2
    currencies:
      BTC: {{}}
"""


def integration(config: Config, id_: str, **keys: str) -> IntegrationConfig:
    public = tuple(
        PublicKeyConfig(chain, adapter_class(config.chain(chain).adapter).parse_public_key(text, "regtest"))
        for chain, text in keys.items()
    )
    return IntegrationConfig(id_, id_[:4], config.merchant, public_keys=public)


@pytest.fixture
async def book(tmp_path: Path, store_location: str) -> AsyncIterator[AddressBook]:
    (tmp_path / "watcher.yaml").write_text(CONFIG)
    config = load_config(str(tmp_path / "watcher.yaml"))
    a = integration(
        config,
        SHOP_A,
        ethereum=EVM_ACCOUNT,
        bitcoin=f"wpkh([73c5da0a/84h/1h/0h]{account('m/84h/1h/0h', 'tpub')}/0/*)",
    )
    b = integration(
        config, SHOP_B, ethereum=account("m/44h/60h/1h"), bitcoin=f"tr({account('m/86h/1h/0h', 'tpub')}/0/*)"
    )
    config = replace(config, integrations=(a, b), database=store_location)
    store = await Store.open(config.database)
    watched: list[object] = []
    yield_book = AddressBook(store, config, lambda issued, key, maybe_paid: watched.append(issued))
    yield_book.watched = watched  # type: ignore[attr-defined]
    try:
        yield yield_book
    finally:
        await store.close()


def shops(book: AddressBook) -> tuple[IntegrationConfig, IntegrationConfig]:
    return book.config.integrations[0], book.config.integrations[1]


async def test_take_gives_one_standing_address_per_customer(book: AddressBook) -> None:
    a, _ = shops(book)
    first, created = await book.take(a, "ETH", "customer-1")
    again, created_again = await book.take(a, "ETH", "customer-1")
    assert (created, created_again) == (True, False)
    assert first == again
    # A bare account xpub does not say its own path: the path is given from the account down.
    assert first.address == FIRST_EVM and first.derivation_path == "…/0/0"
    # One EVM address serves every currency of the chain: the token gets the same index.
    token, created = await book.take(a, "USDT", "customer-1")
    assert created and token.address == FIRST_EVM and token.id != first.id
    second, _ = await book.take(a, "ETH", "customer-2")
    assert second.key_index == 1
    btc, _ = await book.take(a, "BTC", "customer-1")
    assert btc.address.startswith("bcrt1q") and btc.derivation_path == "m/84'/1'/0'/0/0"
    assert book.watched == [first, token, second, btc]  # type: ignore[attr-defined]
    assert await book.highest_indexes(a) == {first.key_id: 1, btc.key_id: 0}


async def test_concurrent_takes_for_one_customer_give_one_address(book: AddressBook) -> None:
    a, _ = shops(book)
    results = await asyncio.gather(*(book.take(a, "BTC", "same") for _ in range(50)))
    assert len({r[0].address for r in results}) == 1
    assert sum(created for _, created in results) == 1
    assert await book.highest_indexes(a) == {results[0][0].key_id: 0}


async def one_batch(book: AddressBook, calls: list[tuple[IntegrationConfig, str, str]]) -> list[object]:
    """The takes `calls` issued as one batch (as the group commit hands them over when they all arrived
    while a transaction held the write lock): what each got, an answer or its refusal, in order."""
    batch = []
    for integration, code, foreign_id in calls:
        chain, currency = book.config.currency(code)
        key = integration.public_key(chain.name)
        assert key is not None
        future: asyncio.Future[tuple[IssuedAddress, bool]] = asyncio.get_running_loop().create_future()
        batch.append((Ask(integration, chain, currency, foreign_id, key), future))
    await book._issue(batch)
    return await asyncio.gather(*(future for _, future in batch), return_exceptions=True)


async def test_takes_in_one_batch_get_what_they_would_one_after_another(book: AddressBook) -> None:
    a, b = shops(book)
    calls = [(a, "ETH", "c1"), (a, "USDT", "c1"), (a, "ETH", "c2"), (a, "BTC", "c1"), (b, "ETH", "c1")]
    got = await one_batch(book, [*calls, (a, "ETH", "c1")])
    eth1, usdt1, eth2, btc1, theirs, again = (r for r, _ in got)  # type: ignore[misc]
    assert [created for _, created in got] == [True] * 5 + [False]  # type: ignore[misc]
    assert again == eth1 and usdt1.address == eth1.address == FIRST_EVM and usdt1.id != eth1.id
    assert (eth1.key_index, eth2.key_index, btc1.key_index, theirs.key_index) == (0, 1, 0, 0)
    assert theirs.address != eth1.address and theirs.integration_id == SHOP_B
    # Committed as one would have been: the same again from the store, the ids in arrival order.
    for (integration, currency, foreign_id), (issued, _) in zip(calls, got, strict=False):  # type: ignore[misc]
        assert await book.take(integration, currency, foreign_id) == (issued, False)
    assert sorted(x.id for x in (eth1, usdt1, eth2, btc1, theirs)) == [
        x.id for x in (eth1, usdt1, eth2, btc1, theirs)
    ]
    assert book.watched == [eth1, usdt1, eth2, btc1, theirs]  # type: ignore[attr-defined]


async def test_a_refused_take_in_a_batch_gives_its_index_back(book: AddressBook) -> None:
    a, b = shops(book)
    # Shop B watches the ETH address at index 0 of shop A's key: A's ETH take there is refused, and
    # the index stays free for the next customer (its USDT address there is free), as after a rollback.
    await book.register(b, "ETH", FIRST_EVM, "theirs")
    refused, usdt, eth = await one_batch(book, [(a, "ETH", "x"), (a, "USDT", "y"), (a, "ETH", "z")])
    assert isinstance(refused, RequestRefused) and (refused.status, refused.code) == (409, "address_taken")
    assert usdt[0].key_index == 0 and usdt[0].address == FIRST_EVM  # type: ignore[index]
    assert eth[0].key_index == 1  # type: ignore[index]
    assert {x.foreign_id for x in await book.list(a)} == {"y", "z"}


async def test_same_customer_same_address_after_reopening_the_store(book: AddressBook) -> None:
    a, _ = shops(book)
    first, _ = await book.take(a, "BTC", "c")
    await book.store.close()
    book.store = await Store.open(book.config.database)
    try:
        again, created = await book.take(a, "BTC", "c")
        assert (again, created) == (first, False)
    finally:
        await book.store.close()  # the fixture closes the store it opened, not this one


async def test_first_index_skips_what_another_system_issued(book: AddressBook) -> None:
    a, _ = shops(book)
    a = replace(a, public_keys=tuple(replace(k, first_index=1000) for k in a.public_keys))
    issued, _ = await book.take(a, "ETH", "x")
    assert issued.key_index == 1000 and issued.derivation_path == "…/0/1000"


async def test_integrations_never_see_each_other(book: AddressBook) -> None:
    a, b = shops(book)
    mine, _ = await book.take(a, "ETH", "customer-1")
    theirs, _ = await book.take(b, "ETH", "customer-1")
    assert mine.address != theirs.address
    with pytest.raises(RequestRefused) as e:
        await book.get(b, "ETH", mine.address)
    assert e.value.status == 404
    with pytest.raises(RequestRefused) as e:
        await book.delete(b, "ETH", mine.address)
    assert e.value.status == 404
    with pytest.raises(RequestRefused) as e:
        await book.register(b, "ETH", mine.address, "customer-9")
    assert (e.value.status, e.value.field) == (409, "address") and SHOP_A not in e.value.message
    assert [x.id for x in await book.list(b)] == [theirs.id]
    assert (await book.get(a, "ETH", mine.address)).active


async def test_register_delete_and_register_again(book: AddressBook) -> None:
    a, _ = shops(book)
    addr = "0x" + "ab" * 20
    issued, created = await book.register(a, "ETH", addr, "cust", from_height=5)
    assert created and issued.scan_from == 5 and issued.derivation_path is None
    same, created = await book.register(a, "ETH", addr.upper().replace("0X", "0x"), "cust")
    assert not created and same.id == issued.id
    with pytest.raises(RequestRefused) as e:
        await book.register(a, "ETH", addr, "someone-else")
    assert (e.value.status, e.value.field) == (409, "foreign_id")
    gone = await book.delete(a, "ETH", addr)
    assert not gone.active
    back, created = await book.register(a, "ETH", addr, "someone-else")
    assert not created and back.active and back.id == issued.id and back.foreign_id == "someone-else"


@pytest.mark.parametrize(
    ("call", "field", "status"),
    [
        (("take", "DOGE", "c"), "currency", 422),
        (("take", "ETH", ""), "foreign_id", 422),
        (("take", "ETH", "x" * 256), "foreign_id", 422),
        (("take", "ETH", "a\nb"), "foreign_id", 422),
        (("take", "ETH", 7), "foreign_id", 422),
        (("register", "BTC", "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq", "c"), "address", 422),
        (("register", "ETH", "0x1234", "c"), "address", 422),
        (("register", "ETH", "0x" + "ab" * 20, "c", -1), "from_height", 422),
        (("register", "ETH", "0x" + "ab" * 20, "c", True), "from_height", 422),
    ],
)
async def test_bad_input_names_the_field_and_writes_nothing(
    book: AddressBook, call: tuple[object, ...], field: str, status: int
) -> None:
    a, _ = shops(book)
    name, *args = call
    with pytest.raises(RequestRefused) as e:
        await getattr(book, str(name))(a, *args)
    assert (e.value.status, e.value.field) == (status, field)
    assert await book.list(a) == []


async def test_events_follow_every_queued_status_change_per_integration(book: AddressBook) -> None:
    a, b = shops(book)
    mine, _ = await book.take(a, "ETH", "c1")
    theirs, _ = await book.take(b, "ETH", "c1")
    now = time.time()
    async with book.store.transaction() as tx:
        ids = [
            await tx.insert_deposit(
                chain="ethereum",
                currency="ETH",
                address_id=address.id,
                txid=f"0x{n:064x}",
                tx_index=0,
                amount=10**18,
                sender=None,
                nonce=None,
                inputs=(),
                now=now,
            )
            for n, address in enumerate((mine, theirs))
        ]
    for status, confirmations in ((DepositStatus.NOT_CONFIRMED, 0), (DepositStatus.CONFIRMED, 12)):
        async with book.store.transaction() as tx:
            await tx._queue(
                [
                    QueuedCallback(
                        i, status, json.dumps({"id": i, "s": str(status)}).encode(), "t", confirmations, now
                    )
                    for i in ids
                ]
            )
    events = await book.events(a)
    assert [(e.deposit_id, e.status, e.confirmations) for e in events] == [
        (ids[0], DepositStatus.NOT_CONFIRMED, 0),
        (ids[0], DepositStatus.CONFIRMED, 12),
    ]
    assert await book.events(a, after=events[0].id) == events[1:]
    assert [e.deposit_id for e in await book.events(b)] == [ids[1], ids[1]]
    with pytest.raises(RequestRefused) as e:
        await book.deposit(b, ids[0])
    assert e.value.status == 404
    deposit, attempts = await book.deposit(a, ids[0])
    assert deposit.foreign_id == "c1" and attempts == []
    assert [d.id for d in await book.deposits(a, status="not_confirmed")] == [ids[0]]


async def test_import_adds_in_one_transaction_and_refuses_conflicts_whole(book: AddressBook) -> None:
    a, b = shops(book)
    evm = adapter_class("evm")
    spec = book.config.currency("ETH")[1].spec()

    def row(n: int, integration: IntegrationConfig, foreign_id: str) -> NewAddress:
        address = "0x" + f"{n:040x}"
        key = evm.watch_key(spec, address, "regtest")
        return NewAddress("ethereum", "ETH", key, address, foreign_id, integration.id, AddressSource.IMPORT)

    rows = [row(n, a, f"c{n}") for n in range(1, 1001)]
    assert await book.store.import_addresses(rows, time.time()) == (1000, 0)
    assert await book.store.import_addresses([*rows[:10], row(5000, a, "new")], time.time()) == (1, 10)
    with pytest.raises(ImportConflict) as e:
        await book.store.import_addresses([row(7000, b, "x"), row(3, b, "c3")], time.time())
    assert (e.value.index, e.value.status) == (1, 409)
    with pytest.raises(ValueError, match="one integration"):
        await book.store.import_addresses([row(7000, a, "x"), row(7001, b, "y")], time.time())
    with pytest.raises(ImportConflict) as e:
        await book.store.import_addresses([row(7000, a, "x"), row(7000, a, "x")], time.time())
    assert (e.value.index, e.value.status) == (1, 422)
    exported = [x async for x in book.store.export_addresses(a.id, page=100)]
    assert [x.foreign_id for x in exported] == [f"c{n}" for n in range(1, 1001)] + ["new"]
    assert {x.source for x in exported} == {AddressSource.IMPORT}
    assert [x async for x in book.store.export_addresses(b.id)] == []
