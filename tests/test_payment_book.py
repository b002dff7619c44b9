"""PaymentBook against a real SQLite file and a config loaded from YAML: creating (derivation, idempotency,
refusals that write nothing), scoping by integration, cancel with its Coinskro webhook, resend, URIs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from tests.test_address_book import CONFIG, EVM_ACCOUNT, SHOP_A, SHOP_B, USDT, account, integration
from watcher import coinskro, payment_life
from watcher.address_book import AddressBook
from watcher.config import Config, IntegrationConfig, load_config
from watcher.errors import RequestRefused
from watcher.model import AddressSource, IssuedAddress, OutboxState, PaymentStatus
from watcher.payment_book import MAX_META_BYTES, PaymentBook, record_changes, webhook_body
from watcher.store import Store

BTC_KEY = f"wpkh([73c5da0a/84h/1h/0h]{account('m/84h/1h/0h', 'tpub')}/0/*)"


@dataclass
class Setup:
    book: PaymentBook
    addresses: AddressBook
    a: IntegrationConfig
    b: IntegrationConfig
    watched: list[IssuedAddress]
    path: str

    async def count(self, table: str) -> int:
        rows = await self.addresses.store._all(f"SELECT count(*) FROM {table}")
        return int(rows[0][0])

    def coinskro(self, *events: str) -> IntegrationConfig:
        """Integration A speaking coinskro, subscribed to `events`."""
        callback = replace(self.a.callback, format="coinskro", events=events)
        return replace(self.a, callback=callback)


@pytest.fixture
async def s(tmp_path: Path, store_location: str) -> AsyncIterator[Setup]:
    (tmp_path / "watcher.yaml").write_text(CONFIG)
    config: Config = load_config(str(tmp_path / "watcher.yaml"))
    a = integration(config, SHOP_A, ethereum=EVM_ACCOUNT, bitcoin=BTC_KEY)
    b = integration(config, SHOP_B, ethereum=account("m/44h/60h/1h"))
    config = replace(config, integrations=(a, b), database=store_location)
    store = await Store.open(config.database)
    watched: list[IssuedAddress] = []
    addresses = AddressBook(store, config, lambda issued, key, maybe_paid: watched.append(issued))
    try:
        yield Setup(PaymentBook(addresses), addresses, a, b, watched, config.database)
    finally:
        await store.close()


async def create(s: Setup, who: IntegrationConfig | None = None, key: str = "order-1", **fields: Any) -> Any:
    body: dict[str, Any] = {"amount": "0.0015", "currency": "BTC", **fields}
    return await s.book.create(who or s.a, idempotency_key=key, **body)


async def test_create_derives_a_fresh_watched_address_with_the_standing_addresses_counter(s: Setup) -> None:
    standing, _ = await s.addresses.take(s.a, "BTC", "customer-1")  # index 0
    payment, created = await create(s, customer_email="a@shop.example", customer_reference="order-1",
                                    meta_data='{"cart": 7}')  # fmt: skip
    assert created and payment.status is PaymentStatus.PENDING and payment.received == 0
    assert payment.reference.startswith("PAY_") and len(payment.reference) == 36
    assert payment.amount == 150_000 and payment.currency == "BTC"
    assert payment.expires_at - payment.created_at == 1800.0  # the default: 30 minutes
    deriver = s.a.public_key("bitcoin").deriver  # type: ignore[union-attr]
    assert payment.address == deriver.address(1) != standing.address
    [watched] = [w for w in s.watched if w.id == payment.address_id]
    assert watched.source is AddressSource.PAYMENT and watched.key_index == 1
    assert watched.foreign_id == payment.reference
    later, _ = await s.addresses.take(s.a, "BTC", "customer-2")
    assert later.key_index == 2  # no index handed out twice
    # No customer's standing address: the lists and lookups leave it out, a take cannot reach it.
    assert [x.id for x in await s.addresses.list(s.a)] == [standing.id, later.id]
    with pytest.raises(RequestRefused) as refused:
        await s.addresses.take(s.a, "BTC", payment.reference)
    assert refused.value.status == 409
    assert await s.book.uri(payment) == f"bitcoin:{payment.address}?amount=0.0015"


async def test_the_same_key_and_request_give_the_same_payment(s: Setup) -> None:
    first, created = await create(s, expires_in_s=600)
    again, created_again = await create(s, amount="0.00150000", expires_in_s=600)  # the same amount
    assert created and not created_again and again == first
    assert (await s.count("payments"), await s.count("addresses"), await s.count("derivations")) == (1, 1, 1)
    other, created_other = await create(s, key="order-2", expires_in_s=600)
    assert created_other and other.reference != first.reference and other.address != first.address


async def test_the_same_key_with_another_request_is_a_conflict_writing_nothing(s: Setup) -> None:
    await create(s)
    with pytest.raises(RequestRefused) as refused:
        await create(s, amount="0.002")
    assert (refused.value.status, refused.value.code, refused.value.field) == (
        409, "idempotency_conflict", "Idempotency-Key",
    )  # fmt: skip
    assert (await s.count("payments"), await s.count("addresses"), await s.count("derivations")) == (1, 1, 1)
    # Keys are per integration: B's "order-1" is B's own payment.
    theirs, created = await create(s, s.b, currency="ETH", amount="1")
    assert created and theirs.integration_id == SHOP_B


@pytest.mark.parametrize(
    ("fields", "status", "field"),
    [
        ({"amount": "-1"}, 422, "amount"),
        ({"amount": "1e3"}, 422, "amount"),
        ({"amount": "0"}, 422, "amount"),
        ({"amount": "0.000000000"}, 422, "amount"),
        ({"amount": "0.000000001"}, 422, "amount"),  # 9 decimals: BTC has 8
        ({"amount": 0.5}, 422, "amount"),  # a JSON number: floats are refused
        ({"amount": "01.5"}, 422, "amount"),
        ({"amount": "1" * 21}, 422, "amount"),
        ({"amount": " 1"}, 422, "amount"),
        ({"currency": "DOGE"}, 422, "currency"),
        ({"expires_in_s": 0}, 422, "expires_in_s"),
        ({"expires_in_s": 7 * 24 * 3600 + 1}, 422, "expires_in_s"),
        ({"expires_in_s": True}, 422, "expires_in_s"),
        ({"expires_in_s": 1.5}, 422, "expires_in_s"),
        ({"meta_data": "x" * (MAX_META_BYTES + 1)}, 422, "meta_data"),
        ({"meta_data": "é" * (MAX_META_BYTES // 2 + 1)}, 422, "meta_data"),  # bytes, not characters
        ({"meta_data": "a\x00b"}, 422, "meta_data"),
        ({"meta_data": {"cart": 7}}, 422, "meta_data"),
        ({"customer_email": "not-an-address"}, 422, "customer_email"),
        ({"customer_email": "a b@shop.example"}, 422, "customer_email"),
        ({"customer_email": "a@" + "x" * 260 + ".example"}, 422, "customer_email"),
        ({"customer_reference": ""}, 422, "customer_reference"),
        ({"customer_reference": "line\nbreak"}, 422, "customer_reference"),
        ({"key": None}, 400, "Idempotency-Key"),
        ({"key": "has space"}, 400, "Idempotency-Key"),
        ({"key": "k" * 256}, 400, "Idempotency-Key"),
    ],
)
async def test_bad_input_is_refused_naming_the_field_and_writes_nothing(
    s: Setup, fields: dict[str, Any], status: int, field: str
) -> None:
    with pytest.raises(RequestRefused) as refused:
        await create(s, **fields)
    assert (refused.value.status, refused.value.field) == (status, field), refused.value.message
    tables = ("payments", "addresses", "derivations", "public_keys", "outbox")
    assert [await s.count(t) for t in tables] == [0, 0, 0, 0, 0]
    assert s.watched == []


async def test_meta_data_may_hold_what_json_text_holds(s: Setup) -> None:
    meta = '{\n\t"note": "ünïcödé \\" quoted",\r\n"n": 1}'
    payment, _ = await create(s, meta_data=meta, amount="21000000")
    assert payment.meta_data == meta and payment.amount == 21_000_000 * 10**8


async def test_a_chain_without_the_integrations_key_is_refused(s: Setup) -> None:
    with pytest.raises(RequestRefused) as refused:
        await create(s, s.b, currency="BTC")
    assert (refused.value.status, refused.value.code) == (422, "no_public_key")


async def test_evm_payment_uris_carry_the_chain_id(s: Setup) -> None:
    eth, _ = await create(s, key="e", currency="ETH", amount="0.25")
    usdt, _ = await create(s, key="u", currency="USDT", amount="12.5")
    assert eth.address != usdt.address  # one payment, one address, even on one EVM chain
    assert await s.book.uri(eth) == f"ethereum:{eth.address}@31337?value=250000000000000000"
    assert await s.book.uri(usdt) == (
        f"ethereum:{USDT.lower()}@31337/transfer?address={usdt.address}&uint256=12500000"
    )


async def test_another_integrations_payment_is_not_found(s: Setup) -> None:
    payment, _ = await create(s)
    for call in (s.book.get, s.book.cancel, s.book.resend):
        with pytest.raises(RequestRefused) as refused:
            await call(s.b, payment.reference)
        assert refused.value.status == 404
    assert await s.book.list(s.b) == []
    with pytest.raises(RequestRefused) as refused:
        await s.book.get(s.a, "PAY_not-a-reference")
    assert refused.value.status == 404


async def test_cancel_queues_the_coinskro_webhook_when_subscribed(s: Setup) -> None:
    shop = s.coinskro("payment_completed", "payment_canceled")
    payment, _ = await create(s, shop, customer_email="a@shop.example", meta_data="m")
    canceled = await s.book.cancel(shop, payment.reference)
    assert canceled.status is PaymentStatus.CANCELED and canceled.ended_at is not None
    [entry] = await s.addresses.store.outbox_entries(payment_id=payment.id)
    assert (entry.status, entry.state, entry.deposit_id) == (
        PaymentStatus.CANCELED,
        OutboxState.PENDING,
        None,
    )
    expected = coinskro.build_body(
        event="payment_canceled", at=canceled.ended_at, payment_reference=payment.reference,
        integration_id=SHOP_A, amount=150_000, decimals=8, currency="BTC", status=PaymentStatus.CANCELED,
        customer_email="a@shop.example", customer_reference=None, meta_data="m",
    )  # fmt: skip
    assert entry.body == expected == webhook_body(canceled, SHOP_A, 8, canceled.ended_at)
    assert b'"amount":0.00150000' in entry.body
    with pytest.raises(RequestRefused) as refused:  # final is final
        await s.book.cancel(shop, payment.reference)
    assert refused.value.status == 409
    found, deposits, attempts = await s.book.get(shop, payment.reference)
    assert found == canceled and deposits == [] and attempts == []
    # resend: the same bytes queued again
    again = await s.book.resend(shop, payment.reference)
    assert again.body == entry.body and again.id != entry.id and again.payment_id == payment.id


@pytest.mark.parametrize("events", [("payment_completed",), None])
async def test_cancel_queues_nothing_when_not_subscribed_or_not_coinskro(
    s: Setup, events: tuple[str, ...] | None
) -> None:
    shop = s.a if events is None else s.coinskro(*events)  # None: the coinspaid format
    payment, _ = await create(s, shop)
    assert (await s.book.cancel(shop, payment.reference)).status is PaymentStatus.CANCELED
    assert await s.addresses.store.outbox_entries() == []
    with pytest.raises(RequestRefused) as refused:
        await s.book.resend(shop, payment.reference)
    assert (refused.value.status, refused.value.code) == (409, "nothing_to_resend")


async def test_list_filters_and_pages(s: Setup) -> None:
    made = [(await create(s, key=f"k{n}", customer_reference=f"order-{n % 2}"))[0] for n in range(5)]
    await s.book.cancel(s.a, made[1].reference)
    assert [p.id for p in await s.book.list(s.a)] == [p.id for p in made]
    assert [p.id for p in await s.book.list(s.a, status="canceled")] == [made[1].id]
    assert [p.id for p in await s.book.list(s.a, customer_reference="order-0")] == [
        made[0].id,
        made[2].id,
        made[4].id,
    ]
    page = await s.book.list(s.a, after=made[1].id, limit=2)
    assert [p.id for p in page] == [made[2].id, made[3].id]
    assert await s.book.list(s.a, currency="ETH") == []
    with pytest.raises(RequestRefused) as refused:
        await s.book.list(s.a, status="confirmed")
    assert refused.value.field == "status"


async def test_record_changes_writes_the_end_state_and_each_webhook_in_order(s: Setup) -> None:
    """What the follower's wiring does with payment_life's decision: a transaction first seen confirmed
    gives linked then completed, both queued (subscribed to both), in that order, in one transaction."""
    shop = s.coinskro("payment_linked", "payment_completed")
    payment, _ = await create(s, shop)
    store = s.addresses.store
    async with store.transaction() as tx:
        address = await tx.address_by_id(payment.address_id)
        await tx.insert_deposit(
            chain=address.chain, currency="BTC", address_id=address.id, txid="ab" * 32, tx_index=0,
            amount=200_000, sender=None, nonce=None, inputs=(), now=payment.created_at + 1,
        )  # fmt: skip
        await tx.execute("UPDATE deposits SET status = 'confirmed', confirmations = 1")
        [current] = await tx.payments_for_addresses([address.id])
        paid = payment_life.by_transaction(await tx.payment_deposits(current))
        changes = payment_life.advance(
            current, paid, payment.created_at + 2, payment_life.ChainWatch(True, 0.0)
        )
        assert [c.status for c in changes] == [PaymentStatus.LINKED, PaymentStatus.COMPLETED]
        await record_changes(tx, shop, changes, 8)
    done = await store.payment(SHOP_A, payment.reference)
    assert done is not None and (done.status, done.received) == (PaymentStatus.COMPLETED, 200_000)
    entries = await store.outbox_entries(payment_id=payment.id)
    assert [e.status for e in entries] == [PaymentStatus.LINKED, PaymentStatus.COMPLETED]
    assert [e.body for e in entries] == [webhook_body(c.payment, SHOP_A, 8, c.at) for c in changes]
    [due] = await store.due_callbacks(payment.created_at + 3, 10)  # completed waits for linked
    assert due.id == entries[0].id
